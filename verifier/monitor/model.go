package monitor

import (
	"encoding/hex"
	"math"
	"net/netip"
	"strings"
	"time"
)

// Bounds of the per-agent and per-cohort state.
const (
	maxKinds        = 256  // resource kinds remembered per agent
	maxNets         = 256  // source networks remembered per agent
	maxCohortValues = 4096 // kinds or networks remembered per cohort
	maxRecent       = 64   // timestamps kept per counting detector
	maxFindings     = 16   // findings kept per agent for the next alert
	maxSkipWindows  = 200  // idle windows folded into the baseline one by one
)

// ewma is an exponentially weighted mean and variance (West, 1979).
type ewma struct {
	mean, variance float64
	n              int
}

func (e *ewma) update(x, alpha float64) {
	if e.n == 0 {
		e.mean, e.variance, e.n = x, 0, 1
		return
	}
	d := x - e.mean
	inc := alpha * d
	e.mean += inc
	e.variance = (1 - alpha) * (e.variance + d*inc)
	e.n++
}

// good is what a good (issued) attestation measured.
type good struct {
	at          time.Time
	measurement string
	image       string
}

// agentState is what the monitor knows of one agent instance (or of a
// machine, for signals without an agent).
type agentState struct {
	key      string
	cohort   string
	ak       []byte
	lastSeen time.Time

	// request rate
	winStart   time.Time
	winCount   int
	winFlagged bool
	rate       ewma

	// deny ratio: the last decisions, true = deny
	decisions []bool
	decIdx    int
	decN      int

	// counting detectors
	intent, revoked, pop []time.Time

	// novelty
	events int
	kinds  map[string]struct{}
	nets   map[string]struct{}

	// attestation
	lastGood *good
	images   map[string]struct{}

	// risk
	risk      float64
	riskAt    time.Time
	fired     map[string]time.Time
	findings  []Finding
	alerted   Severity
	alertedAt time.Time
}

func newAgentState(key string) *agentState {
	return &agentState{key: key, kinds: map[string]struct{}{}, nets: map[string]struct{}{},
		images: map[string]struct{}{}, fired: map[string]time.Time{}}
}

// cohortState is what the agents of one image share.
type cohortState struct {
	members map[string]*agentState
	kinds   map[string]struct{}
	nets    map[string]struct{}
	events  int
	hours   [24]int
	first   time.Time

	statsAt             time.Time
	statsMean, statsVar float64
	statsN              int
}

func newCohortState() *cohortState {
	return &cohortState{members: map[string]*agentState{}, kinds: map[string]struct{}{}, nets: map[string]struct{}{}}
}

// baseline returns the cohort's rate baseline without the agent skip: the
// mean of the warmed members' means and the pooled variance (mean of the
// variances plus the variance of the means). Cached for half a window.
func (c *cohortState) baseline(skip *agentState, rc *RateConfig, now time.Time) (mean, variance float64, n int) {
	if now.Sub(c.statsAt) < rc.Window/2 && !c.statsAt.IsZero() {
		mean, variance, n = c.statsMean, c.statsVar, c.statsN
	} else {
		var sum, sumSq, sumVar float64
		for _, m := range c.members {
			if m.rate.n < rc.WarmupWindows {
				continue
			}
			sum += m.rate.mean
			sumSq += m.rate.mean * m.rate.mean
			sumVar += m.rate.variance
			n++
		}
		if n > 0 {
			mean = sum / float64(n)
			variance = sumVar/float64(n) + math.Max(0, sumSq/float64(n)-mean*mean)
		}
		c.statsAt, c.statsMean, c.statsVar, c.statsN = now, mean, variance, n
	}
	// Leave the agent itself out of its cohort's baseline.
	if skip.rate.n >= rc.WarmupWindows && n > 0 {
		if n == 1 {
			return 0, 0, 0
		}
		mean = (mean*float64(n) - skip.rate.mean) / float64(n-1)
		n--
	}
	return mean, variance, n
}

// limit is the count above which a window is anomalous for a baseline.
func limit(mean, variance, z float64) float64 {
	sd := math.Max(math.Sqrt(math.Max(variance, 0)), math.Max(math.Sqrt(mean), 1))
	return mean + z*sd
}

// advanceWindow moves the agent's rate window to t, folding the windows that
// ended into its baseline. A window that was flagged does not train it.
func (a *agentState) advanceWindow(t time.Time, rc *RateConfig) {
	if a.winStart.IsZero() {
		a.winStart = t
		return
	}
	if t.Sub(a.winStart) < rc.Window {
		return
	}
	if !a.winFlagged {
		a.rate.update(float64(a.winCount), rc.Alpha)
	}
	n := int(t.Sub(a.winStart) / rc.Window)
	for i := 1; i < n && i <= maxSkipWindows; i++ {
		a.rate.update(0, rc.Alpha)
	}
	if n > maxSkipWindows {
		a.winStart = t
	} else {
		a.winStart = a.winStart.Add(time.Duration(n) * rc.Window)
	}
	a.winCount, a.winFlagged = 0, false
}

// recordDecision adds a decision to the ring and returns denies and total.
func (a *agentState) recordDecision(deny bool, last int) (int, int) {
	if len(a.decisions) != last {
		a.decisions, a.decIdx, a.decN = make([]bool, last), 0, 0
	}
	a.decisions[a.decIdx] = deny
	a.decIdx = (a.decIdx + 1) % last
	if a.decN < last {
		a.decN++
	}
	denies := 0
	for i := 0; i < a.decN; i++ {
		if a.decisions[i] {
			denies++
		}
	}
	return denies, a.decN
}

// count appends t to times, drops those older than within, and returns the
// new slice.
func count(times []time.Time, t time.Time, within time.Duration) []time.Time {
	keep := times[:0]
	for _, x := range times {
		if t.Sub(x) < within {
			keep = append(keep, x)
		}
	}
	keep = append(keep, t)
	if len(keep) > maxRecent {
		keep = keep[len(keep)-maxRecent:]
	}
	return keep
}

// addRisk decays the agent's risk to t and adds score.
func (a *agentState) addRisk(score float64, t time.Time, halfLife time.Duration) {
	a.decayRisk(t, halfLife)
	a.risk += score
}

func (a *agentState) decayRisk(t time.Time, halfLife time.Duration) {
	if !a.riskAt.IsZero() && t.After(a.riskAt) {
		a.risk *= math.Exp2(-t.Sub(a.riskAt).Seconds() / halfLife.Seconds())
	}
	if t.After(a.riskAt) {
		a.riskAt = t
	}
}

// mayFire reports whether rule may score the agent at t (once per
// cooldown), and records that it did.
func (a *agentState) mayFire(rule string, t time.Time, cooldown time.Duration) bool {
	if last, ok := a.fired[rule]; ok && t.Sub(last) < cooldown {
		return false
	}
	a.fired[rule] = t
	return true
}

// resourceKind is the kind of a resource: the prefix before ':' (as in
// "doc:customer-A/report-7"), else the first path segment.
func resourceKind(r string) string {
	if i := strings.IndexAny(r, ":/"); i > 0 && r[i] == ':' {
		return r[:i]
	}
	r = strings.TrimLeft(r, "/")
	if i := strings.IndexByte(r, '/'); i >= 0 {
		r = r[:i]
	}
	if len(r) > 64 {
		r = r[:64]
	}
	return r
}

// network is the source network of ip at the configured prefix lengths.
func network(ip string, n *NetworkConfig) string {
	a, err := netip.ParseAddr(ip)
	if err != nil {
		return ""
	}
	a = a.Unmap()
	bits := n.IPv6Prefix
	if a.Is4() {
		bits = n.IPv4Prefix
	}
	p, err := a.Prefix(bits)
	if err != nil {
		return ""
	}
	return p.String()
}

// addBounded adds v to set unless the set is at its bound.
func addBounded(set map[string]struct{}, v string, max int) {
	if len(set) < max {
		set[v] = struct{}{}
	}
}

func hexShort(b []byte) string {
	if len(b) > 8 {
		b = b[:8]
	}
	return hex.EncodeToString(b)
}
