package store

import (
	"context"
	"errors"
	"fmt"
	"slices"
	"sync"
	"sync/atomic"
	"testing"
	"time"
)

func TestUsers(t *testing.T) {
	ctx := context.Background()
	s := openTest(t)
	u := User{ID: "alice", PublicKey: []byte("spki-alice"), Admin: true, CreatedAt: time.Unix(10, 0), CreatedBy: "root"}
	if err := s.AddUser(ctx, u); err != nil {
		t.Fatal(err)
	}
	for _, dup := range []User{{ID: "alice", PublicKey: []byte("other")}, {ID: "bob", PublicKey: []byte("spki-alice")}} {
		if err := s.AddUser(ctx, dup); !errors.Is(err, ErrExists) {
			t.Errorf("AddUser(%s) = %v, want ErrExists", dup.ID, err)
		}
	}
	got, err := s.UserByKey(ctx, KeyDigest([]byte("spki-alice")))
	if err != nil || got.ID != "alice" || !got.Admin || got.CreatedBy != "root" {
		t.Fatalf("UserByKey = %+v, %v", got, err)
	}
	if _, err := s.UserByID(ctx, "nobody"); !errors.Is(err, ErrNotFound) {
		t.Fatal(err)
	}
	if list, err := s.Users(ctx); err != nil || len(list) != 1 {
		t.Fatal(list, err)
	}
}

func testDelegation(id string) Delegation {
	now := time.Unix(1000, 0).UTC()
	return Delegation{
		ID: id, User: "alice", Intent: "summarize-documents",
		DelegationSpec: DelegationSpec{ImageDigests: []string{"sha256:00"}, Resources: []string{`Document::"customer-A/*"`}, Networks: []string{"10.0.0.0/8"}, Window: "08:00-18:00"},
		CreatedAt:      now, ExpiresAt: now.Add(time.Hour),
	}
}

func TestDelegationLifecycle(t *testing.T) {
	ctx := context.Background()
	s := openTest(t)
	d := testDelegation("dlg_1")
	if err := s.CreateDelegation(ctx, d); err != nil {
		t.Fatal(err)
	}
	if err := s.CreateDelegation(ctx, d); !errors.Is(err, ErrExists) {
		t.Fatalf("duplicate: %v", err)
	}
	got, err := s.Delegation(ctx, "dlg_1")
	if err != nil {
		t.Fatal(err)
	}
	if got.Status != DelegationActive || got.Window != "08:00-18:00" || !slices.Equal(got.Resources, d.Resources) || !got.ExpiresAt.Equal(d.ExpiresAt) || !got.NotBefore.IsZero() {
		t.Fatalf("stored %+v", got)
	}
	at := time.Unix(2000, 0)
	steps := []struct {
		to, event string
		err       error
	}{
		{DelegationActive, "", ErrStatus}, // resume an active one
		{DelegationSuspended, "suspended", nil},
		{DelegationSuspended, "", ErrStatus},
		{DelegationActive, "resumed", nil},
		{DelegationRevoked, "revoked", nil},
		{DelegationActive, "", ErrStatus}, // revocation is final
		{DelegationSuspended, "", ErrStatus},
		{"expired", "", ErrStatus},
	}
	var seqs []int64
	for _, st := range steps {
		ev, err := s.SetDelegationStatus(ctx, "dlg_1", st.to, "alice", "test", at)
		if st.err != nil {
			if !errors.Is(err, st.err) {
				t.Fatalf("→ %s: %v, want %v", st.to, err, st.err)
			}
			continue
		}
		if err != nil {
			t.Fatalf("→ %s: %v", st.to, err)
		}
		if ev.Event != st.event || ev.Target != "dlg_1" || ev.Kind != EventDelegation {
			t.Fatalf("event %+v", ev)
		}
		seqs = append(seqs, ev.Seq)
	}
	if _, err := s.SetDelegationStatus(ctx, "dlg_nope", DelegationRevoked, "a", "", at); !errors.Is(err, ErrNotFound) {
		t.Fatal(err)
	}
	evs, err := s.DelegationEventsSince(ctx, 0, 10)
	if err != nil || len(evs) != 3 {
		t.Fatalf("events %+v, %v", evs, err)
	}
	if evs[2].Event != "revoked" || evs[2].Seq != seqs[2] || evs[0].Seq >= evs[1].Seq {
		t.Fatalf("events %+v", evs)
	}
	if evs, _ := s.DelegationEventsSince(ctx, seqs[1], 10); len(evs) != 1 {
		t.Fatalf("since %d: %+v", seqs[1], evs)
	}
	got, _ = s.Delegation(ctx, "dlg_1")
	if got.Status != DelegationRevoked || got.UpdatedBy != "alice" || got.Reason != "test" {
		t.Fatalf("after revocation %+v", got)
	}
	if err := s.CreateDelegation(ctx, testDelegation("dlg_2")); err != nil {
		t.Fatal(err)
	}
	if list, _ := s.Delegations(ctx, "alice"); len(list) != 2 {
		t.Fatalf("alice's: %d", len(list))
	}
	if list, _ := s.Delegations(ctx, "bob"); len(list) != 0 {
		t.Fatalf("bob's: %d", len(list))
	}
}

func TestConsumeCredentialOnce(t *testing.T) {
	ctx := context.Background()
	s := openTest(t)
	cti := []byte("0123456789abcdef")
	var ok atomic.Int32
	var wg sync.WaitGroup
	for range 8 {
		wg.Add(1)
		go func() {
			defer wg.Done()
			err := s.ConsumeCredential(ctx, cti, time.Now(), time.Now().Add(10*time.Second))
			if err == nil {
				ok.Add(1)
			} else if !errors.Is(err, ErrExists) {
				t.Error(err)
			}
		}()
	}
	wg.Wait()
	if ok.Load() != 1 {
		t.Fatalf("%d uses accepted", ok.Load())
	}
}

func TestCredentialsByDelegation(t *testing.T) {
	ctx := context.Background()
	s := openTest(t)
	for i, exp := range []int64{100, 200} {
		c := Credential{ID: []byte{byte(i), 1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 11, 12, 13, 14, 15}, Subject: "s", Audience: "a", AKDigest: []byte("ak"),
			Scope: []string{`documents:read:Document::"a b/c"`}, IssuedAt: time.Unix(1, 0), ExpiresAt: time.Unix(exp, 0), Delegation: "dlg_1", SingleUse: i == 1}
		if err := s.RecordCredential(ctx, c); err != nil {
			t.Fatal(err)
		}
	}
	ids, err := s.CredentialsByDelegation(ctx, "dlg_1", time.Unix(150, 0))
	if err != nil || len(ids) != 1 || ids[0][0] != 1 {
		t.Fatalf("%x %v", ids, err)
	}
	c, err := s.CredentialByID(ctx, ids[0])
	if err != nil || !c.SingleUse || c.Delegation != "dlg_1" || len(c.Scope) != 1 || c.Scope[0] != `documents:read:Document::"a b/c"` {
		t.Fatalf("%+v %v", c, err)
	}
}

func TestRevokeCredentialsOfDelegation(t *testing.T) {
	ctx := context.Background()
	s := openTest(t)
	now := time.Unix(1_800_000_000, 0)
	for i, c := range []struct {
		dlg string
		exp time.Time
	}{{"dlg_1", now.Add(time.Minute)}, {"dlg_1", now.Add(-time.Minute)}, {"dlg_2", now.Add(time.Minute)}} {
		cred := Credential{ID: []byte{byte(i), 1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 11, 12, 13, 14, 15}, Subject: fmt.Sprintf("sub-%d", i), Audience: "a",
			AKDigest: []byte("ak"), IssuedAt: now.Add(-time.Minute), ExpiresAt: c.exp, Delegation: c.dlg}
		if err := s.RecordCredential(ctx, cred); err != nil {
			t.Fatal(err)
		}
	}
	rs, err := s.RevokeCredentialsOfDelegation(ctx, "dlg_1", Revocation{Reason: "delegation dlg_1 revoked", RevokedBy: "alice", RevokedAt: now})
	if err != nil || len(rs) != 1 || rs[0].Subject != "sub-0" || rs[0].Kind != RevokeCredential {
		t.Fatalf("revoked %+v, %v; want only the live credential of dlg_1", rs, err)
	}
	// Revoking again adds nothing to the feed.
	if again, err := s.RevokeCredentialsOfDelegation(ctx, "dlg_1", Revocation{RevokedAt: now}); err != nil || len(again) != 0 {
		t.Fatalf("second revocation: %+v, %v", again, err)
	}
	tests := []struct {
		cti  []byte
		sub  string
		kind string // "" = not revoked
	}{
		{rs[0].CTI, "sub-0", RevokeCredential},
		{[]byte{2, 1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 11, 12, 13, 14, 15}, "sub-2", ""},
	}
	for _, tc := range tests {
		r, err := s.CredentialRevoked(ctx, tc.cti, tc.sub)
		if err != nil || (r == nil) != (tc.kind == "") || (r != nil && r.Kind != tc.kind) {
			t.Errorf("CredentialRevoked(%s) = %+v, %v; want kind %q", tc.sub, r, err, tc.kind)
		}
	}
	// An agent revocation covers every credential of the agent instance.
	if _, err := s.RevokeCredentialsOf(ctx, "sub-2", true, Revocation{Reason: "alert", RevokedBy: "monitor", RevokedAt: now}); err != nil {
		t.Fatal(err)
	}
	if r, err := s.CredentialRevoked(ctx, []byte("some other credential"), "sub-2"); err != nil || r == nil || r.Kind != RevokeAgent {
		t.Fatalf("agent revocation not found: %+v, %v", r, err)
	}
}
