// Package firmwarerefs embeds the reference values that ship with Vouch: the
// YAML files in this directory (schema in README.md). They are data, not
// code; this file only makes them part of the binaries so that `vouchd` and
// `vouch demo` work with no setup. Operators point `vouchd --refs DIR` at
// their own set.
package firmwarerefs

import (
	"embed"

	"github.com/vouch-dev/vouch/policy"
)

// FS holds the reference-value files.
//
//go:embed *.yaml
var FS embed.FS

// Load parses and validates the embedded reference set.
func Load() (*policy.RefSet, error) { return policy.LoadRefs(FS, ".") }
