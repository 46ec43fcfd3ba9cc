package policy

import (
	"crypto/sha256"
	"encoding/hex"
	"fmt"

	"github.com/fxamacker/cbor/v2"

	"github.com/vouch-dev/vouch/attest"
)

// MaxCanonicalRefsSize bounds an encoded reference set read back by
// ParseCanonical.
const MaxCanonicalRefsSize = 64 << 20

// canonicalDec decodes archived sets: strict like attest.Unmarshal, with
// array limits large enough for maxImages.
var canonicalDec = func() cbor.DecMode {
	m, err := cbor.DecOptions{
		DupMapKey:         cbor.DupMapKeyEnforcedAPF,
		IndefLength:       cbor.IndefLengthForbidden,
		MaxNestedLevels:   16,
		MaxArrayElements:  maxImages + 1,
		MaxMapPairs:       64,
		ExtraReturnErrors: cbor.ExtraDecErrorUnknownField,
		UTF8:              cbor.UTF8RejectInvalid,
	}.DecMode()
	if err != nil {
		panic(fmt.Sprintf("policy: cbor options: %v", err))
	}
	return m
}()

// Canonical returns the deterministic CBOR encoding whose SHA-256 is the
// set's ID. The audit archive stores reference sets in this form, so that an
// auditor can check an archived set against the id a record names.
func (r *RefSet) Canonical() ([]byte, error) { return attest.Marshal(r) }

// ParseCanonical decodes a set written by Canonical, validates it as
// LoadRefs would, and checks that it hashes to its own ID (a set that
// validation would change is refused).
func ParseCanonical(b []byte) (*RefSet, error) {
	if len(b) > MaxCanonicalRefsSize {
		return nil, fmt.Errorf("reference set: %d bytes, more than %d", len(b), MaxCanonicalRefsSize)
	}
	var set RefSet
	if err := canonicalDec.Unmarshal(b, &set); err != nil {
		return nil, fmt.Errorf("reference set: %w", err)
	}
	for i := range set.Profiles {
		if err := set.Profiles[i].validate(); err != nil {
			return nil, fmt.Errorf("reference set: profile %d (%s): %w", i, set.Profiles[i].Name, err)
		}
	}
	for i, im := range set.Images {
		if err := validImageDigest(im.Digest); err != nil {
			return nil, fmt.Errorf("reference set: image %d: %w", i, err)
		}
	}
	for i, d := range set.Deny.ImageDigests {
		if err := validImageDigest(d); err != nil {
			return nil, fmt.Errorf("reference set: deny image %d: %w", i, err)
		}
	}
	if err := set.finish(); err != nil {
		return nil, err
	}
	sum := sha256.Sum256(b)
	if want := "sha256:" + hex.EncodeToString(sum[:]); set.ID() != want {
		return nil, fmt.Errorf("reference set: not in canonical form (hashes to %s, its content to %s)", want, set.ID())
	}
	return &set, nil
}
