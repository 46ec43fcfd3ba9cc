package cliconf

import (
	"context"
	"log/slog"

	"k8s.io/klog/v2"
)

// RouteLibraryLogs sends the logging of libraries that log on their own —
// klog, used by the transparency-log library tessera — to logger, warnings
// and worse only. klog is process-global, so commands call this once at
// start, and test binaries in their TestMain (with a discarding logger).
func RouteLibraryLogs(logger *slog.Logger) {
	klog.SetSlogLogger(slog.New(minLevel{logger.Handler(), slog.LevelWarn}))
}

type minLevel struct {
	slog.Handler
	min slog.Level
}

func (m minLevel) Enabled(ctx context.Context, l slog.Level) bool {
	return l >= m.min && m.Handler.Enabled(ctx, l)
}
