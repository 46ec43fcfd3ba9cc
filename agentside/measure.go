package agentside

import (
	"bytes"
	"crypto"
	"errors"
	"fmt"
	"io"
	"slices"
	"strings"
	"unicode"
	"unicode/utf8"

	gecel "github.com/google/go-eventlog/cel"
	"github.com/google/go-tpm-tools/cel"
	"github.com/google/go-tpm/legacy/tpm2"
	"github.com/google/go-tpm/tpmutil"
)

// Limits of a [Workload]. They keep the canonical event log, which travels in
// every evidence and lands in the audit log, small.
const (
	MaxImageRefLen = 512
	MaxArgs        = 256
	MaxArgLen      = 4096
	MaxEnv         = 256
	MaxEnvLen      = 4096 // name=value
)

// imageDigestPrefix is the only digest algorithm accepted for images.
const imageDigestPrefix = "sha256:"

// Workload describes what the agent runs: the OCI image it was started from
// and, where they matter to the relying parties, its arguments and
// environment. Everything here is measured, so keep secrets out of Env.
type Workload struct {
	// ImageRef is the image reference, e.g. "ghcr.io/acme/agent:1.4".
	ImageRef string
	// ImageDigest is the image manifest digest, "sha256:" and 64 lower-case
	// hex digits.
	ImageDigest string
	// Args are the command-line arguments, in order.
	Args []string
	// Env holds environment variables; names must match [A-Za-z_][A-Za-z0-9_]*.
	// They are measured in name order.
	Env map[string]string
}

// Validate checks w against the limits and formats above.
func (w *Workload) Validate() error {
	if w.ImageRef == "" {
		return errors.New("workload: the image reference is empty")
	}
	if len(w.ImageRef) > MaxImageRefLen {
		return fmt.Errorf("workload: the image reference is %d bytes; at most %d are allowed", len(w.ImageRef), MaxImageRefLen)
	}
	if !utf8.ValidString(w.ImageRef) || strings.ContainsFunc(w.ImageRef, func(r rune) bool { return unicode.IsSpace(r) || unicode.IsControl(r) }) {
		return fmt.Errorf("workload: the image reference %q contains spaces, control characters or invalid UTF-8", w.ImageRef)
	}
	if err := checkImageDigest(w.ImageDigest); err != nil {
		return err
	}
	if len(w.Args) > MaxArgs {
		return fmt.Errorf("workload: %d arguments; at most %d are allowed", len(w.Args), MaxArgs)
	}
	for i, a := range w.Args {
		if len(a) > MaxArgLen {
			return fmt.Errorf("workload: argument %d is %d bytes; at most %d are allowed", i, len(a), MaxArgLen)
		}
		if !utf8.ValidString(a) {
			return fmt.Errorf("workload: argument %d is not valid UTF-8", i)
		}
	}
	if len(w.Env) > MaxEnv {
		return fmt.Errorf("workload: %d environment variables; at most %d are allowed", len(w.Env), MaxEnv)
	}
	for name, value := range w.Env {
		kv, err := cel.FormatEnvVar(name, value)
		if err != nil {
			return fmt.Errorf("workload: environment variable %q: %w", name, err)
		}
		if len(kv) > MaxEnvLen {
			return fmt.Errorf("workload: environment variable %s is %d bytes; at most %d are allowed", name, len(kv), MaxEnvLen)
		}
	}
	return nil
}

func checkImageDigest(d string) error {
	hexPart, ok := strings.CutPrefix(d, imageDigestPrefix)
	if !ok {
		return fmt.Errorf("workload: image digest %q must start with %q", d, imageDigestPrefix)
	}
	if len(hexPart) != 64 {
		return fmt.Errorf("workload: image digest %q must have 64 hex digits after %q, not %d", d, imageDigestPrefix, len(hexPart))
	}
	for _, c := range hexPart {
		if !('0' <= c && c <= '9' || 'a' <= c && c <= 'f') {
			return fmt.Errorf("workload: image digest %q must be lower-case hex after %q", d, imageDigestPrefix)
		}
	}
	return nil
}

// events returns the COS TLV events that measure w, ending with the launch
// separator.
func (w *Workload) events() ([]cel.CosTlv, error) {
	evs := []cel.CosTlv{
		{EventType: cel.ImageRefType, EventContent: []byte(w.ImageRef)},
		{EventType: cel.ImageDigestType, EventContent: []byte(w.ImageDigest)},
	}
	for _, a := range w.Args {
		evs = append(evs, cel.CosTlv{EventType: cel.ArgType, EventContent: []byte(a)})
	}
	names := make([]string, 0, len(w.Env))
	for n := range w.Env {
		names = append(names, n)
	}
	slices.Sort(names)
	for _, n := range names {
		kv, err := cel.FormatEnvVar(n, w.Env[n])
		if err != nil {
			return nil, err
		}
		evs = append(evs, cel.CosTlv{EventType: cel.EnvVarType, EventContent: []byte(kv)})
	}
	// An empty separator says the launch succeeded; nothing may follow it.
	return append(evs, cel.CosTlv{EventType: cel.LaunchSeparatorType}), nil
}

// MeasureWorkload records w in the canonical event log as COS TLV events on
// PCR 13 (image reference, image digest, each argument, each environment
// variable, then the launch separator), extending PCR 13 in every allocated
// bank. The separator ends measurement: measuring twice is an error. The
// verifier replays the log with the Confidential Space extractor
// (confidential-space/server/extract.ParseCOSCEL).
func (t *TPM) MeasureWorkload(w Workload) error {
	if err := w.Validate(); err != nil {
		return err
	}
	evs, err := w.events()
	if err != nil {
		return fmt.Errorf("workload: %w", err)
	}
	banks := t.Banks()
	return t.do(func(rw io.ReadWriter) error {
		if t.cel != nil {
			return errors.New("workload: already measured; the launch separator ends measurement, so open a fresh TPM for another workload")
		}
		if v, err := tpm2.ReadPCR(rw, cel.CosEventPCR, tpm2.AlgSHA256); err != nil {
			return fmt.Errorf("workload: reading PCR %d: %w", cel.CosEventPCR, err)
		} else if !bytes.Equal(v, make([]byte, len(v))) {
			return fmt.Errorf("workload: PCR %d was already extended by someone else; its canonical event log would not replay", cel.CosEventPCR)
		}
		extend := func(h crypto.Hash, pcr int, digest []byte) error {
			alg, err := tpm2.HashToAlgorithm(h)
			if err != nil {
				return err
			}
			return tpm2.PCRExtend(rw, tpmutil.Handle(pcr), alg, digest, "")
		}
		log := gecel.NewPCR()
		// Set before extending: a failure half way leaves PCR 13 and the log
		// out of step, and no further measurement can repair that.
		t.cel = log
		for _, ev := range evs {
			if err := log.AppendEvent(ev, banks, cel.CosEventPCR, extend); err != nil {
				return fmt.Errorf("workload: measuring %v event: %w", ev.EventType, err)
			}
		}
		var buf bytes.Buffer
		if err := log.EncodeCEL(&buf); err != nil {
			return fmt.Errorf("workload: encoding the canonical event log: %w", err)
		}
		t.celBytes = buf.Bytes()
		t.log.Debug("workload measured", "image_ref", w.ImageRef, "image_digest", w.ImageDigest, "records", len(evs))
		return nil
	})
}
