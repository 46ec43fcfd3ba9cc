package cliconf

import (
	"context"
	"log/slog"
	"sync"
	"sync/atomic"

	"k8s.io/klog/v2"
)

// libraryLogs is where klog's output goes. klog is process-global, and
// setting its logger is not safe while another goroutine logs (a test binary
// runs several commands, and servers of earlier tests may still be logging),
// so klog gets one forwarding logger, once, and later calls of
// RouteLibraryLogs swap its destination atomically.
var (
	libraryLogs    atomic.Pointer[slog.Handler]
	installLibLogs sync.Once
)

// RouteLibraryLogs sends the logging of libraries that log on their own —
// klog, used by the transparency-log library tessera — to logger, at warning
// level and above. klog hands its warnings to slog at info level, like its
// routine chatter, so in effect only its errors come through. Commands call
// it at start, and test binaries in their
// TestMain; it is safe to call again, from any goroutine.
func RouteLibraryLogs(logger *slog.Logger) {
	var h slog.Handler = minLevel{logger.Handler(), slog.LevelWarn}
	libraryLogs.Store(&h)
	installLibLogs.Do(func() { klog.SetSlogLogger(slog.New(forwardHandler{})) })
}

// forwardHandler hands each record to the handler RouteLibraryLogs stored
// last. Attributes and groups added by the library are kept in order and
// applied to that handler at the time of the record.
type forwardHandler struct {
	with []func(slog.Handler) slog.Handler
}

func (f forwardHandler) target() slog.Handler {
	h := *libraryLogs.Load()
	for _, w := range f.with {
		h = w(h)
	}
	return h
}

func (f forwardHandler) Enabled(ctx context.Context, l slog.Level) bool {
	return (*libraryLogs.Load()).Enabled(ctx, l)
}

func (f forwardHandler) Handle(ctx context.Context, r slog.Record) error {
	return f.target().Handle(ctx, r)
}

func (f forwardHandler) WithAttrs(as []slog.Attr) slog.Handler {
	return f.and(func(h slog.Handler) slog.Handler { return h.WithAttrs(as) })
}

func (f forwardHandler) WithGroup(name string) slog.Handler {
	return f.and(func(h slog.Handler) slog.Handler { return h.WithGroup(name) })
}

func (f forwardHandler) and(w func(slog.Handler) slog.Handler) forwardHandler {
	return forwardHandler{with: append(f.with[:len(f.with):len(f.with)], w)}
}

type minLevel struct {
	slog.Handler
	min slog.Level
}

func (m minLevel) Enabled(ctx context.Context, l slog.Level) bool {
	return l >= m.min && m.Handler.Enabled(ctx, l)
}

func (m minLevel) WithAttrs(as []slog.Attr) slog.Handler {
	return minLevel{m.Handler.WithAttrs(as), m.min}
}

func (m minLevel) WithGroup(name string) slog.Handler {
	return minLevel{m.Handler.WithGroup(name), m.min}
}
