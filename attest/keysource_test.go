package attest

import (
	"context"
	"net/http"
	"net/http/httptest"
	"sync"
	"sync/atomic"
	"testing"
	"time"
)

// keyServer serves a key set at /v1/keys and counts requests.
type keyServer struct {
	*httptest.Server
	mu          sync.Mutex
	body        []byte
	contentType string
	status      int
	hits        atomic.Int64
}

func newKeyServer(t *testing.T, ks *KeySet) *keyServer {
	t.Helper()
	s := &keyServer{contentType: KeySetMediaType, status: http.StatusOK}
	s.set(t, ks)
	s.Server = httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		s.hits.Add(1)
		if r.URL.Path != "/v1/keys" || r.Header.Get("Accept") != KeySetMediaType {
			http.NotFound(w, r)
			return
		}
		s.mu.Lock()
		defer s.mu.Unlock()
		w.Header().Set("Content-Type", s.contentType)
		w.WriteHeader(s.status)
		w.Write(s.body)
	}))
	t.Cleanup(s.Close)
	return s
}

func (s *keyServer) set(t *testing.T, ks *KeySet) {
	t.Helper()
	b, err := ks.MarshalCBOR()
	if err != nil {
		t.Fatal(err)
	}
	s.mu.Lock()
	s.body = b
	s.mu.Unlock()
}

func TestRemoteKeys(t *testing.T) {
	is1, is2 := newIssuer(t), newIssuer(t)
	srv := newKeyServer(t, is1.keys)
	now := testNow
	var clockMu sync.Mutex
	clock := func() time.Time { clockMu.Lock(); defer clockMu.Unlock(); return now }
	advance := func(d time.Duration) { clockMu.Lock(); now = now.Add(d); clockMu.Unlock() }
	src, err := NewRemoteKeys(RemoteKeysOptions{URL: srv.URL + "/v1/keys", Now: clock})
	if err != nil {
		t.Fatal(err)
	}
	ctx := context.Background()
	ks, err := src.KeySet(ctx)
	if err != nil {
		t.Fatal(err)
	}
	if _, ok := ks.Lookup(is1.kid); !ok || srv.hits.Load() != 1 {
		t.Fatalf("first fetch: kid found %v, %d hits", ok, srv.hits.Load())
	}
	// Cached.
	for i := 0; i < 10; i++ {
		src.KeySet(ctx)
	}
	if srv.hits.Load() != 1 {
		t.Fatalf("%d hits; the set should be cached", srv.hits.Load())
	}
	// The verifier rotates; refreshes on unknown kids are rate-limited.
	srv.set(t, is2.keys)
	ks, _ = src.Refresh(ctx)
	if srv.hits.Load() != 1 {
		t.Fatal("refresh within MinInterval fetched")
	}
	if _, ok := ks.Lookup(is2.kid); ok {
		t.Fatal("new kid visible without a fetch")
	}
	advance(DefaultKeysMinInterval)
	var wg sync.WaitGroup
	for i := 0; i < 20; i++ {
		wg.Add(1)
		go func() { defer wg.Done(); src.Refresh(ctx) }()
	}
	wg.Wait()
	if srv.hits.Load() != 2 {
		t.Fatalf("%d hits after 20 concurrent refreshes; want one fetch", srv.hits.Load())
	}
	ks, _ = src.KeySet(ctx)
	if _, ok := ks.Lookup(is2.kid); !ok {
		t.Fatal("rotated key not picked up")
	}
	// Periodic refresh when older than Refresh.
	advance(DefaultKeysRefresh)
	src.KeySet(ctx)
	if srv.hits.Load() != 3 {
		t.Fatalf("%d hits; want a periodic refresh", srv.hits.Load())
	}

	// The verifier answers garbage: the cached set is kept, up to MaxStale.
	srv.mu.Lock()
	srv.contentType = "text/html"
	srv.mu.Unlock()
	advance(DefaultKeysRefresh)
	ks, err = src.KeySet(ctx)
	if err != nil || ks == nil {
		t.Fatalf("stale set not served during an outage: %v", err)
	}
	advance(DefaultKeysMaxStale)
	_, err = src.KeySet(ctx)
	wantReason(t, err, ReasonUnavailable)
}

func TestRemoteKeysBadResponses(t *testing.T) {
	is := newIssuer(t)
	for _, tc := range []struct {
		name   string
		mutate func(*keyServer)
	}{
		{"status", func(s *keyServer) { s.status = http.StatusInternalServerError }},
		{"content type", func(s *keyServer) { s.contentType = "application/json" }},
		{"oversized", func(s *keyServer) { s.body = make([]byte, MaxKeySetSize+10) }},
		{"garbage", func(s *keyServer) { s.body = []byte{0x81, 0xf6} }},
		{"empty set", func(s *keyServer) { s.body = []byte{0x80} }},
	} {
		t.Run(tc.name, func(t *testing.T) {
			srv := newKeyServer(t, is.keys)
			tc.mutate(srv)
			src, err := NewRemoteKeys(RemoteKeysOptions{URL: srv.URL + "/v1/keys"})
			if err != nil {
				t.Fatal(err)
			}
			_, err = src.KeySet(context.Background())
			wantReason(t, err, ReasonUnavailable)
			// A failed fetch is not retried on every call.
			src.KeySet(context.Background())
			if srv.hits.Load() != 1 {
				t.Fatalf("%d fetches; failures must be rate-limited", srv.hits.Load())
			}
		})
	}
}

func TestRemoteKeysOptions(t *testing.T) {
	for _, u := range []string{"", "vouchd.example/v1/keys", "http://vouchd.example/v1/keys", "ftp://localhost/keys"} {
		if _, err := NewRemoteKeys(RemoteKeysOptions{URL: u}); err == nil {
			t.Errorf("URL %q accepted", u)
		}
	}
	for _, u := range []string{"https://vouchd.example/v1/keys", "http://127.0.0.1:8080/v1/keys", "http://localhost/v1/keys"} {
		if _, err := NewRemoteKeys(RemoteKeysOptions{URL: u}); err != nil {
			t.Errorf("URL %q: %v", u, err)
		}
	}
}

func TestRemoteKeysContextCancelled(t *testing.T) {
	is := newIssuer(t)
	block := make(chan struct{})
	srv := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		<-block
		b, _ := is.keys.MarshalCBOR()
		w.Header().Set("Content-Type", KeySetMediaType)
		w.Write(b)
	}))
	defer srv.Close()
	defer close(block)
	src, _ := NewRemoteKeys(RemoteKeysOptions{URL: srv.URL})
	if src.url != srv.URL+"/v1/keys" {
		t.Fatalf("URL without path became %q", src.url)
	}
	ctx, cancel := context.WithTimeout(context.Background(), 50*time.Millisecond)
	defer cancel()
	_, err := src.KeySet(ctx)
	wantReason(t, err, ReasonUnavailable)
}

func TestStaticKeys(t *testing.T) {
	is := newIssuer(t)
	ks, err := StaticKeys{is.keys}.KeySet(context.Background())
	if err != nil || ks != is.keys {
		t.Fatal(err)
	}
	_, err = StaticKeys{}.KeySet(context.Background())
	wantReason(t, err, ReasonUnavailable)
}

func TestDecodeKeySet(t *testing.T) {
	is := newIssuer(t)
	b, _ := is.keys.MarshalCBOR()
	ks, err := DecodeKeySet(b)
	if err != nil {
		t.Fatal(err)
	}
	if _, ok := ks.Lookup(is.kid); !ok {
		t.Fatal("kid lost")
	}
	priv := privateCOSE(t, newAgent(t))
	priv.ID = []byte("k")
	for name, data := range map[string][]byte{
		"null key":  {0x81, 0xf6},
		"empty":     {0x80},
		"not array": {0xa0},
		"private":   mustMarshal(t, []any{priv}),
		"duplicate": mustMarshal(t, []any{is.keys.raw[0], is.keys.raw[0]}),
		"oversized": make([]byte, MaxKeySetSize+1),
	} {
		_, err := DecodeKeySet(data)
		if ReasonOf(err) != ReasonKeySetInvalid {
			t.Errorf("%s: %v", name, err)
		}
	}
}
