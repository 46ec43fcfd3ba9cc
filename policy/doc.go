// Package policy decides whether verified facts are good enough: it holds the
// reference values (the YAML sets in firmware-refs: expected boot state per
// platform profile, allowed workload images, deny lists), derives them from a
// known-good machine's event log, and appraises an attestation's facts against
// them into EAR results (status, AR4SI trust vector, a reason for every
// non-affirming claim).
//
// Nothing here does cryptography. The verifier establishes [Facts] from
// signed evidence first (the "verify" half); this package is the "validate"
// half, in the sense of go-sev-guest's verify/validate split.
package policy
