package verifier

import (
	"context"
	"encoding/json"
	"fmt"
	"net/http"
	"strconv"
	"sync"
	"sync/atomic"
	"time"

	"github.com/vouch-dev/vouch/attest"
	"github.com/vouch-dev/vouch/verifier/store"
)

// Revocation feed defaults.
const (
	// DefaultFeedHeartbeat is how often the stream sends a heartbeat and
	// the verifier looks for revocations written by other processes (the
	// vouch CLI, other replicas).
	DefaultFeedHeartbeat = 250 * time.Millisecond
	// maxFeedPage bounds a page of GET /v1/revocations.
	maxFeedPage = 1000
	// maxFeedClients bounds concurrent streams.
	maxFeedClients = 4096
)

// feedBroker tells stream handlers that the feed head moved. Revocations
// made in this process wake it at once; those made elsewhere are found by
// polling the head every heartbeat.
type feedBroker struct {
	store   *store.Store
	mu      sync.Mutex
	head    int64
	epoch   string
	changed chan struct{}
	clients atomic.Int64
	poke    chan struct{}
}

func newFeedBroker(st *store.Store) *feedBroker {
	return &feedBroker{store: st, changed: make(chan struct{}), poke: make(chan struct{}, 1)}
}

// notify makes the broker read the head now.
func (b *feedBroker) notify() {
	select {
	case b.poke <- struct{}{}:
	default:
	}
}

// state returns the head, the epoch, and a channel closed at the next change.
func (b *feedBroker) state() (int64, string, <-chan struct{}) {
	b.mu.Lock()
	defer b.mu.Unlock()
	return b.head, b.epoch, b.changed
}

func (b *feedBroker) refresh(ctx context.Context) error {
	head, epoch, err := b.store.FeedHead(ctx)
	if err != nil {
		return err
	}
	b.mu.Lock()
	if head != b.head || epoch != b.epoch {
		b.head, b.epoch = head, epoch
		close(b.changed)
		b.changed = make(chan struct{})
	}
	b.mu.Unlock()
	return nil
}

func (b *feedBroker) run(ctx context.Context, every time.Duration, s *Server) {
	t := time.NewTicker(every)
	defer t.Stop()
	for {
		if err := b.refresh(ctx); err != nil && ctx.Err() == nil {
			s.log.Warn("revocation feed: reading the head", "err", err)
		}
		select {
		case <-ctx.Done():
			return
		case <-t.C:
		case <-b.poke:
		}
	}
}

func entryOf(r *store.Revocation) attest.RevocationEntry {
	return attest.RevocationEntry{ID: r.ID, Kind: r.Kind, CTI: r.CTI, Subject: r.Subject, Expires: r.ExpiresAt.UTC(),
		Reason: r.Reason, RevokedAt: r.RevokedAt.UTC()}
}

// feedSince parses the since cursor (query, else Last-Event-ID).
func feedSince(r *http.Request) (int64, error) {
	v := r.URL.Query().Get("since")
	if v == "" {
		v = r.Header.Get("Last-Event-ID")
	}
	if v == "" {
		return 0, nil
	}
	n, err := strconv.ParseInt(v, 10, 64)
	if err != nil || n < 0 {
		return 0, attest.Errorf(attest.ReasonRequestMalformed, "since must be a feed cursor (a non-negative integer), not %q", v)
	}
	return n, nil
}

// page reads the entries after since, up to the head read first (so that
// the cursor never skips an entry committed meanwhile).
func (s *Server) feedPage(ctx context.Context, since int64, limit int) (*attest.RevocationPage, error) {
	head, epoch, err := s.store.FeedHead(ctx)
	if err != nil {
		return nil, unavailable(err)
	}
	rs, err := s.store.Revocations(ctx, since, limit, s.cfg.Now())
	if err != nil {
		return nil, unavailable(err)
	}
	p := &attest.RevocationPage{Epoch: epoch, Head: head, Cursor: since, Revocations: []attest.RevocationEntry{}}
	for i := range rs {
		if rs[i].ID > head {
			break
		}
		p.Revocations = append(p.Revocations, entryOf(&rs[i]))
		p.Cursor = rs[i].ID
	}
	p.More = len(rs) == limit
	if !p.More && since <= head {
		p.Cursor = head
	}
	return p, nil
}

// handleRevocations serves GET /v1/revocations?since=N[&limit=M].
func (s *Server) handleRevocations(w http.ResponseWriter, r *http.Request) error {
	since, err := feedSince(r)
	if err != nil {
		return err
	}
	limit := maxFeedPage
	if v := r.URL.Query().Get("limit"); v != "" {
		if n, err := strconv.Atoi(v); err == nil && n > 0 && n < maxFeedPage {
			limit = n
		}
	}
	p, err := s.feedPage(r.Context(), since, limit)
	if err != nil {
		return err
	}
	w.Header().Set("Content-Type", "application/json")
	w.Header().Set("Cache-Control", "no-store")
	return json.NewEncoder(w).Encode(p)
}

// handleRevocationStream serves GET /v1/revocations/stream?since=N as
// server-sent events: first every entry after N ("revocation" events, id =
// cursor), then a "heartbeat"; then each new entry as it is written, and a
// heartbeat at least every FeedHeartbeat.
func (s *Server) handleRevocationStream(w http.ResponseWriter, r *http.Request) error {
	since, err := feedSince(r)
	if err != nil {
		return err
	}
	if s.feed.clients.Add(1) > maxFeedClients {
		s.feed.clients.Add(-1)
		return attest.Errorf(attest.ReasonUnavailable, "too many revocation streams; poll GET /v1/revocations instead")
	}
	defer s.feed.clients.Add(-1)
	rc := http.NewResponseController(w)
	// The stream outlives the server's write timeout by design.
	if err := rc.SetWriteDeadline(time.Time{}); err != nil && err != http.ErrNotSupported {
		return err
	}
	w.Header().Set("Content-Type", "text/event-stream")
	w.Header().Set("Cache-Control", "no-store")
	w.Header().Set("X-Accel-Buffering", "no")
	w.WriteHeader(http.StatusOK)
	ctx := r.Context()
	hb := time.NewTicker(s.cfg.FeedHeartbeat)
	defer hb.Stop()
	cursor := since
	first := true
	for {
		head, epoch, changed := s.feed.state()
		if first || head > cursor || epoch == "" {
			first = false
			for {
				p, err := s.feedPage(ctx, cursor, 500)
				if err != nil {
					return err
				}
				for _, e := range p.Revocations {
					b, _ := json.Marshal(e)
					if _, err := fmt.Fprintf(w, "event: revocation\nid: %d\ndata: %s\n\n", e.ID, b); err != nil {
						return nil
					}
				}
				cursor, head, epoch = p.Cursor, p.Head, p.Epoch
				if !p.More {
					break
				}
			}
		}
		// The broker's head may lag the page just read; never announce a
		// head behind what was sent (the follower would start over).
		hbData, _ := json.Marshal(attest.RevocationHeartbeat{Epoch: epoch, Head: max(head, cursor), Time: s.cfg.Now().UTC()})
		if _, err := fmt.Fprintf(w, "event: heartbeat\ndata: %s\n\n", hbData); err != nil {
			return nil
		}
		if err := rc.Flush(); err != nil {
			return nil
		}
		select {
		case <-ctx.Done():
			return nil
		case <-s.streams.Done():
			return nil
		case <-changed:
		case <-hb.C:
		}
	}
}
