package main

import (
	"log/slog"
	"os"
	"testing"

	"github.com/vouch-dev/vouch/internal/cliconf"
)

// TestMain keeps the transparency-log library's informational logging
// (klog, from the verifiers the sidecar tests start) out of the test output.
func TestMain(m *testing.M) {
	cliconf.RouteLibraryLogs(slog.New(slog.NewTextHandler(os.Stderr, nil)))
	os.Exit(m.Run())
}
