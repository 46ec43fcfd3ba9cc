// Package loadgen is the load generator behind `vouch bench authorize`: it
// prepares an agent credential under a delegation and drives POST
// /v1/authorize from concurrent workers, each question carrying a fresh
// proof of possession, and reports throughput and latency percentiles.
//
// The credential is minted by the target verifier's own issuing key (read
// from its data directory, or from the in-process verifier the generator
// starts) for a software P-256 agent key: the benchmark measures decisions,
// not attestation, and a TPM signing every proof would measure the TPM.
package loadgen

import (
	"bytes"
	"context"
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/sha256"
	"encoding/hex"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"net"
	"net/http"
	"net/url"
	"os"
	"path/filepath"
	"runtime"
	"slices"
	"strings"
	"sync"
	"time"

	"github.com/vouch-dev/vouch/attest"
	firmwarerefs "github.com/vouch-dev/vouch/firmware-refs"
	"github.com/vouch-dev/vouch/verifier"
	"github.com/vouch-dev/vouch/verifier/access"
	"github.com/vouch-dev/vouch/verifier/issuer"
	"github.com/vouch-dev/vouch/verifier/store"
)

// Options configure Run.
type Options struct {
	// Server is the verifier's URL; empty starts one in this process on a
	// loopback port, with a temporary data directory.
	Server string
	// DataDir is the data directory of the verifier at Server (for its
	// issuing key and database); required with Server.
	DataDir string
	// Issuer is the iss the verifier at Server was started with.
	Issuer string
	// Workers is the number of concurrent clients; default 2×GOMAXPROCS.
	Workers int
	// Duration of the measurement; default 10 s.
	Duration time.Duration
	// Warmup before measuring; default 1 s.
	Warmup time.Duration
	// Presign signs every proof before the run instead of during it, so
	// the generator's ECDSA signing does not compete with the server for
	// the CPU. Each proof is still used once.
	Presign bool
	// Rate, when positive, caps the offered load in questions per second
	// (open loop is not attempted: workers wait between questions).
	Rate int
}

// Result is what Run measured.
type Result struct {
	Server         string  `json:"server"`
	InProcess      bool    `json:"in_process"`
	Workers        int     `json:"workers"`
	GOMAXPROCS     int     `json:"gomaxprocs"`
	CPUs           int     `json:"cpus"`
	Presigned      bool    `json:"presigned"`
	DurationS      float64 `json:"duration_s"`
	Decisions      int     `json:"decisions"`
	Permits        int     `json:"permits"`
	Denies         int     `json:"denies"`
	Errors         int     `json:"errors"`
	DecisionsPerS  float64 `json:"decisions_per_s"`
	P50ms          float64 `json:"p50_ms"`
	P90ms          float64 `json:"p90_ms"`
	P99ms          float64 `json:"p99_ms"`
	MaxMs          float64 `json:"max_ms"`
	FirstDenial    string  `json:"first_denial,omitempty"`
	FirstError     string  `json:"first_error,omitempty"`
	PolicySet      string  `json:"policy_set,omitempty"`
	DelegationID   string  `json:"delegation"`
	CredentialSize int     `json:"credential_bytes"`
}

const (
	audience = "https://bench.vouch"
	target   = "https://bench.vouch/documents/customer-A/report-7"
	resource = `Document::"customer-A/report-7"`
	image    = "sha256:3c4fb7f0373cabf8eac9f7938eb821d4ef554bc24794530404836212914ff97d"
)

// Run prepares and runs the benchmark.
func Run(ctx context.Context, opts Options) (*Result, error) {
	if opts.Workers <= 0 {
		opts.Workers = 2 * runtime.GOMAXPROCS(0)
	}
	if opts.Duration <= 0 {
		opts.Duration = 10 * time.Second
	}
	if opts.Warmup == 0 {
		opts.Warmup = time.Second
	}
	res := &Result{Workers: opts.Workers, GOMAXPROCS: runtime.GOMAXPROCS(0), CPUs: runtime.NumCPU(), Presigned: opts.Presign}

	var keys *issuer.Keys
	var st *store.Store
	issuerName := opts.Issuer
	if opts.Server == "" {
		dir, err := os.MkdirTemp("", "vouch-bench-")
		if err != nil {
			return nil, err
		}
		defer os.RemoveAll(dir)
		refs, err := firmwarerefs.Load()
		if err != nil {
			return nil, err
		}
		issuerName = "vouchd-bench"
		srv, err := verifier.New(ctx, verifier.Config{DataDir: dir, Refs: verifier.NewRefHolder(refs), Issuer: issuerName, Logger: slog.New(slog.DiscardHandler)})
		if err != nil {
			return nil, err
		}
		defer srv.Close()
		ln, err := net.Listen("tcp", "127.0.0.1:0")
		if err != nil {
			return nil, err
		}
		sctx, stop := context.WithCancel(context.WithoutCancel(ctx))
		done := make(chan struct{})
		go func() { srv.Serve(sctx, ln); close(done) }()
		defer func() { stop(); <-done }()
		opts.Server = "http://" + ln.Addr().String()
		keys, st = srv.Keys(), srv.Store()
		res.InProcess = true
	} else {
		if opts.DataDir == "" {
			return nil, errors.New("with --server, give --data: the verifier's data directory (its issuing key mints the benchmark credential)")
		}
		if _, err := os.Stat(filepath.Join(opts.DataDir, issuer.KeyDirName)); err != nil {
			return nil, fmt.Errorf("no issuing keys in %s: %w", opts.DataDir, err)
		}
		var err error
		if keys, err = issuer.LoadOrCreate(opts.DataDir); err != nil {
			return nil, err
		}
		if st, err = store.OpenSQLite(ctx, filepath.Join(opts.DataDir, verifier.DatabaseFile)); err != nil {
			return nil, err
		}
		defer st.Close()
		if issuerName == "" {
			issuerName = "vouchd"
		}
	}
	res.Server = opts.Server

	agentKey, cred, dlg, err := prepare(ctx, keys, st, issuerName)
	if err != nil {
		return nil, err
	}
	res.DelegationID, res.CredentialSize = dlg, len(cred)
	endpoint := strings.TrimSuffix(opts.Server, "/") + attest.AuthorizePath
	tr := &http.Transport{MaxIdleConns: opts.Workers * 2, MaxIdleConnsPerHost: opts.Workers * 2, IdleConnTimeout: time.Minute}
	defer tr.CloseIdleConnections()
	hc := &http.Client{Transport: tr, Timeout: 10 * time.Second}

	// One question to check the setup, with its answer shown on failure.
	body, err := question(agentKey, cred, time.Now())
	if err != nil {
		return nil, err
	}
	if d, err := post(ctx, hc, endpoint, body); err != nil {
		return nil, fmt.Errorf("first question: %w", err)
	} else if !d.Permitted() {
		return nil, fmt.Errorf("first question denied: %+v", d.Reasons)
	} else {
		res.PolicySet = d.PolicySet
	}

	var pre chan []byte
	if opts.Presign {
		// Enough proofs for a generous rate; each is used once.
		n := int((opts.Duration+opts.Warmup).Seconds()*20000) + 1000
		if n > 600_000 {
			n = 600_000
		}
		pre = make(chan []byte, n)
		now := time.Now().Add(opts.Warmup / 2)
		for range n {
			b, err := question(agentKey, cred, now)
			if err != nil {
				return nil, err
			}
			pre <- b
		}
	}

	var mu sync.Mutex
	var lat []time.Duration
	start := time.Now()
	measureFrom := start.Add(opts.Warmup)
	end := measureFrom.Add(opts.Duration)
	var interval time.Duration
	if opts.Rate > 0 {
		interval = time.Duration(float64(time.Second) * float64(opts.Workers) / float64(opts.Rate))
	}
	var wg sync.WaitGroup
	for range opts.Workers {
		wg.Add(1)
		go func() {
			defer wg.Done()
			local := make([]time.Duration, 0, 4096)
			var permits, denies, errs int
			var firstDeny, firstErr string
			next, stopAt := time.Now(), end
			for {
				now := time.Now()
				if now.After(stopAt) || ctx.Err() != nil {
					break
				}
				if interval > 0 {
					if d := time.Until(next); d > 0 {
						time.Sleep(d)
					}
					next = next.Add(interval)
				}
				var b []byte
				if pre != nil {
					select {
					case b = <-pre:
					default:
						errs++
						firstErr = "ran out of presigned proofs"
						stopAt = now // stop this worker
						continue
					}
				} else {
					var err error
					if b, err = question(agentKey, cred, time.Now()); err != nil {
						errs++
						continue
					}
				}
				t0 := time.Now()
				d, err := post(ctx, hc, endpoint, b)
				el := time.Since(t0)
				if t0.Before(measureFrom) {
					continue
				}
				switch {
				case err != nil:
					errs++
					if firstErr == "" {
						firstErr = err.Error()
					}
				case d.Permitted():
					permits++
					local = append(local, el)
				default:
					denies++
					local = append(local, el)
					if firstDeny == "" && len(d.Reasons) > 0 {
						firstDeny = string(d.Reasons[0].Reason) + ": " + d.Reasons[0].Detail
					}
				}
			}
			mu.Lock()
			lat = append(lat, local...)
			res.Permits += permits
			res.Denies += denies
			res.Errors += errs
			if res.FirstDenial == "" {
				res.FirstDenial = firstDeny
			}
			if res.FirstError == "" {
				res.FirstError = firstErr
			}
			mu.Unlock()
		}()
	}
	wg.Wait()
	elapsed := time.Since(measureFrom)
	if elapsed > opts.Duration {
		elapsed = opts.Duration // workers stop at end; the last answers land just after
	}
	res.DurationS = elapsed.Seconds()
	res.Decisions = res.Permits + res.Denies
	res.DecisionsPerS = float64(res.Decisions) / elapsed.Seconds()
	if len(lat) > 0 {
		slices.Sort(lat)
		ms := func(d time.Duration) float64 { return float64(d.Microseconds()) / 1000 }
		res.P50ms = ms(lat[len(lat)/2])
		res.P90ms = ms(lat[len(lat)*90/100])
		res.P99ms = ms(lat[len(lat)*99/100])
		res.MaxMs = ms(lat[len(lat)-1])
	}
	return res, nil
}

// prepare makes the agent key, a delegation for it and its credential.
func prepare(ctx context.Context, keys *issuer.Keys, st *store.Store, iss string) (*ecdsa.PrivateKey, []byte, string, error) {
	agentKey, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		return nil, nil, "", err
	}
	ck, err := attest.PublicCOSEKey(agentKey.Public())
	if err != nil {
		return nil, nil, "", err
	}
	ck.ID = nil
	sub, err := attest.SubjectOf(ck)
	if err != nil {
		return nil, nil, "", err
	}
	id, err := access.NewDelegationID()
	if err != nil {
		return nil, nil, "", err
	}
	now := time.Now()
	if err := st.CreateDelegation(ctx, store.Delegation{
		ID: id, User: "vouch-bench", Intent: "summarize-documents",
		DelegationSpec: store.DelegationSpec{AgentIDs: []string{sub}, Resources: []string{`Document::"customer-A/*"`}},
		CreatedAt:      now, ExpiresAt: now.Add(2 * time.Hour),
	}); err != nil {
		return nil, nil, "", fmt.Errorf("creating the benchmark delegation: %w", err)
	}
	cti, err := issuer.NewID()
	if err != nil {
		return nil, nil, "", err
	}
	digest, _ := hex.DecodeString(strings.TrimPrefix(image, "sha256:"))
	cred, err := keys.Sign(&attest.Claims{
		Issuer: iss, Subject: sub, Audience: audience,
		Expiry: now.Add(time.Hour).Unix(), NotBefore: now.Unix(), IssuedAt: now.Unix(), ID: cti,
		Confirm: attest.Confirmation{Key: ck}, Nonce: make([]byte, attest.NonceSize), Profile: attest.Profile,
		Submods: map[string]attest.Appraisal{
			attest.SubmodTPM:      {Status: attest.StatusAffirming, Claims: &attest.AttesterClaims{Platform: "bench"}},
			attest.SubmodWorkload: {Status: attest.StatusAffirming, Claims: &attest.AttesterClaims{ImageDigest: &attest.Digest{Alg: attest.HashSHA256, Value: digest}}},
		},
		VerifierID: attest.VerifierID{Developer: verifier.Developer, Build: "bench"},
		Scope:      []string{`documents:read:Document::"customer-A/*"`},
		Delegation: id, Intent: "summarize-documents",
	})
	if err != nil {
		return nil, nil, "", err
	}
	return agentKey, cred, id, nil
}

// question encodes one /v1/authorize body with a fresh proof.
func question(key *ecdsa.PrivateKey, cred []byte, now time.Time) ([]byte, error) {
	u, _ := url.Parse(target)
	pc, err := attest.NewPoPClaims(http.MethodGet, attest.TargetURI(u), nil, cred, now)
	if err != nil {
		return nil, err
	}
	pop, err := attest.SignPoP(key, pc)
	if err != nil {
		return nil, err
	}
	bd := sha256.Sum256(nil)
	return json.Marshal(&attest.AuthorizeRequest{
		Credential: cred, PoP: pop, Method: http.MethodGet, Target: attest.TargetURI(u), BodySHA256: bd[:],
		Audience: audience, Action: "documents:read", Resource: resource,
		Context: attest.AuthorizeContext{SourceIP: "10.0.0.7"},
	})
}

func post(ctx context.Context, hc *http.Client, endpoint string, body []byte) (*attest.Decision, error) {
	req, err := http.NewRequestWithContext(ctx, http.MethodPost, endpoint, bytes.NewReader(body))
	if err != nil {
		return nil, err
	}
	req.Header.Set("Content-Type", attest.AuthorizeMediaType)
	resp, err := hc.Do(req)
	if err != nil {
		return nil, err
	}
	defer resp.Body.Close()
	if resp.StatusCode != http.StatusOK {
		return nil, attest.ReadProblem(resp)
	}
	var d attest.Decision
	b, err := io.ReadAll(io.LimitReader(resp.Body, 64<<10))
	if err != nil {
		return nil, err
	}
	if err := json.Unmarshal(b, &d); err != nil {
		return nil, err
	}
	return &d, nil
}
