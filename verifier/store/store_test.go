package store

import (
	"context"
	"errors"
	"path/filepath"
	"sync"
	"testing"
	"time"

	"github.com/vouch-dev/vouch/attest"
)

func openTest(t *testing.T) *Store {
	t.Helper()
	s, err := OpenSQLite(context.Background(), filepath.Join(t.TempDir(), "vouch.db"))
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { s.Close() })
	return s
}

func TestConsumeNonce(t *testing.T) {
	ctx := context.Background()
	s := openTest(t)
	now := time.Unix(1_800_000_000, 0)
	fresh, expired, used := []byte("fresh-nonce"), []byte("expired-nonce"), []byte("used-nonce")
	for _, n := range [][]byte{fresh, used} {
		if err := s.PutNonce(ctx, n, now, now.Add(time.Minute)); err != nil {
			t.Fatal(err)
		}
	}
	if err := s.PutNonce(ctx, expired, now.Add(-2*time.Minute), now.Add(-time.Minute)); err != nil {
		t.Fatal(err)
	}
	if err := s.ConsumeNonce(ctx, used, now); err != nil {
		t.Fatal(err)
	}
	tests := []struct {
		name  string
		nonce []byte
		want  attest.Reason
	}{
		{"fresh", fresh, ""},
		{"replayed", used, attest.ReasonNonceReplayed},
		{"expired", expired, attest.ReasonNonceExpired},
		{"expired twice stays refused", expired, attest.ReasonNonceReplayed},
		{"unknown", []byte("never-issued"), attest.ReasonNonceUnknown},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			err := s.ConsumeNonce(ctx, tc.nonce, now)
			if tc.want == "" {
				if err != nil {
					t.Fatalf("ConsumeNonce: %v", err)
				}
				return
			}
			if got := attest.ReasonOf(err); got != tc.want {
				t.Fatalf("ConsumeNonce = %v, want reason %s", err, tc.want)
			}
		})
	}
}

// TestConsumeNonceConcurrent: of many concurrent consumers of one nonce,
// exactly one wins.
func TestConsumeNonceConcurrent(t *testing.T) {
	ctx := context.Background()
	s := openTest(t)
	now := time.Now()
	nonce := []byte("contended")
	if err := s.PutNonce(ctx, nonce, now, now.Add(time.Minute)); err != nil {
		t.Fatal(err)
	}
	const n = 16
	var wg sync.WaitGroup
	errs := make(chan error, n)
	for range n {
		wg.Add(1)
		go func() {
			defer wg.Done()
			errs <- s.ConsumeNonce(ctx, nonce, now)
		}()
	}
	wg.Wait()
	close(errs)
	wins := 0
	for err := range errs {
		switch {
		case err == nil:
			wins++
		case attest.ReasonOf(err) != attest.ReasonNonceReplayed:
			t.Errorf("unexpected error: %v", err)
		}
	}
	if wins != 1 {
		t.Fatalf("%d consumers won, want exactly 1", wins)
	}
}

func TestEnrollments(t *testing.T) {
	ctx := context.Background()
	s := openTest(t)
	at := time.Unix(1_800_000_000, 0).UTC()
	e := Enrollment{AKDigest: []byte{0xab, 0xcd, 0xef, 0x01, 2, 3}, AKPublic: []byte("spki"), Method: "operator", Name: "host-1", EnrolledBy: "alice", EnrolledAt: at}
	if err := s.Enroll(ctx, e); err != nil {
		t.Fatal(err)
	}
	if err := s.Enroll(ctx, e); !errors.Is(err, ErrExists) {
		t.Fatalf("second Enroll = %v, want ErrExists", err)
	}
	got, err := s.Enrollment(ctx, e.AKDigest)
	if err != nil || !got.Active() || got.Name != "host-1" || !got.EnrolledAt.Equal(at) {
		t.Fatalf("Enrollment = %+v, %v", got, err)
	}
	found, err := s.FindEnrollments(ctx, "abcdef01")
	if err != nil || len(found) != 1 {
		t.Fatalf("FindEnrollments = %v, %v", found, err)
	}
	if err := s.RevokeEnrollment(ctx, e.AKDigest, "bob", "TPM replaced", at.Add(time.Hour)); err != nil {
		t.Fatal(err)
	}
	if err := s.RevokeEnrollment(ctx, e.AKDigest, "bob", "again", at); !errors.Is(err, ErrNotFound) {
		t.Fatalf("second revoke = %v, want ErrNotFound", err)
	}
	got, _ = s.Enrollment(ctx, e.AKDigest)
	if got.Active() || got.RevokeReason != "TPM replaced" {
		t.Fatalf("after revoke: %+v", got)
	}
	// Re-enrollment after revocation replaces the record.
	e.Name = "host-1-after-clear"
	if err := s.Enroll(ctx, e); err != nil {
		t.Fatalf("re-enroll: %v", err)
	}
	got, _ = s.Enrollment(ctx, e.AKDigest)
	if !got.Active() || got.Name != "host-1-after-clear" {
		t.Fatalf("after re-enroll: %+v", got)
	}
	if _, err := s.Enrollment(ctx, []byte("nope")); !errors.Is(err, ErrNotFound) {
		t.Fatalf("unknown = %v", err)
	}
}

func TestCredentials(t *testing.T) {
	ctx := context.Background()
	s := openTest(t)
	idx := uint64(7)
	c := Credential{ID: []byte("0123456789abcdef"), Subject: "urn:x", Audience: "rp", AKDigest: []byte("ak"),
		ImageDigest: "sha256:00", Scope: []string{"documents:read", "summaries:create"},
		IssuedAt: time.Unix(100, 0).UTC(), ExpiresAt: time.Unix(160, 0).UTC(), LogIndex: &idx}
	if err := s.RecordCredential(ctx, c); err != nil {
		t.Fatal(err)
	}
	if err := s.RecordCredential(ctx, c); err == nil {
		t.Fatal("duplicate cti accepted")
	}
	got, err := s.CredentialByID(ctx, c.ID)
	if err != nil || got.Subject != "urn:x" || len(got.Scope) != 2 || *got.LogIndex != 7 || !got.ExpiresAt.Equal(c.ExpiresAt) {
		t.Fatalf("CredentialByID = %+v, %v", got, err)
	}
}

func TestMigrationIdempotent(t *testing.T) {
	path := filepath.Join(t.TempDir(), "vouch.db")
	for range 2 {
		s, err := OpenSQLite(context.Background(), path)
		if err != nil {
			t.Fatal(err)
		}
		s.Close()
	}
}
