package main

import (
	"context"
	"net/http"
	"strings"

	"github.com/vouch-dev/vouch/agentside"
	"github.com/vouch-dev/vouch/attest"
)

// ElevateHeader asks the sidecar to run one request with a just-in-time
// elevation: "Vouch-Elevate: <action> <resource>", e.g.
//
//	Vouch-Elevate: documents:write Document::"customer-A/report-7"
//
// The sidecar asks the verifier for a single-use credential for exactly that
// action and resource (POST /v1/elevate, with the standing credential and a
// proof of possession) and sends this one request with it. The header is
// never forwarded.
const ElevateHeader = "Vouch-Elevate"

// maxElevateHeader bounds the header (an action and a Cedar entity id).
const maxElevateHeader = 1024

// elevatedKey carries a request's single-use credential to the transport.
type elevatedKey struct{}

// elevatingTransport sends a request with the single-use credential its
// context carries, else with the standing one.
type elevatingTransport struct {
	standing *agentside.Transport
}

func (t elevatingTransport) RoundTrip(r *http.Request) (*http.Response, error) {
	cred, ok := r.Context().Value(elevatedKey{}).([]byte)
	if !ok {
		return t.standing.RoundTrip(r)
	}
	tr := *t.standing
	tr.Credential = func() []byte { return cred }
	return tr.RoundTrip(r)
}

// parseElevate splits the header into action and resource.
func parseElevate(v string) (action, resource string, err error) {
	if len(v) > maxElevateHeader {
		return "", "", attest.Errorf(attest.ReasonRequestMalformed, "%s is %d bytes, over the %d-byte bound", ElevateHeader, len(v), maxElevateHeader)
	}
	action, resource, ok := strings.Cut(strings.TrimSpace(v), " ")
	resource = strings.TrimSpace(resource)
	if !ok || action == "" || resource == "" {
		return "", "", attest.Errorf(attest.ReasonRequestMalformed, `%s must be "<action> <resource>", e.g. %s: documents:write Document::"customer-A/report-7"`, ElevateHeader, ElevateHeader)
	}
	return action, resource, nil
}

// elevate obtains the single-use credential r asks for with ElevateHeader
// and returns r carrying it; r unchanged when it asks for none. A refusal
// is answered here (with the verifier's reason) and nil returned.
func (s *sidecar) elevate(w http.ResponseWriter, r *http.Request) *http.Request {
	v := r.Header.Values(ElevateHeader)
	if len(v) == 0 {
		return r
	}
	if len(v) > 1 {
		s.elevationRefused(w, attest.Errorf(attest.ReasonRequestMalformed, "one %s header per request", ElevateHeader))
		return nil
	}
	action, resource, err := parseElevate(v[0])
	if err != nil {
		s.elevationRefused(w, err)
		return nil
	}
	standing := s.renewer.Credential()
	if standing == nil {
		s.unavailable(w)
		return nil
	}
	iss, err := s.client.Elevate(r.Context(), standing, s.renewer.Key(), action, resource)
	if err != nil {
		s.log.Warn("elevation refused", "action", action, "resource", resource, "reason", attest.ReasonOf(err), "error", err)
		s.elevationRefused(w, err)
		return nil
	}
	s.metrics.elevations.WithLabelValues("granted").Inc()
	return r.WithContext(context.WithValue(r.Context(), elevatedKey{}, iss.Credential))
}

// elevationRefused answers a refused elevation with the verifier's reason:
// 503 or 429 when the verifier could not decide, 400 for a malformed
// header, else 403.
func (s *sidecar) elevationRefused(w http.ResponseWriter, err error) {
	status := http.StatusForbidden
	switch attest.ReasonOf(err) {
	case attest.ReasonUnavailable, attest.ReasonInternal:
		status = http.StatusServiceUnavailable
	case attest.ReasonRateLimited:
		status = http.StatusTooManyRequests
	case attest.ReasonRequestMalformed:
		status = http.StatusBadRequest
	}
	s.metrics.elevations.WithLabelValues("refused").Inc()
	attest.WriteProblem(w, attest.ProblemFor(status, err))
}
