package main

import (
	"bytes"
	"log/slog"
	"net/netip"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"testing"

	"github.com/vouch-dev/vouch/internal/cliconf"
	"github.com/vouch-dev/vouch/verifier"
)

func TestRateLimitFlags(t *testing.T) {
	defaults := rateFlags{attest: 10, attestBurst: 20, read: 100, readBurst: 200, maxClients: 65536}
	rl, err := rateLimits(defaults, slog.New(slog.DiscardHandler))
	if err != nil {
		t.Fatal(err)
	}
	if rl.Attest != (verifier.RateLimit{PerSecond: 10, Burst: 20}) || rl.Read != (verifier.RateLimit{PerSecond: 100, Burst: 200}) || rl.Decide.PerSecond != 0 {
		t.Errorf("limits %+v", rl)
	}
	none := defaults
	none.maxClients = 0
	if _, err := rateLimits(none, slog.New(slog.DiscardHandler)); err == nil || !strings.Contains(err.Error(), "--rate-max-clients") {
		t.Errorf("no client tracked: %v", err)
	}
}

func TestTrustedProxiesFlag(t *testing.T) {
	for _, tc := range []struct {
		name    string
		list    []string
		proxies []string // want, as prefixes
		err     string
		warn    string
	}{
		{name: "default: no proxy trusted"},
		{name: "CIDRs and bare addresses", list: []string{"10.0.0.0/8", " 192.0.2.7 ", "2001:db8::/32", "2001:db8:ffff::1", ""},
			proxies: []string{"10.0.0.0/8", "192.0.2.7/32", "2001:db8::/32", "2001:db8:ffff::1/128"}},
		{name: "host bits masked", list: []string{"10.1.2.3/8"}, proxies: []string{"10.0.0.0/8"}},
		{name: "not an address", list: []string{"proxy.example"}, err: `"proxy.example" is neither a CIDR nor an address`},
		{name: "trusting everyone warns", list: []string{"0.0.0.0/0"}, proxies: []string{"0.0.0.0/0"}, warn: "trusts every address"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			var logs bytes.Buffer
			ps, err := trustedProxies(tc.list, slog.New(slog.NewTextHandler(&logs, nil)))
			if tc.err != "" {
				if err == nil || !strings.Contains(err.Error(), tc.err) {
					t.Fatalf("error %v, want %q", err, tc.err)
				}
				return
			}
			if err != nil {
				t.Fatal(err)
			}
			var got []string
			for _, p := range ps {
				got = append(got, p.String())
			}
			if !slices.Equal(got, tc.proxies) {
				t.Errorf("trusted proxies %v, want %v", got, tc.proxies)
			}
			if tc.warn != "" && !strings.Contains(logs.String(), tc.warn) {
				t.Errorf("no warning %q in %s", tc.warn, logs.String())
			}
		})
	}
}

// TestRateLimitFlagsFromEnvAndFile: the --rate-* flags are set the house
// way, from VOUCH_* variables and the --config file, and a command-line flag
// wins.
func TestRateLimitFlagsFromEnvAndFile(t *testing.T) {
	cfg := filepath.Join(t.TempDir(), "vouchd.yaml")
	if err := os.WriteFile(cfg, []byte("rate-read: 250\ntrusted-proxies:\n  - 10.0.0.0/8\n  - 192.0.2.1\nrate-attest: 1\n"), 0o600); err != nil {
		t.Fatal(err)
	}
	t.Setenv("VOUCH_RATE_ATTEST_BURST", "7")
	t.Setenv("VOUCH_RATE_DECIDE", "5000")
	cmd := newRoot()
	if err := cmd.ParseFlags([]string{"--config", cfg, "--rate-attest", "3"}); err != nil {
		t.Fatal(err)
	}
	if err := cliconf.Apply(cmd); err != nil {
		t.Fatal(err)
	}
	f := cmd.Flags()
	attest, _ := f.GetFloat64("rate-attest")
	burst, _ := f.GetInt("rate-attest-burst")
	read, _ := f.GetFloat64("rate-read")
	decide, _ := f.GetFloat64("rate-decide")
	proxies, _ := f.GetStringSlice("trusted-proxies")
	if attest != 3 || burst != 7 || read != 250 || decide != 5000 || !slices.Equal(proxies, []string{"10.0.0.0/8", "192.0.2.1"}) {
		t.Errorf("attest %v burst %v read %v decide %v proxies %v", attest, burst, read, decide, proxies)
	}
	ps, err := trustedProxies(proxies, slog.New(slog.DiscardHandler))
	if err != nil {
		t.Fatal(err)
	}
	if want := []netip.Prefix{netip.MustParsePrefix("10.0.0.0/8"), netip.MustParsePrefix("192.0.2.1/32")}; !slices.Equal(ps, want) {
		t.Errorf("trusted proxies %v, want %v", ps, want)
	}
}
