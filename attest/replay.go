package attest

import (
	"hash/maphash"
	"sync"
	"time"
)

// DefaultPoPCacheSize is the default capacity of a [PoPVerifier]'s replay
// cache: with the default 35 s retention it sustains about 7,500 accepted
// proofs per second per process, in about 20 MiB when full.
const DefaultPoPCacheSize = 1 << 18

// replayCache remembers proof ids until they can no longer be accepted.
//
// It is split into shards, each with its own mutex, map and FIFO of
// (id, expiry). Entries are appended in time order, so expired entries are
// dropped from the front of the FIFO in amortised O(1) on each insertion
// (an expiry queue rather than a timer wheel: one retention for every entry
// makes the queue already sorted). A shard is chosen by a keyed hash
// (hash/maphash, random seed per process), so a client cannot aim its ids at
// one shard.
//
// The cache is bounded and fails closed: when a shard is full of unexpired
// entries, add refuses (ReasonPoPCacheFull) instead of evicting. Evicting
// would let a proof be replayed within its window once enough other proofs
// pushed it out; refusing turns a flood into unavailability, which is
// visible, rather than into silent replay. Size the cache for the peak rate
// × retention, and note that only proofs with a valid signature by a valid
// credential's key are ever recorded.
type replayCache struct {
	seed     maphash.Seed
	shards   []replayShard
	mask     uint64
	perShard int
}

type replayShard struct {
	mu    sync.Mutex
	seen  map[[PoPIDSize]byte]int64 // id → expiry, Unix ns
	queue []replayEntry             // insertion order; queue[head:] are live or not yet swept
	head  int
	_     [16]byte // 64 bytes: neighbouring shards do not share a cache line
}

type replayEntry struct {
	id  [PoPIDSize]byte
	exp int64
}

func newReplayCache(capacity int) *replayCache {
	if capacity <= 0 {
		capacity = DefaultPoPCacheSize
	}
	n := 1
	for n < 16 && capacity/(n*2) >= 1024 {
		n *= 2
	}
	c := &replayCache{
		seed:     maphash.MakeSeed(),
		shards:   make([]replayShard, n),
		mask:     uint64(n - 1),
		perShard: (capacity + n - 1) / n,
	}
	for i := range c.shards {
		c.shards[i].seen = make(map[[PoPIDSize]byte]int64)
	}
	return c
}

// add records id as used until now+ttl. It returns ReasonPoPReplayed when
// id is already recorded and unexpired, ReasonPoPCacheFull when the shard
// holds perShard unexpired entries, and "" when id was recorded.
func (c *replayCache) add(id [PoPIDSize]byte, now time.Time, ttl time.Duration) Reason {
	s := &c.shards[maphash.Bytes(c.seed, id[:])&c.mask]
	nowNs := now.UnixNano()
	s.mu.Lock()
	defer s.mu.Unlock()
	s.sweep(nowNs)
	if exp, ok := s.seen[id]; ok && exp >= nowNs {
		return ReasonPoPReplayed
	}
	if len(s.queue)-s.head >= c.perShard {
		return ReasonPoPCacheFull
	}
	exp := now.Add(ttl).UnixNano()
	s.seen[id] = exp
	s.queue = append(s.queue, replayEntry{id: id, exp: exp})
	return ""
}

// sweep drops expired entries from the front of the queue. If the clock
// went backwards, entries behind a later expiry wait a little longer: that
// only ever keeps ids longer than needed.
func (s *replayShard) sweep(nowNs int64) {
	for s.head < len(s.queue) && s.queue[s.head].exp < nowNs {
		e := s.queue[s.head]
		if s.seen[e.id] == e.exp {
			delete(s.seen, e.id)
		}
		s.head++
	}
	switch {
	case s.head == len(s.queue):
		s.queue, s.head = s.queue[:0], 0
	case s.head >= 1024 && s.head >= len(s.queue)/2:
		n := copy(s.queue, s.queue[s.head:])
		s.queue, s.head = s.queue[:n], 0
	}
}

// len returns the number of entries not yet swept (for tests and metrics).
func (c *replayCache) len() int {
	n := 0
	for i := range c.shards {
		s := &c.shards[i]
		s.mu.Lock()
		n += len(s.queue) - s.head
		s.mu.Unlock()
	}
	return n
}
