package access

import (
	"bytes"
	"context"
	"crypto"
	"encoding/json"
	"fmt"
	"io"
	"net/http"
	"net/url"
	"strings"
	"time"

	"github.com/vouch-dev/vouch/attest"
)

// Client calls the admin API as one user, signing every request with the
// user's key.
type Client struct {
	base string
	user string
	key  crypto.Signer
	hc   *http.Client
	now  func() time.Time
}

// NewClient returns a client of the verifier at base for user. key is the
// user's private key; hc nil means a client with a 10 s timeout.
func NewClient(base, user string, key crypto.Signer, hc *http.Client) (*Client, error) {
	u, err := url.Parse(base)
	if err != nil || (u.Scheme != "http" && u.Scheme != "https") || u.Host == "" {
		return nil, fmt.Errorf("verifier URL %q: want http(s)://HOST[:PORT]", base)
	}
	if _, err := algorithmOf(key.Public()); err != nil {
		return nil, err
	}
	if hc == nil {
		hc = &http.Client{Timeout: 10 * time.Second}
	}
	return &Client{base: strings.TrimSuffix(base, "/"), user: user, key: key, hc: hc, now: time.Now}, nil
}

func (c *Client) do(ctx context.Context, method, path string, in, out any) error {
	var body []byte
	if in != nil {
		var err error
		if body, err = json.Marshal(in); err != nil {
			return err
		}
	}
	req, err := http.NewRequestWithContext(ctx, method, c.base+path, bytes.NewReader(body))
	if err != nil {
		return err
	}
	if in != nil {
		req.Header.Set("Content-Type", "application/json")
	}
	if err := SignRequest(req, body, c.user, c.key, c.now()); err != nil {
		return err
	}
	resp, err := c.hc.Do(req)
	if err != nil {
		return err
	}
	defer resp.Body.Close()
	if resp.StatusCode/100 != 2 {
		return attest.ReadProblem(resp)
	}
	if out == nil {
		return nil
	}
	return json.NewDecoder(io.LimitReader(resp.Body, 16<<20)).Decode(out)
}

// CreateDelegation creates a delegation from the client's user.
func (c *Client) CreateDelegation(ctx context.Context, q *DelegationRequest) (*DelegationView, error) {
	var v DelegationView
	return &v, c.do(ctx, http.MethodPost, "/v1/delegations", q, &v)
}

// Delegations lists the user's delegations (an admin may name another
// user, or "" for everyone's).
func (c *Client) Delegations(ctx context.Context, user string) ([]DelegationView, error) {
	path := "/v1/delegations"
	if user != "" {
		path += "?user=" + url.QueryEscape(user)
	}
	var v []DelegationView
	return v, c.do(ctx, http.MethodGet, path, nil, &v)
}

// Delegation returns one delegation.
func (c *Client) Delegation(ctx context.Context, id string) (*DelegationView, error) {
	var v DelegationView
	return &v, c.do(ctx, http.MethodGet, "/v1/delegations/"+url.PathEscape(id), nil, &v)
}

// SetStatus suspends, resumes or revokes a delegation (op is "suspend",
// "resume" or "revoke").
func (c *Client) SetStatus(ctx context.Context, id, op, reason string) (*DelegationView, error) {
	var v DelegationView
	return &v, c.do(ctx, http.MethodPost, "/v1/delegations/"+url.PathEscape(id)+"/"+op, &StatusRequest{Reason: reason}, &v)
}

// AddUser registers a user (admins only).
func (c *Client) AddUser(ctx context.Context, q *UserRequest) (*UserView, error) {
	var v UserView
	return &v, c.do(ctx, http.MethodPost, "/v1/users", q, &v)
}

// Users lists users (admins only).
func (c *Client) Users(ctx context.Context) ([]UserView, error) {
	var v []UserView
	return v, c.do(ctx, http.MethodGet, "/v1/users", nil, &v)
}
