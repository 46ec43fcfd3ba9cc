package authz

import (
	"io/fs"
	"net/netip"
	"slices"
	"sort"
	"strings"
	"testing"
	"testing/fstest"
	"time"

	"github.com/vouch-dev/vouch/attest"
)

const image = "sha256:3c4fb7f0373cabf8eac9f7938eb821d4ef554bc24794530404836212914ff97d"

var t0 = time.Date(2026, 3, 10, 12, 0, 0, 0, time.UTC)

func mustRes(t testing.TB, s string) attest.Resource {
	t.Helper()
	r, err := attest.ParseResource(s)
	if err != nil {
		t.Fatal(err)
	}
	return r
}

func engine(t testing.TB) *Engine {
	t.Helper()
	e, err := Default()
	if err != nil {
		t.Fatalf("Default: %v", err)
	}
	return e
}

func grant(t testing.TB) *Grant {
	return &Grant{
		ID: "dlg_test", User: "alice", Intent: "summarize-documents", Status: StatusActive,
		ImageDigests: []string{image},
		Resources:    []attest.Resource{mustRes(t, `Document::"customer-A/*"`), mustRes(t, `Summary::"customer-A/*"`)},
		ExpiresAt:    t0.Add(time.Hour),
	}
}

func agent() *Agent {
	return &Agent{ID: "urn:ietf:params:oauth:ckt:sha-256:abc", ImageDigest: image, EARStatus: "affirming", Platform: "rhel8-uefi"}
}

func env() *Env {
	return &Env{Now: t0, SourceIP: netip.MustParseAddr("10.1.2.3")}
}

func TestDefaultLoads(t *testing.T) {
	e := engine(t)
	if !strings.HasPrefix(e.ID(), "sha256:") {
		t.Errorf("ID = %q", e.ID())
	}
	want := []string{"agents-with-active-delegation", "anomalous", "document-writes-need-elevation", "elevation-from-internal-networks", "no-agent-deletes", "threat-flagged"}
	if got := e.PolicyIDs(); !slices.Equal(got, want) {
		t.Errorf("policies = %v, want %v", got, want)
	}
	if got := e.AppliesTo("summaries:create"); !slices.Equal(got, []string{"Summary"}) {
		t.Errorf("summaries:create applies to %v", got)
	}
	if _, ok := e.Intent("summarize-documents"); !ok {
		t.Error("intent summarize-documents missing")
	}
}

func TestDecide(t *testing.T) {
	e := engine(t)
	report := `Document::"customer-A/report-7"`
	tests := []struct {
		name     string
		grant    func(*Grant)
		agent    func(*Agent)
		env      func(*Env)
		action   string
		resource string
		want     attest.Reason // "" = permit
		policy   string        // a determining policy, when the decision names one
	}{
		{name: "read permitted", action: "documents:read", resource: report, policy: "agents-with-active-delegation"},
		{name: "summary create permitted", action: "summaries:create", resource: `Summary::"customer-A/report-7"`},
		{name: "delete is outside the intent", action: "documents:delete", resource: report, want: attest.ReasonIntentAction},
		{name: "write needs elevation", action: "documents:write", resource: report, want: attest.ReasonIntentAction},
		{name: "resource outside delegation", action: "documents:read", resource: `Document::"customer-B/report-1"`, want: attest.ReasonResourceNotDelegated},
		{name: "action on the wrong type", action: "summaries:create", resource: report, want: attest.ReasonPolicyDenied},
		{name: "delegation expired", env: func(e *Env) { e.Now = t0.Add(time.Hour) }, action: "documents:read", resource: report, want: attest.ReasonDelegationExpired},
		{name: "delegation valid until the last instant", env: func(e *Env) { e.Now = t0.Add(time.Hour - time.Nanosecond) }, action: "documents:read", resource: report},
		{name: "delegation not yet valid", grant: func(g *Grant) { g.NotBefore = t0.Add(time.Second) }, action: "documents:read", resource: report, want: attest.ReasonDelegationExpired},
		{name: "delegation valid from its first instant", grant: func(g *Grant) { g.NotBefore = t0 }, action: "documents:read", resource: report},
		{name: "delegation suspended", grant: func(g *Grant) { g.Status = StatusSuspended }, action: "documents:read", resource: report, want: attest.ReasonDelegationSuspended},
		{name: "delegation revoked", grant: func(g *Grant) { g.Status = StatusRevoked }, action: "documents:read", resource: report, want: attest.ReasonDelegationRevoked},
		{name: "revoked wins over expired", grant: func(g *Grant) { g.Status = StatusRevoked; g.ExpiresAt = t0 }, action: "documents:read", resource: report, want: attest.ReasonDelegationRevoked},
		{name: "another image", agent: func(a *Agent) { a.ImageDigest = "sha256:00" }, action: "documents:read", resource: report, want: attest.ReasonDelegationAgent},
		{name: "agent id selector", grant: func(g *Grant) { g.ImageDigests = nil; g.AgentIDs = []string{agent().ID} }, agent: func(a *Agent) { a.ImageDigest = "sha256:00" }, action: "documents:read", resource: report},
		{name: "intent no longer in catalogue", grant: func(g *Grant) { g.Intent = "retired-intent" }, action: "documents:read", resource: report, want: attest.ReasonIntentUnknown},
		{name: "delegation narrows actions", grant: func(g *Grant) { g.Actions = []string{"summaries:create"} }, action: "documents:read", resource: report, want: attest.ReasonIntentAction},
		{name: "network allowed", grant: func(g *Grant) { g.Networks = []netip.Prefix{netip.MustParsePrefix("10.0.0.0/8")} }, action: "documents:read", resource: report},
		{name: "network forbidden", grant: func(g *Grant) { g.Networks = []netip.Prefix{netip.MustParsePrefix("192.168.0.0/16")} }, action: "documents:read", resource: report, want: attest.ReasonNetworkDenied},
		{name: "network unknown", grant: func(g *Grant) { g.Networks = []netip.Prefix{netip.MustParsePrefix("10.0.0.0/8")} }, env: func(e *Env) { e.SourceIP = netip.Addr{} }, action: "documents:read", resource: report, want: attest.ReasonNetworkDenied},
		{name: "v4-mapped v6 address", grant: func(g *Grant) { g.Networks = []netip.Prefix{netip.MustParsePrefix("10.0.0.0/8")} }, env: func(e *Env) { e.SourceIP = netip.MustParseAddr("::ffff:10.1.2.3") }, action: "documents:read", resource: report},
		{name: "inside time window", grant: func(g *Grant) { g.Window = &Window{Start: 8 * 60, End: 18 * 60} }, action: "documents:read", resource: report},
		{name: "outside time window", grant: func(g *Grant) { g.Window = &Window{Start: 13 * 60, End: 18 * 60} }, action: "documents:read", resource: report, want: attest.ReasonTimeWindow},
		{name: "window end is exclusive", grant: func(g *Grant) { g.Window = &Window{Start: 8 * 60, End: 12 * 60} }, action: "documents:read", resource: report, want: attest.ReasonTimeWindow},
		{name: "threat flagged", env: func(e *Env) { e.ThreatFlags = []string{"tor-exit"} }, action: "documents:read", resource: report, want: attest.ReasonPolicyDenied, policy: "threat-flagged"},
		{name: "anomalous", env: func(e *Env) { e.AnomalyScore = 80 }, action: "documents:read", resource: report, want: attest.ReasonPolicyDenied, policy: "anomalous"},
		{name: "slightly unusual", env: func(e *Env) { e.AnomalyScore = 79 }, action: "documents:read", resource: report},
		{name: "appraisal warning", agent: func(a *Agent) { a.EARStatus = "warning" }, action: "documents:read", resource: report, want: attest.ReasonPolicyDenied},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			g, a, en := grant(t), agent(), env()
			if tt.grant != nil {
				tt.grant(g)
			}
			if tt.agent != nil {
				tt.agent(a)
			}
			if tt.env != nil {
				tt.env(en)
			}
			r := e.Decide(g, a, tt.action, mustRes(t, tt.resource), en)
			if tt.want == "" {
				if !r.Permit {
					t.Fatalf("denied: %+v", r.Reasons)
				}
			} else {
				if r.Permit {
					t.Fatalf("permitted, want %s", tt.want)
				}
				if r.Reasons[0].Reason != tt.want {
					t.Fatalf("reason %s (%s), want %s", r.Reasons[0].Reason, r.Reasons[0].Detail, tt.want)
				}
				if r.Reasons[0].Detail == "" {
					t.Error("no detail")
				}
			}
			if tt.policy != "" && !slices.Contains(r.Policies, tt.policy) {
				t.Errorf("policies %v do not name %s", r.Policies, tt.policy)
			}
		})
	}
}

func TestElevation(t *testing.T) {
	e := engine(t)
	report := mustRes(t, `Document::"customer-A/report-7"`)
	tests := []struct {
		name     string
		action   string
		resource attest.Resource
		env      func(*Env)
		grant    func(*Grant)
		want     attest.Reason
	}{
		{name: "write elevated", action: "documents:write", resource: report},
		{name: "delete never", action: "documents:delete", resource: report, want: attest.ReasonIntentAction},
		{name: "resource not delegated", action: "documents:write", resource: mustRes(t, `Document::"customer-B/x"`), want: attest.ReasonResourceNotDelegated},
		{name: "pattern", action: "documents:write", resource: mustRes(t, `Document::"customer-A/*"`), want: attest.ReasonElevationDenied},
		{name: "from a public address", action: "documents:write", resource: report, env: func(e *Env) { e.SourceIP = netip.MustParseAddr("203.0.113.9") }, want: attest.ReasonPolicyDenied},
		{name: "from an unknown address", action: "documents:write", resource: report, env: func(e *Env) { e.SourceIP = netip.Addr{} }, want: attest.ReasonPolicyDenied},
		{name: "delegation narrowed to reads", action: "documents:write", resource: report, grant: func(g *Grant) { g.Actions = []string{"documents:read"} }, want: attest.ReasonIntentAction},
		{name: "delegation suspended", action: "documents:write", resource: report, grant: func(g *Grant) { g.Status = StatusSuspended }, want: attest.ReasonDelegationSuspended},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			g, en := grant(t), env()
			if tt.grant != nil {
				tt.grant(g)
			}
			if tt.env != nil {
				tt.env(en)
			}
			r := e.CheckElevation(g, agent(), tt.action, tt.resource, en)
			if tt.want == "" {
				if !r.Permit {
					t.Fatalf("denied: %+v", r.Reasons)
				}
				return
			}
			if r.Permit || r.Reasons[0].Reason != tt.want {
				t.Fatalf("got permit=%v %+v, want %s", r.Permit, r.Reasons, tt.want)
			}
		})
	}
}

func TestScope(t *testing.T) {
	e := engine(t)
	tests := []struct {
		name      string
		intent    string
		resources []string
		grant     func(*Grant)
		env       func(*Env)
		want      []string
		reason    attest.Reason
	}{
		{
			name: "least privilege per resource type", intent: "summarize-documents",
			resources: []string{`Document::"customer-A/report-7"`, `Summary::"customer-A/report-7"`},
			want:      []string{`documents:read:Document::"customer-A/report-7"`, `summaries:create:Summary::"customer-A/report-7"`},
		},
		{
			name: "pattern within the delegation", resources: []string{`Document::"customer-A/2026/*"`},
			want: []string{`documents:read:Document::"customer-A/2026/*"`},
		},
		{name: "resource outside delegation", resources: []string{`Document::"customer-B/x"`}, reason: attest.ReasonResourceNotDelegated},
		{name: "pattern wider than the delegation", resources: []string{`Document::"customer-*"`}, reason: attest.ReasonResourceNotDelegated},
		{name: "another intent", intent: "read-summaries", resources: []string{`Summary::"customer-A/x"`}, reason: attest.ReasonIntentUnknown},
		{name: "no resources", reason: attest.ReasonScopeEmpty},
		{name: "policy denies everything", resources: []string{`Document::"customer-A/x"`}, env: func(e *Env) { e.AnomalyScore = 99 }, reason: attest.ReasonScopeEmpty},
		{name: "narrowed to an action with no requested type", resources: []string{`Document::"customer-A/x"`}, grant: func(g *Grant) { g.Actions = []string{"summaries:create"} }, reason: attest.ReasonScopeEmpty},
		{name: "expired", resources: []string{`Document::"customer-A/x"`}, env: func(e *Env) { e.Now = t0.Add(2 * time.Hour) }, reason: attest.ReasonDelegationExpired},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			g, en := grant(t), env()
			if tt.grant != nil {
				tt.grant(g)
			}
			if tt.env != nil {
				tt.env(en)
			}
			var res []attest.Resource
			for _, s := range tt.resources {
				res = append(res, mustRes(t, s))
			}
			scope, err := e.Scope(g, agent(), tt.intent, res, en)
			if tt.reason != "" {
				if attest.ReasonOf(err) != tt.reason {
					t.Fatalf("err = %v, want %s", err, tt.reason)
				}
				return
			}
			if err != nil {
				t.Fatal(err)
			}
			sort.Strings(scope)
			if !slices.Equal(scope, tt.want) {
				t.Fatalf("scope = %v, want %v", scope, tt.want)
			}
			for _, s := range scope {
				if strings.Contains(s, "delete") || strings.Contains(s, "write") {
					t.Errorf("standing scope holds %s", s)
				}
			}
		})
	}
}

// policyDir returns the default directory with some files replaced
// (a nil value removes the file).
func policyDir(t *testing.T, replace map[string]*string) fs.FS {
	t.Helper()
	m := fstest.MapFS{}
	err := fs.WalkDir(DefaultFS(), ".", func(p string, d fs.DirEntry, err error) error {
		if err != nil || d.IsDir() {
			return err
		}
		b, err := fs.ReadFile(DefaultFS(), p)
		m[p] = &fstest.MapFile{Data: b}
		return err
	})
	if err != nil {
		t.Fatal(err)
	}
	for name, v := range replace {
		if v == nil {
			delete(m, name)
		} else {
			m[name] = &fstest.MapFile{Data: []byte(*v)}
		}
	}
	return m
}

func ptr(s string) *string { return &s }

func TestLoadRefuses(t *testing.T) {
	tests := []struct {
		name    string
		replace map[string]*string
		want    string
	}{
		{"malformed policy", map[string]*string{"policies/extra.cedar": ptr(`@id("x") permit (principal, action, resource) when { `)}, "extra.cedar"},
		{"unknown attribute", map[string]*string{"policies/extra.cedar": ptr(`@id("x") permit (principal, action, resource) when { principal.clearance == "top" };`)}, "clearance"},
		{"unknown action", map[string]*string{"policies/extra.cedar": ptr(`@id("x") permit (principal, action == Action::"documents:shred", resource);`)}, "documents:shred"},
		{"unknown entity type", map[string]*string{"policies/extra.cedar": ptr(`@id("x") permit (principal is User, action, resource);`)}, "User"},
		{"type error", map[string]*string{"policies/extra.cedar": ptr(`@id("x") permit (principal, action, resource) when { context.anomaly_score == "high" };`)}, "x"},
		{"missing id", map[string]*string{"policies/extra.cedar": ptr(`permit (principal, action, resource);`)}, "@id"},
		{"duplicate id", map[string]*string{"policies/extra.cedar": ptr(`@id("anomalous") permit (principal, action, resource);`)}, "anomalous"},
		{"no policies", map[string]*string{"policies/baseline.cedar": nil, "policies/environment.cedar": nil}, "no .cedar"},
		{"no schema", map[string]*string{SchemaFile: nil}, SchemaFile},
		{"schema syntax", map[string]*string{SchemaFile: ptr(`entity Agent = {`)}, SchemaFile},
		{"intent with an undeclared action", map[string]*string{CatalogueFile: ptr("intents:\n  x:\n    actions: [documents:shred]\n")}, "documents:shred"},
		{"intent with a bad action name", map[string]*string{CatalogueFile: ptr("intents:\n  x:\n    actions: [Read]\n")}, "service:verb"},
		{"unknown catalogue key", map[string]*string{CatalogueFile: ptr("intents:\n  x:\n    actions: [documents:read]\n    allow_all: true\n")}, "allow_all"},
		{"empty catalogue", map[string]*string{CatalogueFile: ptr("intents: {}\n")}, "no intents"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			_, err := Load(policyDir(t, tt.replace))
			if err == nil {
				t.Fatal("loaded")
			}
			if !strings.Contains(err.Error(), tt.want) {
				t.Fatalf("error %q does not mention %q", err, tt.want)
			}
		})
	}
}

func TestReloadKeepsOldSetOnError(t *testing.T) {
	old := engine(t)
	h := NewHolder(old)
	cur, err := h.Reload(func() (*Engine, error) {
		return Load(policyDir(t, map[string]*string{"policies/extra.cedar": ptr(`@id("x") permit (principal, action, resource) when { principal.nosuch };`)}))
	})
	if err == nil {
		t.Fatal("reload of a bad set succeeded")
	}
	if cur != old || h.Engine() != old {
		t.Fatal("the old set is no longer in force")
	}
	// A good reload with one more policy changes the id and takes effect.
	cur, err = h.Reload(func() (*Engine, error) {
		return Load(policyDir(t, map[string]*string{"policies/extra.cedar": ptr(`@id("no-summaries-at-night") forbid (principal, action, resource) when { context.hour_utc < 6 };`)}))
	})
	if err != nil {
		t.Fatal(err)
	}
	if h.Engine() != cur || cur.ID() == old.ID() {
		t.Fatal("new set not in force, or same id")
	}
	en := env()
	en.Now = time.Date(2026, 3, 10, 3, 0, 0, 0, time.UTC)
	g := grant(t)
	g.ExpiresAt = en.Now.Add(time.Hour)
	r := cur.Decide(g, agent(), "documents:read", mustRes(t, `Document::"customer-A/x"`), en)
	if r.Permit || !slices.Contains(r.Policies, "no-summaries-at-night") {
		t.Fatalf("new policy not applied: %+v", r)
	}
}

func TestWindow(t *testing.T) {
	tests := []struct {
		in      string
		at      string
		inside  bool
		wantErr bool
	}{
		{in: "08:00-18:00", at: "08:00", inside: true},
		{in: "08:00-18:00", at: "17:59", inside: true},
		{in: "08:00-18:00", at: "18:00"},
		{in: "08:00-18:00", at: "07:59"},
		{in: "22:00-06:00", at: "23:30", inside: true},
		{in: "22:00-06:00", at: "05:59", inside: true},
		{in: "22:00-06:00", at: "06:00"},
		{in: "8-18", wantErr: true},
		{in: "08:00-08:00", wantErr: true},
		{in: "08:00", wantErr: true},
		{in: "25:00-01:00", wantErr: true},
	}
	for _, tt := range tests {
		w, err := ParseWindow(tt.in)
		if tt.wantErr {
			if err == nil {
				t.Errorf("ParseWindow(%q) succeeded", tt.in)
			}
			continue
		}
		if err != nil {
			t.Fatalf("ParseWindow(%q): %v", tt.in, err)
		}
		at, _ := time.Parse("15:04", tt.at)
		at = time.Date(2026, 1, 1, at.Hour(), at.Minute(), 0, 0, time.UTC)
		if got := w.Contains(at); got != tt.inside {
			t.Errorf("%s contains %s = %v", tt.in, tt.at, got)
		}
		if w.String() != tt.in {
			t.Errorf("String() = %s", w)
		}
	}
}

func TestAgentFromClaims(t *testing.T) {
	c := &attest.Claims{Subject: "urn:x", Submods: map[string]attest.Appraisal{
		attest.SubmodTPM:      {Status: attest.StatusAffirming, Claims: &attest.AttesterClaims{Platform: "rhel8-uefi"}},
		attest.SubmodWorkload: {Status: attest.StatusWarning, Claims: &attest.AttesterClaims{ImageDigest: &attest.Digest{Alg: attest.HashSHA256, Value: []byte{0xab, 0xcd}}}},
	}}
	a := AgentFromClaims(c)
	want := Agent{ID: "urn:x", ImageDigest: "sha256:abcd", EARStatus: "warning", Platform: "rhel8-uefi"}
	if a != want {
		t.Fatalf("got %+v, want %+v", a, want)
	}
	if got := AgentFromClaims(&attest.Claims{Subject: "y"}).EARStatus; got != "none" {
		t.Errorf("no submods: ear status %q", got)
	}
}

func FuzzParseCatalogue(f *testing.F) {
	b, _ := fs.ReadFile(DefaultFS(), CatalogueFile)
	f.Add(b)
	f.Add([]byte("intents:\n  x:\n    actions: [documents:read]\n    elevate: [documents:write]\n"))
	f.Add([]byte("intents: {a: null}"))
	known := map[string]bool{"documents:read": true, "documents:write": true}
	f.Fuzz(func(t *testing.T, b []byte) {
		c, err := ParseCatalogue(b, known)
		if err != nil {
			return
		}
		for name, in := range c.Intents {
			if in.Name != name || len(in.Actions)+len(in.Elevate) == 0 {
				t.Fatalf("intent %q accepted as %+v", name, in)
			}
			for _, a := range append(append([]string{}, in.Actions...), in.Elevate...) {
				if !known[a] {
					t.Fatalf("unknown action %q accepted", a)
				}
			}
		}
	})
}

func FuzzParseWindow(f *testing.F) {
	for _, s := range []string{"08:00-18:00", "22:00-06:00", "8-9", "00:00-23:59"} {
		f.Add(s)
	}
	f.Fuzz(func(t *testing.T, s string) {
		w, err := ParseWindow(s)
		if err != nil {
			return
		}
		if w.Start < 0 || w.Start >= 24*60 || w.End < 0 || w.End >= 24*60 || w.Start == w.End {
			t.Fatalf("%q parsed to %+v", s, w)
		}
		if w2, err := ParseWindow(w.String()); err != nil || *w2 != *w {
			t.Fatalf("%q → %s does not round-trip", s, w)
		}
	})
}
