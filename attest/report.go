package attest

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"io"
	"log/slog"
	"net/http"
	"sync/atomic"
	"time"
)

// RequestReport is what a relying party tells the verifier about one request
// that carried a valid credential: accepted, or refused after the credential
// verified (a failed proof of possession, a revoked credential, a request
// outside the credential's scope). The verifier's monitor learns each agent's
// behaviour from these (POST /v1/signals).
type RequestReport struct {
	Time     time.Time `json:"time"`
	CTI      []byte    `json:"cti"`
	Subject  string    `json:"sub"`
	Method   string    `json:"method"`
	Path     string    `json:"path"`
	Outcome  string    `json:"outcome"` // "accepted" or "refused"
	Reason   Reason    `json:"reason,omitempty"`
	SourceIP string    `json:"source_ip,omitempty"`
}

// Report outcomes.
const (
	ReportAccepted = "accepted"
	ReportRefused  = "refused"
)

// ReportBatch is the body of POST /v1/signals.
type ReportBatch struct {
	Reports []RequestReport `json:"reports"`
}

// MaxReportBatch bounds the reports in one batch.
const MaxReportBatch = 1000

// Defaults of [ReporterOptions].
const (
	DefaultReportQueue    = 8192
	DefaultReportBatch    = 256
	DefaultReportInterval = 100 * time.Millisecond
)

// ReporterOptions configure a [Reporter].
type ReporterOptions struct {
	// URL is the verifier's base URL; reports go to /v1/signals. https
	// unless loopback. Required.
	URL string
	// Token authenticates this relying party to the verifier (Authorization:
	// Bearer). The verifier maps it to the audience whose credentials this
	// relying party may report on. Required.
	Token string
	// Client sends the batches; default a client with a 10 s timeout.
	Client *http.Client
	// QueueSize bounds the reports waiting to be sent; beyond it reports are
	// dropped and counted (Dropped). Default DefaultReportQueue.
	QueueSize int
	// BatchSize is the most reports per request. Default DefaultReportBatch.
	BatchSize int
	// Interval is the longest a report waits for its batch. Default
	// DefaultReportInterval.
	Interval time.Duration
	// Logger receives delivery failures. Default: none.
	Logger *slog.Logger
}

// Reporter sends request reports to the verifier in batches, off the request
// path: Report never blocks. Pass r.Report as MiddlewareOptions.Report and
// run r.Run in a goroutine.
type Reporter struct {
	opts    ReporterOptions
	url     string
	client  *http.Client
	queue   chan RequestReport
	dropped atomic.Uint64
	sent    atomic.Uint64
	failed  atomic.Uint64
}

// NewReporter returns a reporter; start it with Run.
func NewReporter(opts ReporterOptions) (*Reporter, error) {
	u, err := ServiceURL("reporter", opts.URL)
	if err != nil {
		return nil, err
	}
	if opts.Token == "" {
		return nil, errors.New("reporter: Token is required")
	}
	u.Path, u.RawQuery = "/v1/signals", ""
	if opts.QueueSize <= 0 {
		opts.QueueSize = DefaultReportQueue
	}
	if opts.BatchSize <= 0 || opts.BatchSize > MaxReportBatch {
		opts.BatchSize = DefaultReportBatch
	}
	if opts.Interval <= 0 {
		opts.Interval = DefaultReportInterval
	}
	if opts.Logger == nil {
		opts.Logger = slog.New(slog.DiscardHandler)
	}
	client := opts.Client
	if client == nil {
		client = &http.Client{Timeout: 10 * time.Second}
	}
	return &Reporter{opts: opts, url: u.String(), client: client, queue: make(chan RequestReport, opts.QueueSize)}, nil
}

// Report queues one report; when the queue is full it is dropped and counted.
func (r *Reporter) Report(rep RequestReport) {
	select {
	case r.queue <- rep:
	default:
		r.dropped.Add(1)
	}
}

// Dropped, Sent and Failed count reports dropped for a full queue, delivered,
// and lost to failed deliveries.
func (r *Reporter) Dropped() uint64 { return r.dropped.Load() }
func (r *Reporter) Sent() uint64    { return r.sent.Load() }
func (r *Reporter) Failed() uint64  { return r.failed.Load() }

// Run sends batches until ctx is done. A batch the verifier does not take is
// retried once, then counted in Failed: reports are telemetry, and the
// relying party's decisions never wait for them.
func (r *Reporter) Run(ctx context.Context) error {
	batch := make([]RequestReport, 0, r.opts.BatchSize)
	t := time.NewTimer(r.opts.Interval)
	defer t.Stop()
	flush := func() {
		if len(batch) == 0 {
			return
		}
		err := r.send(ctx, batch)
		if err != nil && ctx.Err() == nil {
			err = r.send(ctx, batch)
		}
		if err != nil {
			r.failed.Add(uint64(len(batch)))
			r.opts.Logger.Warn("vouch: reporting to the verifier failed", "reports", len(batch), "err", err)
		} else {
			r.sent.Add(uint64(len(batch)))
		}
		batch = batch[:0]
	}
	for {
		select {
		case <-ctx.Done():
			return ctx.Err()
		case rep := <-r.queue:
			batch = append(batch, rep)
			if len(batch) >= r.opts.BatchSize {
				flush()
			}
		case <-t.C:
			flush()
			t.Reset(r.opts.Interval)
		}
	}
}

func (r *Reporter) send(ctx context.Context, batch []RequestReport) error {
	body, err := json.Marshal(ReportBatch{Reports: batch})
	if err != nil {
		return err
	}
	req, err := http.NewRequestWithContext(ctx, http.MethodPost, r.url, bytes.NewReader(body))
	if err != nil {
		return err
	}
	req.Header.Set("Content-Type", "application/json")
	req.Header.Set("Authorization", "Bearer "+r.opts.Token)
	resp, err := r.client.Do(req)
	if err != nil {
		return err
	}
	defer resp.Body.Close()
	if resp.StatusCode/100 != 2 {
		return ReadProblem(resp)
	}
	io.Copy(io.Discard, io.LimitReader(resp.Body, 1<<16))
	return nil
}
