package attest

import (
	"fmt"

	"github.com/fxamacker/cbor/v2"
)

// Limits that every decoder in this package applies before it allocates.
const (
	// MaxEvidenceSize bounds an encoded evidence map. A real TCG event log is
	// 15–60 KiB, a CEL a few KiB; 1 MiB leaves room for large firmware logs
	// and TEE reports without letting a caller make the verifier buffer more.
	MaxEvidenceSize = 1 << 20
	// MaxCredentialSize bounds an encoded credential.
	MaxCredentialSize = 16 << 10
	// MaxPoPSize bounds an encoded proof of possession.
	MaxPoPSize = 2 << 10
	// MaxKeySetSize bounds an encoded COSE_KeySet.
	MaxKeySetSize = 64 << 10
)

var (
	// encMode is RFC 8949 §4.2.1 core deterministic encoding: the same value
	// always gives the same bytes, which the binding and audit digests need.
	encMode cbor.EncMode
	// decMode refuses what a strict peer never sends: duplicate map keys,
	// indefinite lengths, unknown fields in our own maps, deep nesting and
	// large arrays or maps.
	decMode cbor.DecMode
	// lenientDecMode is decMode without the unknown-field check, for maps
	// that may grow claims we do not know yet (a CWT claims set).
	lenientDecMode cbor.DecMode
)

func init() {
	var err error
	if encMode, err = cbor.CoreDetEncOptions().EncMode(); err != nil {
		panic(fmt.Sprintf("attest: cbor encoding options: %v", err))
	}
	strict := cbor.DecOptions{
		DupMapKey:         cbor.DupMapKeyEnforcedAPF,
		IndefLength:       cbor.IndefLengthForbidden,
		MaxNestedLevels:   16,
		MaxArrayElements:  4096,
		MaxMapPairs:       512,
		ExtraReturnErrors: cbor.ExtraDecErrorUnknownField,
		UTF8:              cbor.UTF8RejectInvalid,
	}
	if decMode, err = strict.DecMode(); err != nil {
		panic(fmt.Sprintf("attest: cbor decoding options: %v", err))
	}
	lenient := strict
	lenient.ExtraReturnErrors = cbor.ExtraDecErrorNone
	if lenientDecMode, err = lenient.DecMode(); err != nil {
		panic(fmt.Sprintf("attest: cbor decoding options: %v", err))
	}
}

// Marshal encodes v with the core deterministic encoding used for every
// Vouch wire format.
func Marshal(v any) ([]byte, error) { return encMode.Marshal(v) }

// Unmarshal decodes data into v with the strict, bounded decoder: duplicate
// keys, indefinite lengths, unknown struct fields and trailing bytes are
// errors.
func Unmarshal(data []byte, v any) error { return decMode.Unmarshal(data, v) }
