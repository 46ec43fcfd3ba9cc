package store

import (
	"context"
	"crypto/rand"
	"encoding/binary"
	"testing"
	"time"
)

// BenchmarkNonceRoundTrip is one challenge (insert) and one consumption
// (conditional update) of a nonce: the store's share of an attestation.
func BenchmarkNonceRoundTrip(b *testing.B) {
	s, err := OpenSQLite(context.Background(), b.TempDir()+"/vouch.db")
	if err != nil {
		b.Fatal(err)
	}
	defer s.Close()
	ctx := context.Background()
	now := time.Now()
	n := make([]byte, 32)
	rand.Read(n)
	var i uint64
	for b.Loop() {
		i++
		binary.BigEndian.PutUint64(n, i)
		if err := s.PutNonce(ctx, n, now, now.Add(time.Minute)); err != nil {
			b.Fatal(err)
		}
		if err := s.ConsumeNonce(ctx, n, now); err != nil {
			b.Fatal(err)
		}
	}
}

// BenchmarkEnrollmentLookup is the AK lookup of every attestation.
func BenchmarkEnrollmentLookup(b *testing.B) {
	s, err := OpenSQLite(context.Background(), b.TempDir()+"/vouch.db")
	if err != nil {
		b.Fatal(err)
	}
	defer s.Close()
	ctx := context.Background()
	d := make([]byte, 32)
	if err := s.Enroll(ctx, Enrollment{AKDigest: d, AKPublic: []byte("k"), Method: "operator", EnrolledAt: time.Now()}); err != nil {
		b.Fatal(err)
	}
	for b.Loop() {
		if _, err := s.Enrollment(ctx, d); err != nil {
			b.Fatal(err)
		}
	}
}
