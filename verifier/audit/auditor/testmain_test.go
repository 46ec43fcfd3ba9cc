package auditor_test

import (
	"log/slog"
	"os"
	"testing"

	"github.com/vouch-dev/vouch/internal/cliconf"
)

// TestMain keeps the transparency-log library's informational logging
// (klog) out of the test output; its warnings still show.
func TestMain(m *testing.M) {
	cliconf.RouteLibraryLogs(slog.New(slog.NewTextHandler(os.Stderr, nil)))
	os.Exit(m.Run())
}
