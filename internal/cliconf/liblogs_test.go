package cliconf

import (
	"bytes"
	"log/slog"
	"strings"
	"sync"
	"testing"

	"k8s.io/klog/v2"
)

// Library logs go to the logger given last, errors only, and
// re-routing while the library logs is safe (go test -race).
func TestRouteLibraryLogs(t *testing.T) {
	var first, second bytes.Buffer
	RouteLibraryLogs(slog.New(slog.NewTextHandler(&first, nil)))
	klog.Error("to the first")
	klog.Info("too quiet")
	klog.Warning("too quiet as well: klog logs warnings at slog's info level")

	var wg sync.WaitGroup
	stop := make(chan struct{})
	wg.Add(1)
	go func() {
		defer wg.Done()
		for {
			select {
			case <-stop:
				return
			default:
				klog.V(0).Info("busy library")
			}
		}
	}()
	for range 100 {
		RouteLibraryLogs(slog.New(slog.DiscardHandler))
	}
	close(stop)
	wg.Wait()

	RouteLibraryLogs(slog.New(slog.NewTextHandler(&second, nil)))
	klog.ErrorS(nil, "to the second", "k", "v")

	if got := first.String(); !strings.Contains(got, "to the first") || strings.Contains(got, "too quiet") || strings.Contains(got, "to the second") {
		t.Errorf("first logger got %q", got)
	}
	if got := second.String(); !strings.Contains(got, "to the second") || !strings.Contains(got, "k=v") || strings.Contains(got, "to the first") {
		t.Errorf("second logger got %q", got)
	}
}
