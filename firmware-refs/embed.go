// Package firmwarerefs embeds the reference values that ship with Vouch (the
// schema is in README.md). They are data, not code; this file only makes
// them part of the binaries, so that `vouchd` and `vouch demo` work with no
// setup.
//
// The default set (the YAML files at the top of this directory) is
// deliberately small: the demo's platform (RHEL 8, UEFI, secure boot on), the
// demo image and the deny lists. The profiles derived from the other real
// recorded logs, some of them of machines with secure boot off, are in
// platforms/: they are examples and test fixtures, trusted only when an
// operator says so (`vouchd --refs` with a directory holding them).
package firmwarerefs

import (
	"embed"

	"github.com/vouch-dev/vouch/policy"
)

// FS holds the reference-value files: the default set at its top, the
// example platform profiles under platforms/.
//
//go:embed *.yaml platforms/*.yaml
var FS embed.FS

// Load parses and validates the default reference set.
func Load() (*policy.RefSet, error) { return policy.LoadRefs(FS, ".") }

// LoadWithPlatforms parses the default set together with every example
// platform profile: the set the platform tests attest against.
func LoadWithPlatforms() (*policy.RefSet, error) { return policy.LoadRefs(FS, ".", "platforms") }
