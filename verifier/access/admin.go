package access

import (
	"context"
	"crypto/rand"
	"encoding/base32"
	"errors"
	"fmt"
	"net/http"
	"net/netip"
	"regexp"
	"slices"
	"strings"
	"time"

	"github.com/vouch-dev/vouch/attest"
	"github.com/vouch-dev/vouch/policy/authz"
	"github.com/vouch-dev/vouch/verifier/audit"
	"github.com/vouch-dev/vouch/verifier/store"
)

// maxAdminBody bounds admin API request bodies.
const maxAdminBody = 64 << 10

// Limits of a delegation.
const (
	maxSelectors = 64
	maxNetworks  = 64
)

// adminHandler is an admin API handler, called with the authenticated user
// and the request body.
type adminHandler func(w http.ResponseWriter, r *http.Request, u *store.User, body []byte) error

// admin authenticates the request before h runs.
func (s *Service) admin(h adminHandler) func(http.ResponseWriter, *http.Request) error {
	return func(w http.ResponseWriter, r *http.Request) error {
		body, err := readBody(w, r, maxAdminBody)
		if err != nil {
			return err
		}
		u, err := s.authenticate(r.Context(), r, body)
		if err != nil {
			return err
		}
		return h(w, r, u, body)
	}
}

// DelegationRequest is the body of POST /v1/delegations. The delegating
// user is the authenticated one.
type DelegationRequest struct {
	Intent       string     `json:"intent"`
	ImageDigests []string   `json:"image_digests,omitempty"`
	AgentIDs     []string   `json:"agent_ids,omitempty"`
	Resources    []string   `json:"resources"`
	Actions      []string   `json:"actions,omitempty"`
	Networks     []string   `json:"networks,omitempty"`
	Window       string     `json:"window,omitempty"`
	NotBefore    *time.Time `json:"not_before,omitempty"`
	ExpiresAt    time.Time  `json:"expires_at"`
}

// DelegationView is a delegation as the admin API shows it. Status is the
// effective one ("expired" outside the validity period).
type DelegationView struct {
	ID           string     `json:"id"`
	User         string     `json:"user"`
	Intent       string     `json:"intent"`
	Status       string     `json:"status"`
	ImageDigests []string   `json:"image_digests,omitempty"`
	AgentIDs     []string   `json:"agent_ids,omitempty"`
	Resources    []string   `json:"resources"`
	Actions      []string   `json:"actions,omitempty"`
	Networks     []string   `json:"networks,omitempty"`
	Window       string     `json:"window,omitempty"`
	NotBefore    *time.Time `json:"not_before,omitempty"`
	ExpiresAt    time.Time  `json:"expires_at"`
	CreatedAt    time.Time  `json:"created_at"`
	UpdatedAt    time.Time  `json:"updated_at"`
	UpdatedBy    string     `json:"updated_by,omitempty"`
	Reason       string     `json:"reason,omitempty"`
}

// ViewOf renders a stored delegation with its status at now.
func ViewOf(d *store.Delegation, now time.Time) DelegationView {
	v := DelegationView{
		ID: d.ID, User: d.User, Intent: d.Intent, Status: d.Status,
		ImageDigests: d.ImageDigests, AgentIDs: d.AgentIDs, Resources: d.Resources, Actions: d.Actions,
		Networks: d.Networks, Window: d.Window, ExpiresAt: d.ExpiresAt, CreatedAt: d.CreatedAt,
		UpdatedAt: d.UpdatedAt, UpdatedBy: d.UpdatedBy, Reason: d.Reason,
	}
	if !d.NotBefore.IsZero() {
		nb := d.NotBefore
		v.NotBefore = &nb
	}
	if g, err := GrantOf(d); err == nil {
		v.Status = string(g.StatusAt(now))
	}
	return v
}

var selectorText = regexp.MustCompile(`^[\x21-\x7e]{1,256}$`)

// NewDelegationID returns a fresh delegation id: "dlg_" and 26 base32
// characters (128 random bits).
func NewDelegationID() (string, error) {
	b := make([]byte, 16)
	if _, err := rand.Read(b); err != nil {
		return "", err
	}
	return "dlg_" + strings.ToLower(base32.StdEncoding.WithPadding(base32.NoPadding).EncodeToString(b)), nil
}

// CheckDelegation validates a delegation request against the policy in
// force and returns the delegation to store.
func CheckDelegation(eng *authz.Engine, q *DelegationRequest, user string, now time.Time) (*store.Delegation, error) {
	bad := func(format string, args ...any) error {
		return attest.Errorf(attest.ReasonRequestMalformed, format, args...)
	}
	in, ok := eng.Intent(q.Intent)
	if !ok {
		return nil, attest.Errorf(attest.ReasonIntentUnknown, "intent %q is not in the catalogue (known: %v)", q.Intent, eng.Catalogue().Names())
	}
	if len(q.ImageDigests)+len(q.AgentIDs) == 0 {
		return nil, bad("a delegation names the agents it is for: give image digests, agent ids, or both")
	}
	if len(q.ImageDigests)+len(q.AgentIDs) > maxSelectors {
		return nil, bad("at most %d image digests and agent ids", maxSelectors)
	}
	for _, d := range q.ImageDigests {
		if !strings.Contains(d, ":") || !selectorText.MatchString(d) {
			return nil, bad("image digest %q is not alg:hex (e.g. sha256:3c4f…)", d)
		}
	}
	for _, a := range q.AgentIDs {
		if !selectorText.MatchString(a) {
			return nil, bad("agent id %q is not printable ASCII without spaces", a)
		}
	}
	if len(q.Resources) == 0 || len(q.Resources) > attest.MaxResources {
		return nil, bad("a delegation names 1..%d resources (typed ids or patterns, e.g. Document::\"customer-A/*\")", attest.MaxResources)
	}
	types := map[string]bool{}
	for _, a := range append(append([]string{}, in.Actions...), in.Elevate...) {
		for _, t := range eng.AppliesTo(a) {
			types[t] = true
		}
	}
	for _, r := range q.Resources {
		res, err := attest.ParseResource(r)
		if err != nil {
			return nil, bad("%v", err)
		}
		if !types[res.Type] {
			return nil, bad("resource %s: no action of intent %q applies to type %s", r, q.Intent, res.Type)
		}
	}
	for _, a := range q.Actions {
		if !slices.Contains(in.Actions, a) && !slices.Contains(in.Elevate, a) {
			return nil, attest.Errorf(attest.ReasonIntentAction, "action %q is not part of intent %q (%v, elevate %v)", a, q.Intent, in.Actions, in.Elevate)
		}
	}
	if len(q.Networks) > maxNetworks {
		return nil, bad("at most %d networks", maxNetworks)
	}
	var nets []string
	for _, n := range q.Networks {
		p, err := netip.ParsePrefix(n)
		if err != nil {
			if a, aerr := netip.ParseAddr(n); aerr == nil {
				p = netip.PrefixFrom(a, a.BitLen())
			} else {
				return nil, bad("network %q is not a CIDR prefix (10.0.0.0/8) or an address", n)
			}
		}
		nets = append(nets, p.Masked().String())
	}
	if q.Window != "" {
		if _, err := authz.ParseWindow(q.Window); err != nil {
			return nil, bad("%v", err)
		}
	}
	if !q.ExpiresAt.After(now) {
		return nil, bad("expires_at %s is not in the future", q.ExpiresAt.UTC().Format(time.RFC3339))
	}
	if q.ExpiresAt.Sub(now) > MaxDelegationLifetime {
		return nil, bad("a delegation lasts at most %v; delegate again when it ends", MaxDelegationLifetime)
	}
	d := &store.Delegation{
		User: user, Intent: q.Intent,
		DelegationSpec: store.DelegationSpec{
			ImageDigests: q.ImageDigests, AgentIDs: q.AgentIDs, Resources: q.Resources, Actions: q.Actions,
			Networks: nets, Window: q.Window,
		},
		Status: store.DelegationActive, CreatedAt: now.UTC(), ExpiresAt: q.ExpiresAt.UTC(), UpdatedAt: now.UTC(), UpdatedBy: user,
	}
	if q.NotBefore != nil {
		if !q.NotBefore.Before(q.ExpiresAt) {
			return nil, bad("not_before is not before expires_at")
		}
		d.NotBefore = q.NotBefore.UTC()
	}
	return d, nil
}

func (s *Service) handleCreateDelegation(w http.ResponseWriter, r *http.Request, u *store.User, body []byte) error {
	var q DelegationRequest
	if err := decodeJSON(body, &q); err != nil {
		return err
	}
	now := s.now()
	d, err := CheckDelegation(s.opts.Policy.Engine(), &q, u.ID, now)
	if err != nil {
		return err
	}
	if d.ID, err = NewDelegationID(); err != nil {
		return err
	}
	if err := s.opts.Store.CreateDelegation(r.Context(), *d); err != nil {
		return unavailable(err)
	}
	s.grants.forget(d.ID)
	if err := s.record(r.Context(), &audit.Record{Kind: audit.KindConfig, Outcome: "delegation-created", User: u.ID, Delegation: d.ID,
		Resources: d.Resources, Detail: map[string]string{"intent": d.Intent, "expires_at": d.ExpiresAt.Format(time.RFC3339)}}); err != nil {
		return err
	}
	s.log.InfoContext(r.Context(), "delegation created", "id", d.ID, "user", u.ID, "intent", d.Intent, "expires_at", d.ExpiresAt)
	return writeJSON(w, http.StatusCreated, ViewOf(d, now))
}

func (s *Service) handleListDelegations(w http.ResponseWriter, r *http.Request, u *store.User, _ []byte) error {
	user := r.URL.Query().Get("user")
	switch {
	case !u.Admin && user != "" && user != u.ID:
		return attest.Errorf(attest.ReasonUserForbidden, "only admins list other users' delegations")
	case !u.Admin:
		user = u.ID
	}
	list, err := s.opts.Store.Delegations(r.Context(), user)
	if err != nil {
		return unavailable(err)
	}
	now := s.now()
	out := make([]DelegationView, 0, len(list))
	for i := range list {
		out = append(out, ViewOf(&list[i], now))
	}
	return writeJSON(w, http.StatusOK, out)
}

// ownDelegation loads a delegation the user may manage: their own, or any
// for an admin. Others' delegations are reported as unknown.
func (s *Service) ownDelegation(ctx context.Context, u *store.User, id string) (*store.Delegation, error) {
	d, err := s.opts.Store.Delegation(ctx, id)
	if errors.Is(err, store.ErrNotFound) || (err == nil && !u.Admin && d.User != u.ID) {
		return nil, attest.Errorf(attest.ReasonDelegationUnknown, "no delegation %q of yours", id)
	}
	if err != nil {
		return nil, unavailable(err)
	}
	return d, nil
}

func (s *Service) handleGetDelegation(w http.ResponseWriter, r *http.Request, u *store.User, _ []byte) error {
	d, err := s.ownDelegation(r.Context(), u, r.PathValue("id"))
	if err != nil {
		return err
	}
	return writeJSON(w, http.StatusOK, ViewOf(d, s.now()))
}

// StatusRequest is the body of POST /v1/delegations/{id}/{suspend,resume,revoke}.
type StatusRequest struct {
	Reason string `json:"reason,omitempty"`
}

func (s *Service) handleDelegationStatus(w http.ResponseWriter, r *http.Request, u *store.User, body []byte) error {
	to, ok := map[string]string{"suspend": store.DelegationSuspended, "resume": store.DelegationActive, "revoke": store.DelegationRevoked}[r.PathValue("op")]
	if !ok {
		return attest.Errorf(attest.ReasonRequestMalformed, "unknown operation %q: use suspend, resume or revoke", r.PathValue("op"))
	}
	var q StatusRequest
	if len(body) > 0 {
		if err := decodeJSON(body, &q); err != nil {
			return err
		}
	}
	if len(q.Reason) > 512 {
		return attest.Errorf(attest.ReasonRequestMalformed, "reason is longer than 512 bytes")
	}
	d, err := s.ownDelegation(r.Context(), u, r.PathValue("id"))
	if err != nil {
		return err
	}
	now := s.now()
	ev, err := s.opts.Store.SetDelegationStatus(r.Context(), d.ID, to, u.ID, q.Reason, now)
	if errors.Is(err, store.ErrStatus) {
		return attest.Errorf(attest.ReasonRequestMalformed, "%v", err)
	}
	if err != nil {
		return unavailable(err)
	}
	// Decisions in this process see the change at once; other replicas
	// within DelegationCacheTTL.
	s.grants.forget(d.ID)
	detail := map[string]string{"reason": q.Reason, "seq": fmt.Sprint(ev.Seq)}
	if to == store.DelegationSuspended || to == store.DelegationRevoked {
		// Relying parties that check credentials offline learn it from the
		// revocation feed: every live credential of the delegation goes in.
		n, err := s.revokeDelegated(r.Context(), d.ID, to, u.ID, now)
		if err != nil {
			return err
		}
		detail["credentials_revoked"] = fmt.Sprint(n)
	}
	if err := s.record(r.Context(), &audit.Record{Kind: audit.KindRevocation, Outcome: ev.Event, User: u.ID, Delegation: d.ID,
		Detail: detail}); err != nil {
		return err
	}
	s.log.InfoContext(r.Context(), "delegation "+ev.Event, "id", d.ID, "by", u.ID, "reason", q.Reason, "seq", ev.Seq)
	d, err = s.opts.Store.Delegation(r.Context(), d.ID)
	if err != nil {
		return unavailable(err)
	}
	return writeJSON(w, http.StatusOK, ViewOf(d, now))
}

// UserRequest is the body of POST /v1/users.
type UserRequest struct {
	ID        string `json:"id"`
	PublicKey string `json:"public_key"` // PEM PUBLIC KEY, or base64 DER SubjectPublicKeyInfo
	Admin     bool   `json:"admin,omitempty"`
}

// UserView is a user as the admin API shows it.
type UserView struct {
	ID        string    `json:"id"`
	Admin     bool      `json:"admin"`
	KeyDigest string    `json:"key_sha256"`
	CreatedAt time.Time `json:"created_at"`
	CreatedBy string    `json:"created_by,omitempty"`
	Disabled  bool      `json:"disabled,omitempty"`
}

// UserViewOf renders a stored user.
func UserViewOf(u *store.User) UserView {
	return UserView{ID: u.ID, Admin: u.Admin, KeyDigest: fmt.Sprintf("%x", store.KeyDigest(u.PublicKey)), CreatedAt: u.CreatedAt, CreatedBy: u.CreatedBy, Disabled: u.DisabledAt != nil}
}

var userID = regexp.MustCompile(`^[A-Za-z0-9][A-Za-z0-9._@-]{0,127}$`)

// CheckUser validates a user registration.
func CheckUser(q *UserRequest, by string, now time.Time) (*store.User, error) {
	if !userID.MatchString(q.ID) {
		return nil, attest.Errorf(attest.ReasonRequestMalformed, "user id %q: letters, digits, '.', '_', '@', '-'; at most 128", q.ID)
	}
	der, err := ParsePublicKey([]byte(q.PublicKey))
	if err != nil {
		return nil, attest.Errorf(attest.ReasonRequestMalformed, "%v", err)
	}
	return &store.User{ID: q.ID, PublicKey: der, Admin: q.Admin, CreatedAt: now.UTC(), CreatedBy: by}, nil
}

func (s *Service) handleAddUser(w http.ResponseWriter, r *http.Request, u *store.User, body []byte) error {
	if !u.Admin {
		return attest.Errorf(attest.ReasonUserForbidden, "only admins register users")
	}
	var q UserRequest
	if err := decodeJSON(body, &q); err != nil {
		return err
	}
	nu, err := CheckUser(&q, u.ID, s.now())
	if err != nil {
		return err
	}
	if err := s.opts.Store.AddUser(r.Context(), *nu); errors.Is(err, store.ErrExists) {
		return attest.Errorf(attest.ReasonRequestMalformed, "user %q or that key is already registered", q.ID)
	} else if err != nil {
		return unavailable(err)
	}
	if err := s.record(r.Context(), &audit.Record{Kind: audit.KindConfig, Outcome: "user-added", User: u.ID,
		Detail: map[string]string{"user": nu.ID, "admin": fmt.Sprint(nu.Admin)}}); err != nil {
		return err
	}
	return writeJSON(w, http.StatusCreated, UserViewOf(nu))
}

func (s *Service) handleListUsers(w http.ResponseWriter, r *http.Request, u *store.User, _ []byte) error {
	if !u.Admin {
		return attest.Errorf(attest.ReasonUserForbidden, "only admins list users")
	}
	list, err := s.opts.Store.Users(r.Context())
	if err != nil {
		return unavailable(err)
	}
	out := make([]UserView, 0, len(list))
	for i := range list {
		out = append(out, UserViewOf(&list[i]))
	}
	return writeJSON(w, http.StatusOK, out)
}
