package monitor

import (
	"crypto/sha256"
	"encoding/hex"
	"strings"
	"testing"
	"time"
)

func TestConfig(t *testing.T) {
	def := DefaultConfig()
	if def.Detectors.Rate.Window != 10*time.Second || def.Severities[SeverityCritical] != 9 || len(def.Response[SeverityCritical]) == 0 {
		t.Fatalf("defaults not loaded: %+v", def)
	}
	tok := sha256.Sum256([]byte("secret-token"))
	tests := []struct {
		name  string
		yaml  string
		check func(*Config) bool
		err   string
	}{
		{"empty keeps defaults", "", func(c *Config) bool { return c.Detectors.Rate.Z == 6 }, ""},
		{"override one key", "detectors:\n  rate:\n    window: 250ms\n", func(c *Config) bool {
			return c.Detectors.Rate.Window == 250*time.Millisecond && c.Detectors.Rate.Z == 6 && c.Detectors.DenyRatio.Last == 20
		}, ""},
		{"response for one severity", "response:\n  high: [log]\n", func(c *Config) bool {
			return len(c.Response[SeverityHigh]) == 1 && len(c.Response[SeverityCritical]) == 5
		}, ""},
		{"intents and reporters", "intents:\n  read-docs: [\"GET /documents/*\"]\nreporters:\n  - audience: https://rp\n    token_sha256: " + hex.EncodeToString(tok[:]) + "\n",
			func(c *Config) bool {
				return c.ReporterAudience("secret-token") == "https://rp" && c.ReporterAudience("other") == "" &&
					matchAction(c.Intents["read-docs"][0], "GET /documents/a/b")
			}, ""},
		{"unknown key", "detectors:\n  rate:\n    windw: 1s\n", nil, "windw"},
		{"unknown action", "response:\n  low: [explode]\n", nil, "unknown action"},
		{"severities out of order", "severities:\n  high: 20\n", nil, "severities"},
		{"bad window", "detectors:\n  rate:\n    window: 1ms\n", nil, "detectors.rate"},
		{"bad reporter", "reporters:\n  - audience: x\n    token_sha256: abc\n", nil, "reporters[0]"},
		{"not yaml", "{{{", nil, "yaml"},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			c, err := ParseConfig([]byte(tc.yaml))
			if tc.err != "" {
				if err == nil || !strings.Contains(err.Error(), tc.err) {
					t.Fatalf("err = %v, want one mentioning %q", err, tc.err)
				}
				return
			}
			if err != nil {
				t.Fatal(err)
			}
			if !tc.check(c) {
				t.Errorf("configuration not as expected: %+v", c)
			}
		})
	}
}

func TestMatchActionAndKinds(t *testing.T) {
	for _, tc := range []struct {
		pattern, action string
		want            bool
	}{
		{"read", "read", true}, {"read", "write", false}, {"GET /documents/*", "GET /documents/a/b", true},
		{"GET /documents/*", "DELETE /documents/a", false}, {"doc:*", "doc:x", true}, {"r?ad", "read", true},
	} {
		if got := matchAction(tc.pattern, tc.action); got != tc.want {
			t.Errorf("matchAction(%q, %q) = %v", tc.pattern, tc.action, got)
		}
	}
	for in, want := range map[string]string{"doc:customer-A/r7": "doc", "/documents/a/b": "documents", "plain": "plain", "/a/b:c": "a"} {
		if got := resourceKind(in); got != want {
			t.Errorf("resourceKind(%q) = %q, want %q", in, got, want)
		}
	}
}

// FuzzParseConfig: the configuration parser is bounded and never panics;
// whatever it accepts validates.
func FuzzParseConfig(f *testing.F) {
	f.Add(DefaultConfigYAML)
	f.Add([]byte("detectors:\n  rate:\n    window: 250ms\n"))
	f.Add([]byte("response:\n  critical: [revoke]\n"))
	f.Fuzz(func(t *testing.T, b []byte) {
		c, err := ParseConfig(b)
		if err == nil {
			if err := c.Validate(); err != nil {
				t.Fatalf("accepted a configuration that does not validate: %v", err)
			}
		}
	})
}
