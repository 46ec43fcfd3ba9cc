package attest

import (
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net/http"
	"strings"
)

// ProblemMediaType is the Content-Type of an RFC 9457 problem document.
const ProblemMediaType = "application/problem+json"

// Problem is an RFC 9457 problem document. Type is ProblemBase + Reason;
// Reason repeats the identifier as an extension member so that clients need
// not parse the URI.
type Problem struct {
	Type     string `json:"type"`
	Title    string `json:"title"`
	Status   int    `json:"status"`
	Detail   string `json:"detail,omitempty"`
	Instance string `json:"instance,omitempty"`
	Reason   Reason `json:"reason"`
	// Appraisal carries the EAR appraisals of a refused attestation, so that
	// an operator sees every non-affirming claim, not only the first.
	Appraisal map[string]Appraisal `json:"appraisal,omitempty"`
}

// ProblemFor builds the problem document of err with the given HTTP status.
// The title is the reason in words; the detail is the error's detail.
func ProblemFor(status int, err error) *Problem {
	p := &Problem{Status: status, Reason: ReasonOf(err)}
	p.Type = ProblemBase + string(p.Reason)
	p.Title = strings.ReplaceAll(string(p.Reason), "-", " ")
	var e *Error
	if errors.As(err, &e) {
		p.Detail = e.Detail
	} else if p.Reason == ReasonInternal {
		p.Detail = "the server failed; the error is in its log"
	}
	return p
}

// WriteProblem writes p as the response.
func WriteProblem(w http.ResponseWriter, p *Problem) {
	w.Header().Set("Content-Type", ProblemMediaType)
	w.Header().Set("Cache-Control", "no-store")
	w.WriteHeader(p.Status)
	_ = json.NewEncoder(w).Encode(p)
}

// maxProblemSize bounds a problem document read from a peer.
const maxProblemSize = 64 << 10

// ReadProblem turns a non-2xx response into an *Error carrying the server's
// reason and detail. Responses that are not problem documents become an
// *Error with ReasonUnavailable (5xx) or ReasonRequestMalformed (4xx).
func ReadProblem(resp *http.Response) error {
	body, _ := io.ReadAll(io.LimitReader(resp.Body, maxProblemSize))
	var p Problem
	if strings.HasPrefix(resp.Header.Get("Content-Type"), ProblemMediaType) && json.Unmarshal(body, &p) == nil && p.Reason != "" {
		return &Error{Reason: p.Reason, Detail: p.Detail, Err: &ProblemError{Problem: p}}
	}
	r := ReasonRequestMalformed
	if resp.StatusCode >= 500 {
		r = ReasonUnavailable
	}
	return &Error{Reason: r, Detail: fmt.Sprintf("the server answered %s: %.200s", resp.Status, strings.TrimSpace(string(body)))}
}

// ProblemError keeps the whole problem document a server sent, for callers
// that want its appraisal.
type ProblemError struct{ Problem Problem }

func (e *ProblemError) Error() string { return e.Problem.Type + ": " + e.Problem.Detail }
