package monitor

import (
	"bytes"
	"context"
	"crypto/hmac"
	"crypto/sha256"
	"encoding/hex"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"math/rand/v2"
	"net/http"
	"strconv"
	"strings"
	"time"

	"github.com/vouch-dev/vouch/attest"
	"github.com/vouch-dev/vouch/verifier/store"
)

// SignatureHeader carries the webhook's HMAC signature:
//
//	Vouch-Signature: t=<unix seconds>,v1=<hex HMAC-SHA256(secret, "<t>." + body)>
const SignatureHeader = "Vouch-Signature"

// Defaults of WebhookOptions.
const (
	DefaultWebhookTimeout    = 5 * time.Second
	DefaultWebhookMinBackoff = 500 * time.Millisecond
	DefaultWebhookMaxBackoff = 5 * time.Minute
	DefaultWebhookMaxPending = 10000
)

// WebhookOptions configure alert delivery to a webhook.
type WebhookOptions struct {
	// URL receives a POST of each alert (application/json). https unless
	// loopback.
	URL string
	// Secret keys the HMAC-SHA256 signature (at least 16 bytes).
	Secret []byte
	// Client sends the requests; default one with Timeout.
	Client *http.Client
	// Timeout bounds one delivery attempt. Default DefaultWebhookTimeout.
	Timeout time.Duration
	// MinBackoff and MaxBackoff bound the exponential backoff (with jitter)
	// between attempts. Defaults 500 ms and 5 min.
	MinBackoff, MaxBackoff time.Duration
	// MaxPending bounds the undelivered alerts kept in the outbox; alerts
	// beyond it are dropped and counted. Default 10000.
	MaxPending int
}

type webhook struct {
	opts    WebhookOptions
	client  *http.Client
	store   *store.Store
	metrics *metrics
	log     *slog.Logger
	now     func() time.Time
	wake    chan struct{}
}

func newWebhook(opts WebhookOptions, st *store.Store, m *metrics, log *slog.Logger, now func() time.Time) (*webhook, error) {
	if _, err := attest.ServiceURL("webhook", opts.URL); err != nil {
		return nil, err
	}
	if len(opts.Secret) < 16 {
		return nil, errors.New("webhook: the signing secret must be at least 16 bytes")
	}
	if opts.Timeout <= 0 {
		opts.Timeout = DefaultWebhookTimeout
	}
	if opts.MinBackoff <= 0 {
		opts.MinBackoff = DefaultWebhookMinBackoff
	}
	if opts.MaxBackoff < opts.MinBackoff {
		opts.MaxBackoff = max(DefaultWebhookMaxBackoff, opts.MinBackoff)
	}
	if opts.MaxPending <= 0 {
		opts.MaxPending = DefaultWebhookMaxPending
	}
	client := opts.Client
	if client == nil {
		client = &http.Client{Timeout: opts.Timeout, CheckRedirect: func(*http.Request, []*http.Request) error { return http.ErrUseLastResponse }}
	}
	return &webhook{opts: opts, client: client, store: st, metrics: m, log: log, now: now, wake: make(chan struct{}, 1)}, nil
}

// enqueue persists the alert in the outbox (it survives a restart) and wakes
// the sender.
func (w *webhook) enqueue(ctx context.Context, alertID string, body []byte) {
	if _, err := w.store.EnqueueWebhook(ctx, alertID, body, w.now(), w.opts.MaxPending); err != nil {
		w.metrics.webhook.WithLabelValues("dropped").Inc()
		w.log.Error("monitor: alert not queued for the webhook", "alert", alertID, "err", err)
		return
	}
	select {
	case w.wake <- struct{}{}:
	default:
	}
}

// run delivers due alerts until ctx is done.
func (w *webhook) run(ctx context.Context) {
	lastPrune := time.Time{}
	for {
		now := w.now()
		due, err := w.store.DueWebhooks(ctx, now, 16)
		if err != nil && ctx.Err() == nil {
			w.log.Warn("monitor: reading the webhook outbox", "err", err)
		}
		for _, e := range due {
			w.deliver(ctx, e)
		}
		if now.Sub(lastPrune) > time.Hour {
			lastPrune = now
			w.store.PruneWebhooks(ctx, now.Add(-7*24*time.Hour))
		}
		next, pending, err := w.store.NextWebhookDue(ctx)
		w.metrics.pending.Set(float64(pending))
		wait := time.Minute
		if err == nil && pending > 0 {
			wait = max(next.Sub(w.now()), 5*time.Millisecond)
		}
		if len(due) == 16 {
			wait = 0
		}
		t := time.NewTimer(wait)
		select {
		case <-ctx.Done():
			t.Stop()
			return
		case <-w.wake:
		case <-t.C:
		}
		t.Stop()
	}
}

// deliver makes one attempt and records its outcome.
func (w *webhook) deliver(ctx context.Context, e store.OutboxEntry) {
	err := w.post(ctx, e)
	now := w.now()
	if err == nil {
		w.metrics.webhook.WithLabelValues("delivered").Inc()
		if err := w.store.WebhookDelivered(ctx, e.ID, now); err != nil {
			w.log.Warn("monitor: recording webhook delivery", "err", err)
		}
		return
	}
	w.metrics.webhook.WithLabelValues("failed").Inc()
	d := backoff(e.Attempts, w.opts.MinBackoff, w.opts.MaxBackoff)
	w.log.Warn("monitor: webhook delivery failed; will retry", "alert", e.AlertID, "attempt", e.Attempts+1, "retry_in", d.Round(time.Millisecond), "err", err)
	if err := w.store.WebhookFailed(ctx, e.ID, now.Add(d), err.Error()); err != nil {
		w.log.Warn("monitor: recording webhook failure", "err", err)
	}
}

// backoff is the wait after the attempt-th failure: exponential from min,
// capped at max, with equal jitter (half fixed, half random).
func backoff(attempts int, min, max time.Duration) time.Duration {
	d := min
	for i := 0; i < attempts && d < max; i++ {
		d *= 2
	}
	if d > max {
		d = max
	}
	return d/2 + rand.N(d/2+1)
}

func (w *webhook) post(ctx context.Context, e store.OutboxEntry) error {
	ctx, cancel := context.WithTimeout(ctx, w.opts.Timeout)
	defer cancel()
	req, err := http.NewRequestWithContext(ctx, http.MethodPost, w.opts.URL, bytes.NewReader(e.Body))
	if err != nil {
		return err
	}
	req.Header.Set("Content-Type", "application/json")
	req.Header.Set("User-Agent", "vouchd-webhook/1")
	req.Header.Set("Vouch-Alert-Id", e.AlertID)
	req.Header.Set("Vouch-Delivery", strconv.FormatInt(e.ID, 10))
	req.Header.Set("Vouch-Attempt", strconv.Itoa(e.Attempts+1))
	req.Header.Set(SignatureHeader, SignWebhook(w.opts.Secret, w.now(), e.Body))
	resp, err := w.client.Do(req)
	if err != nil {
		return err
	}
	defer resp.Body.Close()
	io.Copy(io.Discard, io.LimitReader(resp.Body, 1<<16))
	if resp.StatusCode/100 != 2 {
		return fmt.Errorf("webhook answered %s", resp.Status)
	}
	return nil
}

// SignWebhook returns the Vouch-Signature header value for body at time t.
func SignWebhook(secret []byte, t time.Time, body []byte) string {
	ts := strconv.FormatInt(t.Unix(), 10)
	return "t=" + ts + ",v1=" + hex.EncodeToString(webhookMAC(secret, ts, body))
}

func webhookMAC(secret []byte, ts string, body []byte) []byte {
	mac := hmac.New(sha256.New, secret)
	mac.Write([]byte(ts))
	mac.Write([]byte("."))
	mac.Write(body)
	return mac.Sum(nil)
}

// VerifyWebhook checks a Vouch-Signature header against the body: the HMAC
// must match and the timestamp be within tolerance of now (a receiver should
// also drop deliveries whose Vouch-Alert-Id it has seen).
func VerifyWebhook(secret []byte, header string, body []byte, now time.Time, tolerance time.Duration) error {
	var ts string
	var sigs [][]byte
	for _, part := range strings.Split(header, ",") {
		k, v, _ := strings.Cut(strings.TrimSpace(part), "=")
		switch k {
		case "t":
			ts = v
		case "v1":
			if b, err := hex.DecodeString(v); err == nil {
				sigs = append(sigs, b)
			}
		}
	}
	sec, err := strconv.ParseInt(ts, 10, 64)
	if err != nil || len(sigs) == 0 {
		return errors.New("webhook signature: malformed header")
	}
	if d := now.Sub(time.Unix(sec, 0)); d > tolerance || d < -tolerance {
		return fmt.Errorf("webhook signature: timestamp is %v away from now", d.Round(time.Second))
	}
	want := webhookMAC(secret, ts, body)
	for _, s := range sigs {
		if hmac.Equal(s, want) {
			return nil
		}
	}
	return errors.New("webhook signature: no signature matches")
}
