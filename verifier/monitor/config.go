package monitor

import (
	"bytes"
	"crypto/sha256"
	"crypto/subtle"
	_ "embed"
	"encoding/hex"
	"errors"
	"fmt"
	"io"
	"os"
	"path"
	"strings"
	"time"

	"go.yaml.in/yaml/v3"
)

// DefaultConfigYAML is the built-in configuration (default.yaml).
//
//go:embed default.yaml
var DefaultConfigYAML []byte

// MaxConfigSize bounds a configuration file.
const MaxConfigSize = 1 << 20

// Config is the monitor's detection and response configuration.
type Config struct {
	Detectors  Detectors             `yaml:"detectors"`
	Scoring    Scoring               `yaml:"scoring"`
	Severities map[Severity]float64  `yaml:"severities"`
	Response   map[Severity][]Action `yaml:"response"`
	Intents    map[string][]string   `yaml:"intents"`
	Reporters  []Reporter            `yaml:"reporters"`
}

// Detectors configure each detector.
type Detectors struct {
	Rate            RateConfig            `yaml:"rate"`
	DenyRatio       DenyRatioConfig       `yaml:"deny_ratio"`
	OutOfIntent     CountConfig           `yaml:"out_of_intent"`
	NewResourceKind NoveltyConfig         `yaml:"new_resource_kind"`
	NewNetwork      NetworkConfig         `yaml:"new_network"`
	OffHours        OffHoursConfig        `yaml:"off_hours"`
	PoPFailure      PoPFailureConfig      `yaml:"pop_failure"`
	ReattestFailure ReattestFailureConfig `yaml:"reattest_failure"`
	RevokedUse      CountConfig           `yaml:"revoked_use"`
}

// RateConfig configures the rate detector.
type RateConfig struct {
	Enabled         bool          `yaml:"enabled"`
	Window          time.Duration `yaml:"window"`
	Alpha           float64       `yaml:"alpha"`
	WarmupWindows   int           `yaml:"warmup_windows"`
	CohortMinAgents int           `yaml:"cohort_min_agents"`
	Z               float64       `yaml:"z"`
	MinRatio        float64       `yaml:"min_ratio"`
	MinEvents       int           `yaml:"min_events"`
	BurstMax        int           `yaml:"burst_max"`
	Score           float64       `yaml:"score"`
}

// DenyRatioConfig configures the deny-ratio detector.
type DenyRatioConfig struct {
	Enabled   bool    `yaml:"enabled"`
	Last      int     `yaml:"last"`
	MinDenies int     `yaml:"min_denies"`
	Ratio     float64 `yaml:"ratio"`
	Score     float64 `yaml:"score"`
}

// CountConfig is a detector that fires at Threshold events Within a time.
type CountConfig struct {
	Enabled   bool          `yaml:"enabled"`
	Threshold int           `yaml:"threshold"`
	Within    time.Duration `yaml:"within"`
	Score     float64       `yaml:"score"`
}

// NoveltyConfig is a detector of first-time values after a warm-up.
type NoveltyConfig struct {
	Enabled      bool    `yaml:"enabled"`
	WarmupEvents int     `yaml:"warmup_events"`
	Score        float64 `yaml:"score"`
}

// NetworkConfig configures the new-source-network detector.
type NetworkConfig struct {
	Enabled      bool    `yaml:"enabled"`
	WarmupEvents int     `yaml:"warmup_events"`
	IPv4Prefix   int     `yaml:"ipv4_prefix"`
	IPv6Prefix   int     `yaml:"ipv6_prefix"`
	Score        float64 `yaml:"score"`
}

// OffHoursConfig configures the off-hours detector.
type OffHoursConfig struct {
	Enabled      bool          `yaml:"enabled"`
	LearnFor     time.Duration `yaml:"learn_for"`
	MinEvents    int           `yaml:"min_events"`
	RareFraction float64       `yaml:"rare_fraction"`
	Score        float64       `yaml:"score"`
}

// PoPFailureConfig configures the failed-proof detector.
type PoPFailureConfig struct {
	Enabled        bool          `yaml:"enabled"`
	TheftReasons   []string      `yaml:"theft_reasons"`
	TheftScore     float64       `yaml:"theft_score"`
	OtherThreshold int           `yaml:"other_threshold"`
	Within         time.Duration `yaml:"within"`
	OtherScore     float64       `yaml:"other_score"`
}

// ReattestFailureConfig configures the re-attestation failure detector.
type ReattestFailureConfig struct {
	Enabled         bool    `yaml:"enabled"`
	ChangedScore    float64 `yaml:"changed_score"`
	FailedScore     float64 `yaml:"failed_score"`
	QuarantineScope string  `yaml:"quarantine_scope"`
}

// Scoring configures risk accumulation.
type Scoring struct {
	HalfLife   time.Duration `yaml:"half_life"`
	Cooldown   time.Duration `yaml:"cooldown"`
	IdleForget time.Duration `yaml:"idle_forget"`
	MaxAgents  int           `yaml:"max_agents"`
}

// Reporter is a relying party allowed to POST /v1/signals.
type Reporter struct {
	Audience    string `yaml:"audience"`
	TokenSHA256 string `yaml:"token_sha256"`
}

// Severity of an alert.
type Severity string

// Severities, lowest first.
const (
	SeverityLow      Severity = "low"
	SeverityMedium   Severity = "medium"
	SeverityHigh     Severity = "high"
	SeverityCritical Severity = "critical"
)

// Severities lists the severities, lowest first.
var Severities = []Severity{SeverityLow, SeverityMedium, SeverityHigh, SeverityCritical}

func (s Severity) rank() int {
	for i, v := range Severities {
		if v == s {
			return i + 1
		}
	}
	return 0
}

// Action is one automated response.
type Action string

// Actions.
const (
	ActionLog             Action = "log"
	ActionWebhook         Action = "webhook"
	ActionReattest        Action = "require-reattestation"
	ActionRevoke          Action = "revoke"
	ActionQuarantine      Action = "quarantine"
	ActionBlockDelegation Action = "block-delegation"
)

var knownActions = map[Action]bool{ActionLog: true, ActionWebhook: true, ActionReattest: true, ActionRevoke: true,
	ActionQuarantine: true, ActionBlockDelegation: true}

// DefaultConfig returns the built-in configuration.
func DefaultConfig() *Config {
	c, err := parseConfig(DefaultConfigYAML, nil)
	if err != nil {
		panic("monitor: built-in configuration: " + err.Error())
	}
	return c
}

// ParseConfig reads a configuration over the defaults: keys the YAML does
// not name keep their default values. Unknown keys are errors.
func ParseConfig(b []byte) (*Config, error) {
	if len(b) > MaxConfigSize {
		return nil, fmt.Errorf("monitor configuration is larger than %d bytes", MaxConfigSize)
	}
	return parseConfig(b, DefaultConfig())
}

// LoadConfig reads a configuration file over the defaults.
func LoadConfig(file string) (*Config, error) {
	f, err := os.Open(file)
	if err != nil {
		return nil, fmt.Errorf("monitor configuration: %w", err)
	}
	defer f.Close()
	b, err := io.ReadAll(io.LimitReader(f, MaxConfigSize+1))
	if err != nil {
		return nil, fmt.Errorf("monitor configuration %s: %w", file, err)
	}
	c, err := ParseConfig(b)
	if err != nil {
		return nil, fmt.Errorf("monitor configuration %s: %w", file, err)
	}
	return c, nil
}

func parseConfig(b []byte, base *Config) (*Config, error) {
	c := base
	if c == nil {
		c = &Config{}
	}
	dec := yaml.NewDecoder(bytes.NewReader(b))
	dec.KnownFields(true)
	if err := dec.Decode(c); err != nil && !errors.Is(err, io.EOF) {
		return nil, err
	}
	if err := c.Validate(); err != nil {
		return nil, err
	}
	return c, nil
}

// Validate checks that the configuration makes sense.
func (c *Config) Validate() error {
	var errs []error
	bad := func(format string, args ...any) { errs = append(errs, fmt.Errorf(format, args...)) }
	r := c.Detectors.Rate
	if r.Window < 10*time.Millisecond || r.Alpha <= 0 || r.Alpha > 1 || r.Z <= 0 || r.MinRatio < 1 || r.MinEvents < 1 || r.WarmupWindows < 1 || r.CohortMinAgents < 1 {
		bad("detectors.rate: window ≥ 10ms, 0 < alpha ≤ 1, z > 0, min_ratio ≥ 1, min_events ≥ 1, warmup_windows ≥ 1 and cohort_min_agents ≥ 1 are required")
	}
	if d := c.Detectors.DenyRatio; d.Last < 1 || d.MinDenies < 1 || d.MinDenies > d.Last || d.Ratio <= 0 || d.Ratio > 1 {
		bad("detectors.deny_ratio: need 1 ≤ min_denies ≤ last and 0 < ratio ≤ 1")
	}
	for name, cc := range map[string]CountConfig{"out_of_intent": c.Detectors.OutOfIntent, "revoked_use": c.Detectors.RevokedUse} {
		if cc.Threshold < 1 || cc.Within <= 0 {
			bad("detectors.%s: threshold ≥ 1 and within > 0 are required", name)
		}
	}
	if n := c.Detectors.NewNetwork; n.IPv4Prefix < 8 || n.IPv4Prefix > 32 || n.IPv6Prefix < 16 || n.IPv6Prefix > 128 {
		bad("detectors.new_network: ipv4_prefix must be 8..32 and ipv6_prefix 16..128")
	}
	if o := c.Detectors.OffHours; o.RareFraction < 0 || o.RareFraction >= 1 || o.MinEvents < 1 {
		bad("detectors.off_hours: 0 ≤ rare_fraction < 1 and min_events ≥ 1 are required")
	}
	if p := c.Detectors.PoPFailure; p.OtherThreshold < 1 || p.Within <= 0 {
		bad("detectors.pop_failure: other_threshold ≥ 1 and within > 0 are required")
	}
	switch c.Detectors.ReattestFailure.QuarantineScope {
	case "machine", "workload", "agent":
	default:
		bad("detectors.reattest_failure.quarantine_scope must be machine, workload or agent")
	}
	if c.Scoring.HalfLife <= 0 || c.Scoring.Cooldown < 0 || c.Scoring.IdleForget <= 0 || c.Scoring.MaxAgents < 1 {
		bad("scoring: half_life > 0, cooldown ≥ 0, idle_forget > 0 and max_agents ≥ 1 are required")
	}
	prev := 0.0
	for _, s := range Severities {
		v, ok := c.Severities[s]
		if !ok || v <= prev {
			bad("severities: %s must be set and above the severity below it", s)
		}
		prev = v
	}
	for s, acts := range c.Response {
		if s.rank() == 0 {
			bad("response: unknown severity %q", s)
		}
		for _, a := range acts {
			if !knownActions[a] {
				bad("response.%s: unknown action %q", s, a)
			}
		}
	}
	for intent, pats := range c.Intents {
		for _, p := range pats {
			if _, err := path.Match(strings.TrimSuffix(p, "*"), ""); err != nil {
				bad("intents.%s: pattern %q: %v", intent, p, err)
			}
		}
	}
	for i, r := range c.Reporters {
		if b, err := hex.DecodeString(r.TokenSHA256); err != nil || len(b) != sha256.Size || r.Audience == "" {
			bad("reporters[%d]: audience and token_sha256 (64 hex digits) are required", i)
		}
	}
	return errors.Join(errs...)
}

// severityOf returns the severity of a risk score, or "" below low.
func (c *Config) severityOf(score float64) Severity {
	var out Severity
	for _, s := range Severities {
		if score >= c.Severities[s] {
			out = s
		}
	}
	return out
}

// ReporterAudience returns the audience a reporter token may report on, or
// "" when no reporter has this token.
func (c *Config) ReporterAudience(token string) string {
	sum := sha256.Sum256([]byte(token))
	for _, r := range c.Reporters {
		want, err := hex.DecodeString(r.TokenSHA256)
		if err == nil && subtle.ConstantTimeCompare(want, sum[:]) == 1 {
			return r.Audience
		}
	}
	return ""
}

// declared returns the declared action patterns of an intent, or nil.
func (c *Config) declared(intent string) []string {
	if intent == "" {
		return nil
	}
	return c.Intents[intent]
}

// matchAction reports whether action matches a declared pattern: exact, a
// path.Match glob, or a prefix when the pattern ends with '*'.
func matchAction(pattern, action string) bool {
	if pattern == action {
		return true
	}
	if ok, _ := path.Match(pattern, action); ok {
		return true
	}
	if p, ok := strings.CutSuffix(pattern, "*"); ok {
		return strings.HasPrefix(action, p)
	}
	return false
}
