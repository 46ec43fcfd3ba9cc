package attest

import (
	"context"
	"errors"
	"io"
	"mime"
	"net/http"
	"sync"
	"time"
)

// KeySource gives the verifier's current signing keys.
type KeySource interface {
	KeySet(ctx context.Context) (*KeySet, error)
}

// KeyRefresher is a KeySource that can fetch its keys again when a
// credential names a kid it does not know (the verifier rotated its key).
// Refresh is rate-limited by the implementation, so callers may call it on
// every unknown kid.
type KeyRefresher interface {
	KeySource
	Refresh(ctx context.Context) (*KeySet, error)
}

// StaticKeys is a KeySource that always returns the same set, for tests and
// for relying parties configured with the verifier's keys by file.
type StaticKeys struct{ Keys *KeySet }

// KeySet returns s.Keys, or an error if it is nil.
func (s StaticKeys) KeySet(context.Context) (*KeySet, error) {
	if s.Keys == nil {
		return nil, Errorf(ReasonUnavailable, "no verifier keys are configured")
	}
	return s.Keys, nil
}

// Defaults of [RemoteKeysOptions].
const (
	DefaultKeysRefresh     = 5 * time.Minute
	DefaultKeysMinInterval = 30 * time.Second
	DefaultKeysMaxStale    = 24 * time.Hour
	DefaultKeysTimeout     = 10 * time.Second
)

// RemoteKeysOptions configure a [RemoteKeys] source.
type RemoteKeysOptions struct {
	// URL of the verifier's key set, e.g. "https://vouchd.example/v1/keys";
	// a URL without a path gets /v1/keys. Required; must be https unless the
	// host is a loopback address.
	URL string
	// Client makes the requests; default a client with no redirects and a
	// Timeout of Timeout.
	Client *http.Client
	// Timeout bounds one fetch. Default DefaultKeysTimeout.
	Timeout time.Duration
	// Refresh is the age after which the set is fetched again. Default
	// DefaultKeysRefresh.
	Refresh time.Duration
	// MinInterval is the least time between two fetches, whatever triggers
	// them (unknown kids, failures). Default DefaultKeysMinInterval.
	MinInterval time.Duration
	// MaxStale is how long a set fetched successfully is still used when
	// fetching fails (the verifier is down). After that, KeySet fails.
	// Default DefaultKeysMaxStale.
	MaxStale time.Duration
	// Now returns the current time; default time.Now.
	Now func() time.Time
}

// RemoteKeys is a KeySource that fetches the verifier's COSE_KeySet over HTTP
// (GET, Accept and Content-Type application/cose-key-set, body bounded by
// MaxKeySetSize), caches it and fetches it again when it is older than
// Refresh or when Refresh is called for an unknown kid. At most one fetch
// runs at a time and fetches are at least MinInterval apart, so requests
// with made-up kids cannot make the relying party hammer the verifier. It is
// safe for concurrent use.
type RemoteKeys struct {
	url    string
	client *http.Client
	opts   RemoteKeysOptions

	mu          sync.Mutex
	set         *KeySet
	fetchedAt   time.Time     // last successful fetch
	attemptedAt time.Time     // last fetch started
	lastErr     error         // error of the last fetch, nil after a success
	inflight    chan struct{} // closed when the running fetch ends
}

// NewRemoteKeys checks opts and returns the source. It does not fetch yet.
func NewRemoteKeys(opts RemoteKeysOptions) (*RemoteKeys, error) {
	u, err := ServiceURL("remote keys", opts.URL)
	if err != nil {
		return nil, err
	}
	if u.Path == "" || u.Path == "/" {
		u.Path = "/v1/keys"
	}
	if opts.Timeout <= 0 {
		opts.Timeout = DefaultKeysTimeout
	}
	if opts.Refresh <= 0 {
		opts.Refresh = DefaultKeysRefresh
	}
	if opts.MinInterval <= 0 {
		opts.MinInterval = DefaultKeysMinInterval
	}
	if opts.MaxStale <= 0 {
		opts.MaxStale = DefaultKeysMaxStale
	}
	if opts.Now == nil {
		opts.Now = time.Now
	}
	client := opts.Client
	if client == nil {
		client = &http.Client{
			Timeout: opts.Timeout,
			CheckRedirect: func(*http.Request, []*http.Request) error {
				return http.ErrUseLastResponse
			},
		}
	}
	return &RemoteKeys{url: u.String(), client: client, opts: opts}, nil
}

// KeySet returns the cached set, fetching it first if there is none or it is
// older than Refresh (and no fetch happened in the last MinInterval). When
// fetching fails, the cached set is used until it is MaxStale old.
func (s *RemoteKeys) KeySet(ctx context.Context) (*KeySet, error) {
	return s.get(ctx, false)
}

// Refresh fetches the set again unless a fetch started less than
// MinInterval ago, and returns the current set.
func (s *RemoteKeys) Refresh(ctx context.Context) (*KeySet, error) {
	return s.get(ctx, true)
}

func (s *RemoteKeys) get(ctx context.Context, force bool) (*KeySet, error) {
	for {
		s.mu.Lock()
		now := s.opts.Now()
		fresh := s.set != nil && now.Sub(s.fetchedAt) < s.opts.Refresh && !force
		mayFetch := s.attemptedAt.IsZero() || now.Sub(s.attemptedAt) >= s.opts.MinInterval
		if fresh || (!mayFetch && s.inflight == nil) {
			set, err := s.currentLocked(now)
			s.mu.Unlock()
			return set, err
		}
		if wait := s.inflight; wait != nil {
			s.mu.Unlock()
			select {
			case <-wait:
				force = false // the fetch we waited for is the refresh we wanted
				continue
			case <-ctx.Done():
				return nil, Errorf(ReasonUnavailable, "waiting for the verifier's key set: %w", ctx.Err())
			}
		}
		// Start a fetch that outlives this caller: a client hanging up must
		// not cancel the fetch every other request is waiting for.
		done := make(chan struct{})
		s.inflight, s.attemptedAt = done, now
		s.mu.Unlock()
		go s.run(context.WithoutCancel(ctx), done)
	}
}

// run fetches the set and records the outcome.
func (s *RemoteKeys) run(ctx context.Context, done chan struct{}) {
	set, err := s.fetch(ctx)
	s.mu.Lock()
	if err == nil {
		s.set, s.fetchedAt, s.lastErr = set, s.opts.Now(), nil
	} else {
		s.lastErr = err
	}
	s.inflight = nil
	close(done)
	s.mu.Unlock()
}

// currentLocked returns the cached set if it is not too stale.
func (s *RemoteKeys) currentLocked(now time.Time) (*KeySet, error) {
	if s.set != nil && now.Sub(s.fetchedAt) < s.opts.MaxStale {
		return s.set, nil
	}
	if s.lastErr != nil {
		return nil, s.lastErr
	}
	return nil, Errorf(ReasonUnavailable, "the verifier's key set is not available")
}

func (s *RemoteKeys) fetch(ctx context.Context) (*KeySet, error) {
	ctx, cancel := context.WithTimeout(ctx, s.opts.Timeout)
	defer cancel()
	req, err := http.NewRequestWithContext(ctx, http.MethodGet, s.url, nil)
	if err != nil {
		return nil, Errorf(ReasonUnavailable, "fetching verifier keys: %w", err)
	}
	req.Header.Set("Accept", KeySetMediaType)
	resp, err := s.client.Do(req)
	if err != nil {
		return nil, Errorf(ReasonUnavailable, "fetching verifier keys from %s: %w", s.url, err)
	}
	defer resp.Body.Close()
	if resp.StatusCode != http.StatusOK {
		return nil, Errorf(ReasonUnavailable, "fetching verifier keys from %s: %s", s.url, resp.Status)
	}
	if mt, _, err := mime.ParseMediaType(resp.Header.Get("Content-Type")); err != nil || mt != KeySetMediaType {
		return nil, Errorf(ReasonUnavailable, "fetching verifier keys from %s: Content-Type is %q, want %s", s.url, resp.Header.Get("Content-Type"), KeySetMediaType)
	}
	body, err := io.ReadAll(io.LimitReader(resp.Body, MaxKeySetSize+1))
	if err != nil {
		return nil, Errorf(ReasonUnavailable, "fetching verifier keys from %s: %w", s.url, err)
	}
	ks, err := DecodeKeySet(body)
	if err != nil {
		var e *Error
		if errors.As(err, &e) {
			return nil, &Error{Reason: ReasonUnavailable, Detail: "verifier keys from " + s.url + ": " + e.Detail, Err: err}
		}
		return nil, Errorf(ReasonUnavailable, "verifier keys from %s: %w", s.url, err)
	}
	return ks, nil
}
