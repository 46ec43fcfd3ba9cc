// Package testenv lets tests depend on external tools (swtpm, tpm2-tools)
// without making them optional in CI: on a developer machine a missing tool
// skips the test with a message saying what to install; when VOUCH_CI=1
// (set by .ci/run) it fails the test instead.
package testenv

import (
	"os"
	"os/exec"
	"testing"
)

// CIVar is the environment variable that turns skips into failures.
const CIVar = "VOUCH_CI"

// InCI reports whether tests run in CI, where nothing may be skipped.
func InCI() bool { return os.Getenv(CIVar) == "1" }

// LookTool returns the path of a command, skipping (or, in CI, failing) the
// test when it is not installed. pkg names the Debian package that has it.
func LookTool(t testing.TB, name, pkg string) string {
	t.Helper()
	path, err := exec.LookPath(name)
	if err == nil {
		return path
	}
	SkipOrFail(t, "%s is not installed (Debian package %s: apt-get install %s)", name, pkg, pkg)
	return ""
}

// SkipOrFail skips the test with the message, or fails it in CI.
func SkipOrFail(t testing.TB, format string, args ...any) {
	t.Helper()
	if InCI() {
		t.Fatalf("required in CI ("+CIVar+"=1): "+format, args...)
	}
	t.Skipf(format, args...)
}
