package attest

import (
	"bufio"
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"net/http"
	"strconv"
	"sync"
	"sync/atomic"
	"time"
)

// The revocation feed (GET /v1/revocations, GET /v1/revocations/stream) is
// how relying parties learn, within about a second, that the verifier
// revoked a credential. Entries are JSON:
//
//	{"id": 42, "kind": "credential", "cti": "<base64>", "sub": "urn:ietf:params:oauth:ckt:sha-256:…",
//	 "exp": "2026-01-02T15:04:05Z", "reason": "monitor: rate-anomaly", "revoked_at": "…"}
//
// kind "credential" revokes one credential (cti); kind "agent" revokes every
// credential of the agent instance (sub). Both matter until exp.

// Revocation kinds on the feed.
const (
	RevocationCredential = "credential"
	RevocationAgent      = "agent"
)

// RevocationEntry is one entry of the revocation feed. ID is the feed
// cursor: it only grows.
type RevocationEntry struct {
	ID        int64     `json:"id"`
	Kind      string    `json:"kind"`
	CTI       []byte    `json:"cti,omitempty"`
	Subject   string    `json:"sub,omitempty"`
	Expires   time.Time `json:"exp"`
	Reason    string    `json:"reason,omitempty"`
	RevokedAt time.Time `json:"revoked_at"`
}

// RevocationPage is the body of GET /v1/revocations?since=N: the entries
// after cursor N that have not expired, oldest first, at most a page. Cursor
// is where to continue (since=Cursor); More says another page is waiting.
// Head is the newest cursor of the feed; Epoch names the verifier's
// database: when it changes, the feed started over and the follower must
// start again from 0.
type RevocationPage struct {
	Epoch       string            `json:"epoch"`
	Head        int64             `json:"head"`
	Cursor      int64             `json:"cursor"`
	More        bool              `json:"more"`
	Revocations []RevocationEntry `json:"revocations"`
}

// RevocationHeartbeat is the data of a "heartbeat" event on the stream.
type RevocationHeartbeat struct {
	Epoch string    `json:"epoch"`
	Head  int64     `json:"head"`
	Time  time.Time `json:"time"`
}

// Defaults of [RevocationFeedOptions].
const (
	// DefaultMaxStaleness is how long a follower trusts its copy of the feed
	// without hearing from the verifier. The verifier sends a heartbeat
	// every 250 ms, so this tolerates three lost heartbeats.
	DefaultMaxStaleness = time.Second
	// DefaultRevocationPoll is the polling interval while the stream is down.
	DefaultRevocationPoll = 250 * time.Millisecond
	// MaxRevocationEntries bounds the follower's memory; beyond it the
	// follower fails closed.
	MaxRevocationEntries = 1 << 20
	// maxSSELine bounds one line of the event stream.
	maxSSELine = 64 << 10
	// maxRevocationPage bounds a page body.
	maxRevocationPage = 8 << 20
)

// RevocationFeedOptions configure a [RevocationFeed].
type RevocationFeedOptions struct {
	// URL is the verifier's base URL ("https://vouchd.example"); the feed is
	// at /v1/revocations. https unless loopback. Required.
	URL string
	// Client makes the requests; default a client with no timeout for the
	// stream (the follower bounds it itself) and no redirects.
	Client *http.Client
	// MaxStaleness: when the follower has heard nothing from the verifier
	// for this long, Revoked fails closed (the middleware answers 503)
	// until the feed is back. Default DefaultMaxStaleness.
	MaxStaleness time.Duration
	// PollInterval is how often to poll while the stream is down. Default
	// DefaultRevocationPoll.
	PollInterval time.Duration
	// Skew is kept on top of an entry's exp before it is forgotten. Default
	// DefaultCredentialSkew.
	Skew time.Duration
	// OnUpdate, if set, is called after new entries are applied (metrics,
	// tests measuring propagation).
	OnUpdate func(entries []RevocationEntry)
	// Logger receives connection problems. Default: none.
	Logger *slog.Logger
	// Now returns the current time; time.Now when nil.
	Now func() time.Time
}

// RevocationFeed follows the verifier's revocation feed and answers the
// attest middleware's Revoked hook from memory: pass f.Revoked as
// MiddlewareOptions.Revoked and run f.Run in a goroutine. It keeps a server-sent
// events stream open and falls back to polling while the stream is down.
// It fails closed: when the feed is stale beyond MaxStaleness (or was never
// read), Revoked returns an error and the middleware refuses with 503.
type RevocationFeed struct {
	opts    RevocationFeedOptions
	base    string
	client  *http.Client
	contact atomic.Int64 // unix nanos of the last message from the verifier

	mu     sync.RWMutex
	ctis   map[[CredentialIDSize]byte]time.Time
	subs   map[string]time.Time
	cursor int64
	epoch  string
	pruned time.Time
	synced chan struct{}
	once   sync.Once
}

// NewRevocationFeed returns a follower; start it with Run.
func NewRevocationFeed(opts RevocationFeedOptions) (*RevocationFeed, error) {
	u, err := ServiceURL("revocation feed", opts.URL)
	if err != nil {
		return nil, err
	}
	u.Path, u.RawQuery = "", ""
	if opts.MaxStaleness <= 0 {
		opts.MaxStaleness = DefaultMaxStaleness
	}
	if opts.PollInterval <= 0 {
		opts.PollInterval = DefaultRevocationPoll
	}
	if opts.Skew <= 0 {
		opts.Skew = DefaultCredentialSkew
	}
	if opts.Now == nil {
		opts.Now = time.Now
	}
	if opts.Logger == nil {
		opts.Logger = slog.New(slog.DiscardHandler)
	}
	client := opts.Client
	if client == nil {
		client = &http.Client{CheckRedirect: func(*http.Request, []*http.Request) error { return http.ErrUseLastResponse }}
	}
	return &RevocationFeed{
		opts: opts, base: u.String(), client: client,
		ctis: map[[CredentialIDSize]byte]time.Time{}, subs: map[string]time.Time{},
		synced: make(chan struct{}),
	}, nil
}

// Revoked implements MiddlewareOptions.Revoked.
func (f *RevocationFeed) Revoked(_ context.Context, c *Claims) (bool, error) {
	if st := f.Staleness(); st > f.opts.MaxStaleness {
		return false, fmt.Errorf("the revocation feed is %v stale (bound %v)", st.Round(time.Millisecond), f.opts.MaxStaleness)
	}
	var cti [CredentialIDSize]byte
	copy(cti[:], c.ID)
	f.mu.RLock()
	_, byID := f.ctis[cti]
	_, bySub := f.subs[c.Subject]
	over := len(f.ctis)+len(f.subs) > MaxRevocationEntries
	f.mu.RUnlock()
	if over {
		return false, errors.New("the revocation feed holds more entries than the follower keeps")
	}
	return byID || bySub, nil
}

// Staleness is how long ago the follower last heard from the verifier
// (effectively infinite before the first contact).
func (f *RevocationFeed) Staleness() time.Duration {
	last := f.contact.Load()
	if last == 0 {
		return time.Duration(1<<63 - 1)
	}
	return f.opts.Now().Sub(time.Unix(0, last))
}

// Cursor returns the last feed entry applied.
func (f *RevocationFeed) Cursor() int64 {
	f.mu.RLock()
	defer f.mu.RUnlock()
	return f.cursor
}

// WaitSynced blocks until the follower has read the whole feed once.
func (f *RevocationFeed) WaitSynced(ctx context.Context) error {
	select {
	case <-f.synced:
		return nil
	case <-ctx.Done():
		return ctx.Err()
	}
}

// Run follows the feed until ctx is done: the stream while it works,
// polling while it does not, reconnecting with backoff.
func (f *RevocationFeed) Run(ctx context.Context) error {
	backoff := f.opts.PollInterval
	for {
		err := f.stream(ctx)
		if ctx.Err() != nil {
			return ctx.Err()
		}
		f.opts.Logger.Warn("vouch: revocation stream interrupted; polling", "err", err, "retry_in", backoff)
		deadline := time.Now().Add(backoff)
		for time.Now().Before(deadline) {
			if err := f.poll(ctx); err != nil && ctx.Err() == nil {
				f.opts.Logger.Warn("vouch: revocation poll failed", "err", err)
			}
			select {
			case <-ctx.Done():
				return ctx.Err()
			case <-time.After(f.opts.PollInterval):
			}
		}
		if backoff *= 2; backoff > 30*time.Second {
			backoff = 30 * time.Second
		}
		if f.Staleness() < f.opts.MaxStaleness {
			backoff = f.opts.PollInterval // polling works: the verifier is up, retry the stream soon
		}
	}
}

// poll reads pages until the follower is at the head.
func (f *RevocationFeed) poll(ctx context.Context) error {
	for range 1000 {
		ctx, cancel := context.WithTimeout(ctx, 5*time.Second)
		req, err := http.NewRequestWithContext(ctx, http.MethodGet, f.base+"/v1/revocations?since="+strconv.FormatInt(f.Cursor(), 10), nil)
		if err != nil {
			cancel()
			return err
		}
		req.Header.Set("Accept", "application/json")
		resp, err := f.client.Do(req)
		if err != nil {
			cancel()
			return err
		}
		body, err := io.ReadAll(io.LimitReader(resp.Body, maxRevocationPage+1))
		resp.Body.Close()
		cancel()
		if err != nil {
			return err
		}
		if resp.StatusCode != http.StatusOK {
			return fmt.Errorf("GET /v1/revocations: %s", resp.Status)
		}
		if len(body) > maxRevocationPage {
			return errors.New("revocation page too large")
		}
		var page RevocationPage
		if err := json.Unmarshal(body, &page); err != nil {
			return fmt.Errorf("revocation page: %w", err)
		}
		if f.checkEpoch(page.Epoch, page.Head) {
			continue
		}
		f.apply(page.Revocations)
		f.touch()
		if !page.More {
			f.markSynced()
			return nil
		}
	}
	return errors.New("revocation feed: too many pages")
}

// errFeedReset makes the stream reconnect from cursor 0.
var errFeedReset = errors.New("the verifier's revocation feed started over")

// stream follows the server-sent events stream until it fails. A watchdog
// cancels it when nothing arrives within MaxStaleness.
func (f *RevocationFeed) stream(ctx context.Context) error {
	ctx, cancel := context.WithCancel(ctx)
	defer cancel()
	req, err := http.NewRequestWithContext(ctx, http.MethodGet, f.base+"/v1/revocations/stream?since="+strconv.FormatInt(f.Cursor(), 10), nil)
	if err != nil {
		return err
	}
	req.Header.Set("Accept", "text/event-stream")
	resp, err := f.client.Do(req)
	if err != nil {
		return err
	}
	defer resp.Body.Close()
	if resp.StatusCode != http.StatusOK {
		return fmt.Errorf("GET /v1/revocations/stream: %s", resp.Status)
	}
	alive := make(chan struct{}, 1)
	go func() {
		t := time.NewTimer(f.opts.MaxStaleness)
		defer t.Stop()
		for {
			select {
			case <-ctx.Done():
				return
			case <-alive:
				t.Reset(f.opts.MaxStaleness)
			case <-t.C:
				cancel()
				return
			}
		}
	}()
	return ReadEventStream(resp.Body, func(ev Event) error {
		select {
		case alive <- struct{}{}:
		default:
		}
		return f.handle(ev)
	})
}

// handle applies one stream event.
func (f *RevocationFeed) handle(ev Event) error {
	switch ev.Type {
	case "revocation":
		var e RevocationEntry
		if err := json.Unmarshal(ev.Data, &e); err != nil {
			return fmt.Errorf("revocation event: %w", err)
		}
		f.apply([]RevocationEntry{e})
		f.touch()
	case "heartbeat":
		var hb RevocationHeartbeat
		if err := json.Unmarshal(ev.Data, &hb); err != nil {
			return fmt.Errorf("heartbeat event: %w", err)
		}
		if f.checkEpoch(hb.Epoch, hb.Head) {
			return errFeedReset
		}
		f.touch()
		// The verifier sends its first heartbeat after the backlog.
		f.markSynced()
	}
	return nil
}

// checkEpoch resets the follower when the verifier's feed started over (a
// new epoch, or a head behind the cursor) and reports whether it did.
func (f *RevocationFeed) checkEpoch(epoch string, head int64) bool {
	f.mu.Lock()
	defer f.mu.Unlock()
	if f.epoch == "" {
		f.epoch = epoch
		return head < f.cursor && f.resetLocked()
	}
	if epoch != f.epoch || head < f.cursor {
		f.epoch = epoch
		return f.resetLocked()
	}
	return false
}

func (f *RevocationFeed) resetLocked() bool {
	f.opts.Logger.Warn("vouch: the verifier's revocation feed started over; reading it again from the start")
	f.cursor = 0
	clear(f.ctis)
	clear(f.subs)
	return true
}

func (f *RevocationFeed) touch() { f.contact.Store(f.opts.Now().UnixNano()) }

func (f *RevocationFeed) markSynced() { f.once.Do(func() { close(f.synced) }) }

// apply adds entries past the cursor and forgets expired ones.
func (f *RevocationFeed) apply(entries []RevocationEntry) {
	if len(entries) == 0 {
		return
	}
	now := f.opts.Now()
	var fresh []RevocationEntry
	f.mu.Lock()
	for _, e := range entries {
		if e.ID <= f.cursor {
			continue
		}
		f.cursor = e.ID
		fresh = append(fresh, e)
		keep := e.Expires.Add(f.opts.Skew)
		switch e.Kind {
		case RevocationCredential:
			if len(e.CTI) == CredentialIDSize {
				f.ctis[[CredentialIDSize]byte(e.CTI)] = keep
			}
		case RevocationAgent:
			if e.Subject != "" {
				f.subs[e.Subject] = keep
			}
		}
	}
	if now.Sub(f.pruned) > 10*time.Second {
		f.pruned = now
		for k, exp := range f.ctis {
			if now.After(exp) {
				delete(f.ctis, k)
			}
		}
		for k, exp := range f.subs {
			if now.After(exp) {
				delete(f.subs, k)
			}
		}
	}
	f.mu.Unlock()
	if len(fresh) > 0 && f.opts.OnUpdate != nil {
		f.opts.OnUpdate(fresh)
	}
}

// Event is one server-sent event (the fields Vouch uses).
type Event struct {
	Type string // "message" when the stream names none
	ID   string
	Data []byte
}

// ReadEventStream parses a text/event-stream (WHATWG HTML, server-sent
// events) from r and calls fn for every event, until r ends, a line is
// longer than 64 KiB, or fn returns an error (which it returns).
func ReadEventStream(r io.Reader, fn func(Event) error) error {
	br := bufio.NewReaderSize(r, 4096)
	var ev Event
	var data bytes.Buffer
	hasData := false
	for {
		line, err := readLine(br)
		if err != nil {
			return err
		}
		if len(line) == 0 {
			if hasData {
				ev.Data = bytes.Clone(bytes.TrimSuffix(data.Bytes(), []byte("\n")))
				if ev.Type == "" {
					ev.Type = "message"
				}
				if err := fn(ev); err != nil {
					return err
				}
			}
			ev, hasData = Event{}, false
			data.Reset()
			continue
		}
		if line[0] == ':' {
			continue // comment
		}
		field, value, _ := bytes.Cut(line, []byte(":"))
		value = bytes.TrimPrefix(value, []byte(" "))
		switch string(field) {
		case "event":
			ev.Type = string(value)
		case "id":
			ev.ID = string(value)
		case "data":
			if data.Len()+len(value) > maxSSELine {
				return errors.New("event stream: event data too long")
			}
			data.Write(value)
			data.WriteByte('\n')
			hasData = true
		}
	}
}

// readLine reads one line (LF, CRLF or CR ends it), bounded by maxSSELine.
func readLine(br *bufio.Reader) ([]byte, error) {
	var line []byte
	for {
		b, err := br.ReadByte()
		if err != nil {
			return nil, err
		}
		switch b {
		case '\n':
			return line, nil
		case '\r':
			if next, err := br.Peek(1); err == nil && next[0] == '\n' {
				br.ReadByte()
			}
			return line, nil
		}
		if len(line) >= maxSSELine {
			return nil, errors.New("event stream: line too long")
		}
		line = append(line, b)
	}
}
