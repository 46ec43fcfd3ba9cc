// Package version reports the build of the Vouch binaries: the module
// version and VCS revision Go records, or what -ldflags set.
package version

import "runtime/debug"

// Version may be set at link time: -ldflags "-X github.com/vouch-dev/vouch/internal/version.Version=v1.2.3".
var Version = ""

// String returns the version, falling back to the build info Go embeds.
func String() string {
	if Version != "" {
		return Version
	}
	bi, ok := debug.ReadBuildInfo()
	if !ok {
		return "dev"
	}
	v := bi.Main.Version
	for _, s := range bi.Settings {
		if s.Key == "vcs.revision" && len(s.Value) >= 12 {
			v += "+" + s.Value[:12]
		}
	}
	if v == "" || v == "(devel)" {
		return "dev"
	}
	return v
}
