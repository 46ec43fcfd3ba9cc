package ratelimit

import (
	"fmt"
	"net/netip"
	"testing"
	"time"
)

// fakeClock is moved by the tests; nothing here sleeps.
type fakeClock struct{ t time.Time }

func (c *fakeClock) Now() time.Time          { return c.t }
func (c *fakeClock) Advance(d time.Duration) { c.t = c.t.Add(d) }

func newLimiter(t testing.TB, o Options) (*Limiter, *fakeClock) {
	t.Helper()
	clk := &fakeClock{t: time.Date(2026, 1, 2, 15, 4, 5, 0, time.UTC)}
	o.Now = clk.Now
	l, err := New(o)
	if err != nil {
		t.Fatal(err)
	}
	return l, clk
}

func key(s string) netip.Prefix { return ClientKey(netip.MustParseAddr(s)) }

func TestNewRefusesLimitsThatRefuseEverything(t *testing.T) {
	for _, o := range []Options{
		{Rate: 0, Burst: 1},
		{Rate: -1, Burst: 1},
		{Rate: 1, Burst: 0},
		{Rate: 1, Burst: 1, MaxClients: -1},
	} {
		if _, err := New(o); err == nil {
			t.Errorf("New(%+v) accepted", o)
		}
	}
}

// TestBurstAndRefill walks one client through a burst, refusals with the
// time until the next token, and the refill.
func TestBurstAndRefill(t *testing.T) {
	type step struct {
		advance time.Duration
		n       int // requests at this instant
		allowed int // how many of them pass
		retry   time.Duration
		seconds int // Retry-After of the last refusal
	}
	for _, tc := range []struct {
		name        string
		rate        float64
		burst       int
		steps       []step
		wantTracked int
	}{
		{
			name: "10/s burst 20", rate: 10, burst: 20,
			steps: []step{
				{n: 20, allowed: 20},
				{n: 1, allowed: 0, retry: 100 * time.Millisecond, seconds: 1},
				{advance: 50 * time.Millisecond, n: 1, allowed: 0, retry: 50 * time.Millisecond, seconds: 1},
				{advance: 50 * time.Millisecond, n: 2, allowed: 1, retry: 100 * time.Millisecond, seconds: 1},
				{advance: time.Second, n: 11, allowed: 10, retry: 100 * time.Millisecond, seconds: 1},
				// Idle long enough to refill the whole bucket, and no more.
				{advance: time.Hour, n: 21, allowed: 20, retry: 100 * time.Millisecond, seconds: 1},
			},
			wantTracked: 1,
		},
		{
			name: "one every 4 s", rate: 0.25, burst: 1,
			steps: []step{
				{n: 2, allowed: 1, retry: 4 * time.Second, seconds: 4},
				{advance: 2500 * time.Millisecond, n: 1, allowed: 0, retry: 1500 * time.Millisecond, seconds: 2},
				{advance: 1500 * time.Millisecond, n: 1, allowed: 1},
			},
			wantTracked: 1,
		},
		{
			name: "burst 1 at 1000/s", rate: 1000, burst: 1,
			steps: []step{
				{n: 3, allowed: 1, retry: time.Millisecond, seconds: 1},
				{advance: time.Millisecond, n: 1, allowed: 1},
			},
			wantTracked: 1,
		},
	} {
		t.Run(tc.name, func(t *testing.T) {
			l, clk := newLimiter(t, Options{Rate: tc.rate, Burst: tc.burst})
			c := key("198.51.100.7")
			for i, s := range tc.steps {
				clk.Advance(s.advance)
				allowed := 0
				var last Decision
				for range s.n {
					d := l.Allow(c)
					if d.Allowed {
						allowed++
					} else {
						last = d
					}
					if d.Overflow {
						t.Fatalf("step %d: overflow with one client", i)
					}
				}
				if allowed != s.allowed {
					t.Errorf("step %d: %d of %d allowed, want %d", i, allowed, s.n, s.allowed)
				}
				if allowed < s.n {
					if diff := last.RetryAfter - s.retry; diff < -time.Microsecond || diff > time.Microsecond {
						t.Errorf("step %d: RetryAfter %v, want %v", i, last.RetryAfter, s.retry)
					}
					if got := last.RetryAfterSeconds(); got != s.seconds {
						t.Errorf("step %d: Retry-After %d s, want %d", i, got, s.seconds)
					}
				}
			}
			if n := l.Len(); n != tc.wantTracked {
				t.Errorf("tracking %d clients, want %d", n, tc.wantTracked)
			}
		})
	}
}

func TestClientKey(t *testing.T) {
	for _, tc := range []struct{ addr, want string }{
		{"198.51.100.7", "198.51.100.7/32"},
		{"::ffff:198.51.100.7", "198.51.100.7/32"},
		{"2001:db8:1:2:3:4:5:6", "2001:db8:1:2::/64"},
		{"2001:db8:1:2:ffff:ffff:ffff:ffff", "2001:db8:1:2::/64"},
		{"fe80::1%eth0", "fe80::/64"},
		{"::1", "::/64"},
	} {
		if got := ClientKey(netip.MustParseAddr(tc.addr)).String(); got != tc.want {
			t.Errorf("ClientKey(%s) = %s, want %s", tc.addr, got, tc.want)
		}
	}
	if k := ClientKey(netip.Addr{}); k.IsValid() {
		t.Errorf("ClientKey(invalid) = %v, want the zero Prefix", k)
	}
}

// TestKeying: addresses in one IPv6 /64 share a bucket; other /64s and
// other IPv4 addresses have their own.
func TestKeying(t *testing.T) {
	for _, tc := range []struct {
		name       string
		first      string // exhausts its bucket
		then       string
		sameBucket bool
	}{
		{"same IPv6 /64", "2001:db8:0:1::1", "2001:db8:0:1:dead:beef:0:2", true},
		{"neighbouring IPv6 /64", "2001:db8:0:1::1", "2001:db8:0:2::1", false},
		{"IPv4 and its mapped form", "198.51.100.7", "::ffff:198.51.100.7", true},
		{"neighbouring IPv4 addresses", "198.51.100.7", "198.51.100.8", false},
		{"IPv4 vs IPv6", "198.51.100.7", "2001:db8::1", false},
	} {
		t.Run(tc.name, func(t *testing.T) {
			l, _ := newLimiter(t, Options{Rate: 1, Burst: 3})
			for range 3 {
				if !l.Allow(key(tc.first)).Allowed {
					t.Fatal("refused within the burst")
				}
			}
			if l.Allow(key(tc.first)).Allowed {
				t.Fatal("allowed past the burst")
			}
			if got := l.Allow(key(tc.then)).Allowed; got == tc.sameBucket {
				t.Errorf("%s after %s exhausted its bucket: allowed=%v", tc.then, tc.first, got)
			}
		})
	}
}

// TestTableIsBounded: however many clients come, the table holds at most
// MaxClients; idle clients make room, active ones are never evicted (their
// bucket would start full again), and newcomers that find no room share the
// overflow bucket.
func TestTableIsBounded(t *testing.T) {
	const max = 4
	l, clk := newLimiter(t, Options{Rate: 1, Burst: 2, MaxClients: max})
	ip := func(i int) netip.Prefix { return key(fmt.Sprintf("10.0.%d.%d", i/256, i%256)) }
	for i := range max {
		// Each takes both tokens: active for the next 2 s.
		l.Allow(ip(i))
		l.Allow(ip(i))
	}
	if n := l.Len(); n != max {
		t.Fatalf("tracking %d, want %d", n, max)
	}
	// A flood of newcomers: all overflow, sharing one bucket of burst 2.
	allowed := 0
	for i := max; i < max+100; i++ {
		d := l.Allow(ip(i))
		if !d.Overflow {
			t.Fatalf("client %d tracked in a full table", i)
		}
		if d.Allowed {
			allowed++
		}
	}
	if allowed != 2 {
		t.Errorf("the overflow bucket let %d requests through, want its burst of 2", allowed)
	}
	if n := l.Len(); n != max {
		t.Fatalf("tracking %d, want %d", n, max)
	}
	// The tracked clients kept their (empty) buckets.
	if l.Allow(ip(0)).Allowed {
		t.Error("an active client was evicted and given a fresh bucket")
	}
	// Once the first clients are idle (bucket refilled) newcomers take
	// their places.
	clk.Advance(2 * time.Second)
	d := l.Allow(ip(1000))
	if d.Overflow || !d.Allowed {
		t.Errorf("newcomer after the table went idle: %+v", d)
	}
	if n := l.Len(); n > max {
		t.Fatalf("tracking %d > %d", n, max)
	}

	// Many more distinct clients than the table holds, over time.
	for i := range 100_000 {
		clk.Advance(time.Millisecond)
		l.Allow(key(fmt.Sprintf("2001:db8:%x:%x::1", i>>16, i&0xffff)))
		if n := l.Len(); n > max {
			t.Fatalf("after %d clients: tracking %d > %d", i, n, max)
		}
	}
}

// TestTableShrinks: after a burst of clients goes quiet, ordinary traffic
// forgets them, so a past flood does not keep its memory.
func TestTableShrinks(t *testing.T) {
	l, clk := newLimiter(t, Options{Rate: 10, Burst: 20, MaxClients: 1000})
	for i := range 500 {
		l.Allow(key(fmt.Sprintf("10.0.%d.%d", i/256, i%256)))
	}
	if n := l.Len(); n != 500 {
		t.Fatalf("tracking %d, want 500", n)
	}
	clk.Advance(2 * time.Second) // burst/rate: every bucket is full again
	for range 1000 {
		l.Allow(key("192.0.2.1"))
	}
	if n := l.Len(); n != 1 {
		t.Errorf("tracking %d clients after the others went quiet, want 1", n)
	}
}

// TestNoticeOncePerInterval: a client refused all the time is reported for
// logging once per NoticeEvery, even if it goes idle and comes back.
func TestNoticeOncePerInterval(t *testing.T) {
	l, clk := newLimiter(t, Options{Rate: 1, Burst: 1, MaxClients: 3, NoticeEvery: time.Minute})
	c := key("198.51.100.7")
	notices := 0
	for range 601 { // 10 minutes and a second, 10 requests a second
		for range 10 {
			if d := l.Allow(c); d.Notice {
				if d.Allowed {
					t.Fatal("notice on an allowed request")
				}
				notices++
			}
		}
		clk.Advance(time.Second)
	}
	if notices != 11 { // at 0 s, 60 s, …, 600 s
		t.Errorf("%d notices in 10 minutes, want 11", notices)
	}
	// Idle for 2 s, so its bucket is full and the client could be
	// forgotten; but its last notice is not a minute old, so newcomers
	// must not take its place.
	clk.Advance(2 * time.Second)
	l.Allow(key("192.0.2.1"))
	l.Allow(key("192.0.2.2"))
	if d := l.Allow(c); !d.Allowed || d.Overflow {
		t.Fatalf("the client after 2 s idle: %+v, want allowed from its own bucket", d)
	}
	if d := l.Allow(c); d.Allowed || d.Notice {
		t.Errorf("the client was forgotten within the minute of its notice: %+v", d)
	}
}

// TestUnknownAddressesShareABucket: requests whose address is unknown are
// limited together rather than not at all.
func TestUnknownAddressesShareABucket(t *testing.T) {
	l, _ := newLimiter(t, Options{Rate: 1, Burst: 2})
	unknown := ClientKey(netip.Addr{})
	l.Allow(unknown)
	l.Allow(unknown)
	if l.Allow(unknown).Allowed {
		t.Error("unknown clients are not limited")
	}
}

func TestRetryAfterSeconds(t *testing.T) {
	for _, tc := range []struct {
		d    time.Duration
		want int
	}{{0, 1}, {time.Nanosecond, 1}, {time.Second, 1}, {time.Second + 1, 2}, {90 * time.Second, 90}, {1 << 62, 1<<31 - 1}} {
		if got := (Decision{RetryAfter: tc.d}).RetryAfterSeconds(); got != tc.want {
			t.Errorf("RetryAfterSeconds(%v) = %d, want %d", tc.d, got, tc.want)
		}
	}
}

// BenchmarkAllow measures the hot path: one client already tracked, and a
// rotating set of clients in a full table.
func BenchmarkAllow(b *testing.B) {
	b.Run("one-client", func(b *testing.B) {
		l, err := New(Options{Rate: 1e9, Burst: 1 << 30})
		if err != nil {
			b.Fatal(err)
		}
		c := key("198.51.100.7")
		b.ReportAllocs()
		for b.Loop() {
			l.Allow(c)
		}
	})
	b.Run("65536-clients", func(b *testing.B) {
		l, err := New(Options{Rate: 10, Burst: 20, MaxClients: DefaultMaxClients})
		if err != nil {
			b.Fatal(err)
		}
		keys := make([]netip.Prefix, DefaultMaxClients)
		for i := range keys {
			keys[i] = key(fmt.Sprintf("2001:db8:%x:%x::1", i>>8, i&0xff))
			l.Allow(keys[i])
		}
		b.ReportAllocs()
		i := 0
		for b.Loop() {
			l.Allow(keys[i&(DefaultMaxClients-1)])
			i++
		}
	})
	b.Run("parallel", func(b *testing.B) {
		l, err := New(Options{Rate: 1e9, Burst: 1 << 30})
		if err != nil {
			b.Fatal(err)
		}
		b.ReportAllocs()
		b.RunParallel(func(pb *testing.PB) {
			c := key("198.51.100.7")
			for pb.Next() {
				l.Allow(c)
			}
		})
	})
}
