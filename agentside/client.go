package agentside

import (
	"bytes"
	"context"
	"encoding/base64"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"math/rand/v2"
	"mime"
	"net/http"
	"net/url"
	"strings"
	"time"

	"github.com/vouch-dev/vouch/attest"
)

// Paths and media types of the verifier API the client uses.
const (
	challengePath = "/v1/challenge"
	attestPath    = "/v1/attest"
	// LogIndexHeader optionally carries the audit log index of an issuance.
	LogIndexHeader = "Vouch-Log-Index"
)

// maxChallengeSize bounds a challenge response body.
const maxChallengeSize = 4 << 10

// DefaultTimeout bounds a whole request to the verifier when the client was
// built without an http.Client.
const DefaultTimeout = 30 * time.Second

// Client talks to a Vouch verifier (vouchd):
//
//	POST {base}/v1/challenge               → 201 {"nonce": base64, "expires_at": RFC 3339}
//	POST {base}/v1/attest (evidence CBOR)  → 200 application/cwt credential
//
// Refusals come back as RFC 9457 problem documents and are returned as
// *attest.Error with the verifier's reason and detail.
type Client struct {
	base  *url.URL
	hc    *http.Client
	sleep func(context.Context, time.Duration) error // waits out a 429; tests replace it
}

// MaxRateLimitWait bounds how long one call waits, in all, when the
// verifier refuses it as rate-limited (429 with Retry-After) before giving
// up with the refusal. It is well inside a challenge's 60 s lifetime, so
// evidence waiting to be sent again stays fresh.
const MaxRateLimitWait = 20 * time.Second

// NewClient returns a client for the verifier at base (an http or https URL,
// optionally with a path prefix). hc nil means a client with
// [DefaultTimeout] that does not follow redirects, so evidence is never
// resent to another address.
func NewClient(base string, hc *http.Client) (*Client, error) {
	u, err := url.Parse(base)
	if err != nil {
		return nil, fmt.Errorf("verifier URL %q: %w", base, err)
	}
	if (u.Scheme != "http" && u.Scheme != "https") || u.Host == "" {
		return nil, fmt.Errorf("verifier URL %q: want http(s)://HOST[:PORT][/PREFIX]", base)
	}
	if u.RawQuery != "" || u.Fragment != "" || u.User != nil {
		return nil, fmt.Errorf("verifier URL %q: must not have a query, fragment or user info", base)
	}
	u.Path = strings.TrimSuffix(u.Path, "/")
	u.RawPath = ""
	if hc == nil {
		hc = &http.Client{
			Timeout:       DefaultTimeout,
			CheckRedirect: func(*http.Request, []*http.Request) error { return http.ErrUseLastResponse },
		}
	}
	return &Client{base: u, hc: hc, sleep: sleepCtx}, nil
}

func sleepCtx(ctx context.Context, d time.Duration) error {
	t := time.NewTimer(d)
	defer t.Stop()
	select {
	case <-ctx.Done():
		return ctx.Err()
	case <-t.C:
		return nil
	}
}

// do sends the request build makes; when the verifier refuses it with 429,
// it waits the Retry-After asked for (plus up to a quarter more, so that
// agents refused together do not come back together) and sends it again,
// until MaxRateLimitWait is spent. The last response is returned either way.
// A 429 is given before the verifier reads the request, so nothing was
// consumed: a nonce or evidence may be sent again.
func (c *Client) do(ctx context.Context, build func() (*http.Request, error)) (*http.Response, error) {
	var waited time.Duration
	for {
		req, err := build()
		if err != nil {
			return nil, err
		}
		resp, err := c.hc.Do(req)
		if err != nil || resp.StatusCode != http.StatusTooManyRequests {
			return resp, err
		}
		d := attest.RetryAfter(resp, time.Now(), MaxRateLimitWait)
		d += rand.N(d/4 + 1)
		if waited+d > MaxRateLimitWait {
			return resp, nil
		}
		drainClose(resp.Body)
		if err := c.sleep(ctx, d); err != nil {
			return nil, fmt.Errorf("waiting %v as the verifier asked (429 rate-limited): %w", d.Round(time.Millisecond), err)
		}
		waited += d
	}
}

// Base returns the verifier's base URL.
func (c *Client) Base() string { return c.base.String() }

func (c *Client) endpoint(path string) string {
	u := *c.base
	u.Path += path
	return u.String()
}

// Challenge is a single-use nonce from the verifier.
type Challenge struct {
	Nonce     []byte
	ExpiresAt time.Time
}

// challengeBody is the JSON of POST /v1/challenge.
type challengeBody struct {
	Nonce     string `json:"nonce"`
	ExpiresAt string `json:"expires_at"`
}

// Challenge asks the verifier for a fresh nonce.
func (c *Client) Challenge(ctx context.Context) (*Challenge, error) {
	resp, err := c.do(ctx, func() (*http.Request, error) {
		req, err := http.NewRequestWithContext(ctx, http.MethodPost, c.endpoint(challengePath), http.NoBody)
		if err == nil {
			req.Header.Set("Accept", "application/json")
		}
		return req, err
	})
	if err != nil {
		return nil, fmt.Errorf("challenge: %w", err)
	}
	defer drainClose(resp.Body)
	if resp.StatusCode != http.StatusCreated && resp.StatusCode != http.StatusOK {
		return nil, attest.ReadProblem(resp)
	}
	if err := checkMediaType(resp, "application/json"); err != nil {
		return nil, fmt.Errorf("challenge: %w", err)
	}
	body, err := readBounded(resp.Body, maxChallengeSize)
	if err != nil {
		return nil, fmt.Errorf("challenge: %w", err)
	}
	var cb challengeBody
	if err := json.Unmarshal(body, &cb); err != nil {
		return nil, fmt.Errorf("challenge: the verifier's answer is not the challenge JSON: %w", err)
	}
	nonce, err := base64.StdEncoding.DecodeString(cb.Nonce)
	if err != nil || len(nonce) != attest.NonceSize {
		return nil, fmt.Errorf("challenge: the nonce is not standard base64 of %d bytes", attest.NonceSize)
	}
	exp, err := time.Parse(time.RFC3339, cb.ExpiresAt)
	if err != nil {
		return nil, fmt.Errorf("challenge: expires_at %q is not RFC 3339", cb.ExpiresAt)
	}
	return &Challenge{Nonce: nonce, ExpiresAt: exp}, nil
}

// Issued is the verifier's answer to evidence it accepted.
type Issued struct {
	// Credential is the COSE_Sign1 CWT.
	Credential []byte
	// LogIndex is the audit log index of the issuance, from the
	// Vouch-Log-Index header; empty when the verifier sent none.
	LogIndex string
}

// Attest sends evidence and returns the credential issued for it.
func (c *Client) Attest(ctx context.Context, ev *attest.Evidence) (*Issued, error) {
	body, err := attest.EncodeEvidence(ev)
	if err != nil {
		return nil, err
	}
	resp, err := c.do(ctx, func() (*http.Request, error) {
		req, err := http.NewRequestWithContext(ctx, http.MethodPost, c.endpoint(attestPath), bytes.NewReader(body))
		if err == nil {
			req.Header.Set("Content-Type", attest.EvidenceMediaType)
			req.Header.Set("Accept", attest.CredentialMediaType+", "+attest.ProblemMediaType)
		}
		return req, err
	})
	if err != nil {
		return nil, fmt.Errorf("attest: %w", err)
	}
	defer drainClose(resp.Body)
	if resp.StatusCode != http.StatusOK {
		return nil, attest.ReadProblem(resp)
	}
	if err := checkMediaType(resp, attest.CredentialMediaType); err != nil {
		return nil, fmt.Errorf("attest: %w", err)
	}
	cred, err := readBounded(resp.Body, attest.MaxCredentialSize)
	if err != nil {
		return nil, fmt.Errorf("attest: credential: %w", err)
	}
	if len(cred) == 0 {
		return nil, errors.New("attest: the verifier answered 200 with an empty credential")
	}
	return &Issued{Credential: cred, LogIndex: resp.Header.Get(LogIndexHeader)}, nil
}

// Attest runs one attestation: it asks c for a challenge, assembles evidence
// for req over its nonce, and returns the credential the verifier issues. A
// refusal is an *attest.Error carrying the verifier's reason and detail.
func (a *Agent) Attest(ctx context.Context, c *Client, req *attest.Request) ([]byte, error) {
	iss, err := a.AttestIssued(ctx, c, req)
	if err != nil {
		return nil, err
	}
	return iss.Credential, nil
}

// AttestIssued is [Agent.Attest] returning the audit log index too.
func (a *Agent) AttestIssued(ctx context.Context, c *Client, req *attest.Request) (*Issued, error) {
	if err := req.Validate(); err != nil {
		return nil, err // before spending a nonce
	}
	ch, err := c.Challenge(ctx)
	if err != nil {
		return nil, err
	}
	a.tpm.log.Debug("challenge received", "expires_at", ch.ExpiresAt)
	ev, err := a.Evidence(ch.Nonce, req)
	if err != nil {
		return nil, err
	}
	if err := ctx.Err(); err != nil {
		return nil, err
	}
	return c.Attest(ctx, ev)
}

// readBounded reads r whole, failing if it holds more than limit bytes.
func readBounded(r io.Reader, limit int64) ([]byte, error) {
	b, err := io.ReadAll(io.LimitReader(r, limit+1))
	if err != nil {
		return nil, fmt.Errorf("reading the response: %w", err)
	}
	if int64(len(b)) > limit {
		return nil, fmt.Errorf("the response is larger than %d bytes", limit)
	}
	return b, nil
}

// checkMediaType checks the response's Content-Type.
func checkMediaType(resp *http.Response, want string) error {
	mt, _, err := mime.ParseMediaType(resp.Header.Get("Content-Type"))
	if err != nil || mt != want {
		return fmt.Errorf("the verifier answered Content-Type %q, want %q", resp.Header.Get("Content-Type"), want)
	}
	return nil
}

// drainClose reads a little of what is left, so the connection can be
// reused, and closes the body.
func drainClose(body io.ReadCloser) {
	_, _ = io.Copy(io.Discard, io.LimitReader(body, 4<<10))
	_ = body.Close()
}
