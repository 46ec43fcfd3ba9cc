// Package ratelimit keeps one token bucket (golang.org/x/time/rate) per
// client network, in a table of bounded size, and finds the client address
// of a request behind trusted proxies. The verifier uses it to refuse floods
// of its unauthenticated endpoints from one source.
//
// A client is an IPv4 address (/32) or an IPv6 /64: one host normally holds a
// whole /64, so keying by the full IPv6 address would give it 2^64 buckets.
//
// The table never holds more than Options.MaxClients clients. A client whose
// bucket has been idle long enough to be full again is forgotten when room
// is needed (nothing is lost: a full bucket is what a new client gets). When
// the table is full of clients that are all still active — a flood from more
// addresses than the table holds — newcomers share one overflow bucket with
// the same rate, rather than evicting active clients (which would hand each
// flooding address a fresh burst) or growing without bound. The hot path
// takes one mutex, allocates nothing once the table has reached its working
// size, and needs no background goroutine.
package ratelimit

import (
	"errors"
	"fmt"
	"math"
	"net/netip"
	"sync"
	"time"

	"golang.org/x/time/rate"
)

// DefaultMaxClients bounds the table when Options.MaxClients is zero.
const DefaultMaxClients = 65536

// DefaultNoticeEvery is how often at most a Decision asks to log the
// refusals of one client, when Options.NoticeEvery is zero.
const DefaultNoticeEvery = time.Minute

// Options configure a Limiter.
type Options struct {
	// Rate is the sustained number of requests per second one client may
	// make; it must be positive.
	Rate float64
	// Burst is how many requests a client may make at once (the bucket's
	// size); at least 1.
	Burst int
	// MaxClients bounds the clients tracked at once (DefaultMaxClients when
	// zero).
	MaxClients int
	// NoticeEvery is the shortest interval between two Decisions that ask
	// to log the refusals of the same client (DefaultNoticeEvery when zero).
	NoticeEvery time.Duration
	// Now returns the current time; time.Now when nil. Tests inject a clock.
	Now func() time.Time
}

// Decision is the outcome of Limiter.Allow.
type Decision struct {
	// Allowed is true when the request may go ahead (a token was taken).
	Allowed bool
	// RetryAfter is, for a refused request, how long until the client's
	// bucket holds a token again.
	RetryAfter time.Duration
	// Notice is true on the first refusal of this client (or of the
	// overflow bucket) within Options.NoticeEvery: the caller logs it, and
	// stays quiet about the others.
	Notice bool
	// Overflow is true when the client was charged to the shared overflow
	// bucket because the table was full of active clients.
	Overflow bool
}

// RetryAfterSeconds is RetryAfter in whole seconds, rounded up, at least 1:
// the value of an HTTP Retry-After header.
func (d Decision) RetryAfterSeconds() int {
	s := math.Ceil(d.RetryAfter.Seconds())
	if s < 1 {
		return 1
	}
	if s > math.MaxInt32 {
		return math.MaxInt32
	}
	return int(s)
}

// entry is one client's bucket, linked into the table's recency list.
type entry struct {
	key        netip.Prefix
	lim        *rate.Limiter
	lastSeen   time.Time
	lastNotice time.Time // zero: never noticed
	prev, next *entry    // prev towards the most recently seen
}

// Limiter is a table of per-client token buckets. It is safe for concurrent
// use.
type Limiter struct {
	opts Options
	// idleAfter is how long a bucket takes to refill from empty: a client
	// not seen for that long has a full bucket and can be forgotten.
	idleAfter time.Duration

	mu       sync.Mutex
	clients  map[netip.Prefix]*entry
	head     *entry // most recently seen
	tail     *entry // least recently seen
	overflow entry
}

// New returns a Limiter. It refuses a rate or burst that would refuse every
// request (use no Limiter to disable limiting).
func New(o Options) (*Limiter, error) {
	if !(o.Rate > 0) || math.IsInf(o.Rate, 0) {
		return nil, fmt.Errorf("ratelimit: rate %v per second is not a positive number", o.Rate)
	}
	if o.Burst < 1 {
		return nil, fmt.Errorf("ratelimit: burst %d is less than 1", o.Burst)
	}
	if o.MaxClients < 0 {
		return nil, errors.New("ratelimit: negative MaxClients")
	}
	if o.MaxClients == 0 {
		o.MaxClients = DefaultMaxClients
	}
	if o.NoticeEvery <= 0 {
		o.NoticeEvery = DefaultNoticeEvery
	}
	if o.Now == nil {
		o.Now = time.Now
	}
	l := &Limiter{
		opts:      o,
		idleAfter: time.Duration(math.Ceil(float64(o.Burst) / o.Rate * float64(time.Second))),
		clients:   make(map[netip.Prefix]*entry),
	}
	l.overflow.lim = rate.NewLimiter(rate.Limit(o.Rate), o.Burst)
	return l, nil
}

// Rate, Burst and MaxClients return the limits the Limiter enforces.
func (l *Limiter) Rate() float64   { return l.opts.Rate }
func (l *Limiter) Burst() int      { return l.opts.Burst }
func (l *Limiter) MaxClients() int { return l.opts.MaxClients }

// Len returns the number of clients tracked.
func (l *Limiter) Len() int {
	l.mu.Lock()
	defer l.mu.Unlock()
	return len(l.clients)
}

// evictScan bounds the entries one Allow examines for eviction, so that a
// table full of active clients costs O(1) per request.
const evictScan = 4

// Allow takes a token from client's bucket if it has one. client is a key
// from ClientKey; the zero Prefix (an unknown address) is a client like any
// other.
func (l *Limiter) Allow(client netip.Prefix) Decision {
	now := l.opts.Now()
	l.mu.Lock()
	defer l.mu.Unlock()
	e := l.clients[client]
	if e != nil {
		l.moveToFront(e)
	} else {
		e = l.admit(client, now)
	}
	e.lastSeen = now
	// Forget one client that went quiet, so that the table shrinks back
	// after a flood instead of keeping its high-water mark.
	l.evictIdle(now)
	d := Decision{Overflow: e == &l.overflow}
	if e.lim.AllowN(now, 1) {
		d.Allowed = true
		return d
	}
	// Refused: the bucket holds less than one token; it refills at Rate.
	missing := 1 - e.lim.TokensAt(now)
	d.RetryAfter = time.Duration(math.Ceil(missing / l.opts.Rate * float64(time.Second)))
	if e.lastNotice.IsZero() || now.Sub(e.lastNotice) >= l.opts.NoticeEvery {
		e.lastNotice = now
		d.Notice = true
	}
	return d
}

// admit returns the entry of a client the table does not hold: the least
// recently seen one reused if it is idle (its bucket is full again, as a new
// one would be), else a new one while there is room, else the overflow
// bucket. l.mu is held.
func (l *Limiter) admit(client netip.Prefix, now time.Time) *entry {
	e := l.evictIdle(now)
	switch {
	case e != nil:
		e.key, e.lastNotice = client, time.Time{}
	case len(l.clients) < l.opts.MaxClients:
		e = &entry{key: client, lim: rate.NewLimiter(rate.Limit(l.opts.Rate), l.opts.Burst)}
	default:
		return &l.overflow
	}
	l.clients[client] = e
	l.pushFront(e)
	return e
}

// evictIdle removes and returns an idle entry from the recency list's tail,
// looking at no more than evictScan entries. An entry that is not idle only
// because it was noticed within NoticeEvery is moved to the front (so that
// the next scan looks past it); nil when none is idle. l.mu is held.
func (l *Limiter) evictIdle(now time.Time) *entry {
	for range evictScan {
		e := l.tail
		if e == nil || now.Sub(e.lastSeen) < l.idleAfter {
			// The least recently seen client is still refilling, so is
			// every other one.
			return nil
		}
		if !e.lastNotice.IsZero() && now.Sub(e.lastNotice) < l.opts.NoticeEvery {
			// Keep it, to log its refusals no more than once per
			// NoticeEvery.
			l.moveToFront(e)
			continue
		}
		l.unlink(e)
		delete(l.clients, e.key)
		return e
	}
	return nil
}

func (l *Limiter) pushFront(e *entry) {
	e.prev, e.next = nil, l.head
	if l.head != nil {
		l.head.prev = e
	}
	l.head = e
	if l.tail == nil {
		l.tail = e
	}
}

func (l *Limiter) unlink(e *entry) {
	if e.prev != nil {
		e.prev.next = e.next
	} else {
		l.head = e.next
	}
	if e.next != nil {
		e.next.prev = e.prev
	} else {
		l.tail = e.prev
	}
	e.prev, e.next = nil, nil
}

func (l *Limiter) moveToFront(e *entry) {
	if l.head == e {
		return
	}
	l.unlink(e)
	l.pushFront(e)
}
