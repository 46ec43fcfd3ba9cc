package policy

import (
	"bytes"
	"errors"
	"fmt"
	"sort"

	"github.com/GoogleCloudPlatform/confidential-space/server/coscel"
	csextract "github.com/GoogleCloudPlatform/confidential-space/server/extract"
	"github.com/google/go-eventlog/cel"

	"github.com/vouch-dev/vouch/attest"
)

// VerifyCandidates lists the verification options a verifier tries for a
// reference set: the strict default first, then each distinct option set
// some profile allows, fewest relaxations first. A relaxed verification only
// counts if a profile that allows it also matches (VerifyOptions.Covers).
// Computed once when the set is loaded.
func (r *RefSet) VerifyCandidates() []VerifyOptions {
	if r.idx != nil && r.idx.verify != nil {
		return r.idx.verify
	}
	return verifyCandidates(r)
}

func verifyCandidates(r *RefSet) []VerifyOptions {
	seen := map[string]bool{}
	out := []VerifyOptions{{Bank: "sha256"}}
	seen[out[0].Key()] = true
	var extra []VerifyOptions
	for _, p := range r.Profiles {
		if !seen[p.Verify.Key()] {
			seen[p.Verify.Key()] = true
			extra = append(extra, p.Verify)
		}
	}
	sort.SliceStable(extra, func(i, j int) bool { return len(extra[i].Quirks) < len(extra[j].Quirks) })
	return append(out, extra...)
}

// CheckOptions configure an offline check.
type CheckOptions struct {
	// Profile, if set, is the only profile appraised against.
	Profile string
}

// Report is an offline appraisal of a firmware log (and optionally a
// workload CEL), event by event.
type Report struct {
	RefSetID   string        `json:"refs"`
	Profile    string        `json:"profile,omitempty"`
	Considered int           `json:"profiles_considered"`
	Verify     VerifyOptions `json:"verify"`
	Status     attest.Status `json:"-"`
	StatusName string        `json:"status"`
	// StateError says go-eventlog could not parse the log's state: the
	// verifier would refuse it whatever the reference values say.
	StateError string            `json:"state_error,omitempty"`
	Findings   []Finding         `json:"findings,omitempty"`
	Events     []EventResult     `json:"events"`
	Workload   *attest.Appraisal `json:"workload,omitempty"`
}

// Check appraises a firmware event log offline, as the verifier would
// appraise a quote whose PCRs the log replays to, and reports every event's
// result. celLog, if not empty, is the workload's canonical event log.
func Check(refs *RefSet, eventLog, celLog []byte, opts CheckOptions) (*Report, error) {
	rep := &Report{RefSetID: refs.ID()}
	var boot *BootFacts
	var firstErr error
	cands := refs.VerifyCandidates()
	if opts.Profile != "" {
		p := refs.Profile(opts.Profile)
		if p == nil {
			return nil, fmt.Errorf("reference set %s has no profile %q", shortID(refs.ID()), opts.Profile)
		}
		cands = []VerifyOptions{p.Verify}
	}
	for _, cand := range cands {
		v := cand
		b, stateErr, err := OfflineBoot(eventLog, &v, false)
		if err != nil {
			if firstErr == nil {
				firstErr = err
			}
			continue
		}
		if stateErr == nil {
			boot, rep.Verify, rep.StateError = b, v, ""
			break
		}
		if boot == nil {
			boot, rep.Verify, rep.StateError = b, v, stateErr.Error()
		}
	}
	if boot == nil {
		if firstErr == nil {
			firstErr = errors.New("no verification option of the reference set applies to this log")
		}
		return nil, firstErr
	}
	var res *BootResult
	if opts.Profile != "" {
		p := refs.Profile(opts.Profile)
		if p == nil {
			return nil, fmt.Errorf("reference set %s has no profile %q", shortID(refs.ID()), opts.Profile)
		}
		res, rep.Considered = AppraiseBoot(refs, p, boot, true), 1
	} else {
		res, rep.Considered = bestBoot(refs, boot, rep.Verify, true)
	}
	if res == nil {
		rep.Status = attest.StatusContraindicated
		rep.Findings = []Finding{{Reason: attest.ReasonRefsNoProfile, Claim: "executables", Value: attest.ExecContraindicated,
			Detail: fmt.Sprintf("no profile covers verification %s; derive one with `vouch refs derive`", rep.Verify.Key())}}
		rep.Events = eventsUnappraised(boot)
	} else {
		rep.Profile, rep.Findings, rep.Events, rep.Status = res.Profile.Name, res.Findings, res.Events, res.Status()
	}
	if len(celLog) > 0 {
		w, err := ParseWorkloadCEL(celLog)
		if err != nil {
			return nil, err
		}
		a := appraiseWorkload(refs, &Facts{Workload: *w})
		rep.Workload = &a
		if a.Status > rep.Status {
			rep.Status = a.Status
		}
	}
	rep.StatusName = rep.Status.String()
	return rep, nil
}

func eventsUnappraised(b *BootFacts) []EventResult {
	out := make([]EventResult, len(b.Events))
	for i := range b.Events {
		e := &b.Events[i]
		out[i] = EventResult{Num: e.Num, PCR: e.PCR, Type: e.TypeName(), Class: e.Class, Result: ResultUnknown, Actual: actualOf(e)}
	}
	return out
}

// Profile returns the profile of that name, or nil.
func (r *RefSet) Profile(name string) *Profile {
	i := sort.Search(len(r.Profiles), func(i int) bool { return r.Profiles[i].Name >= name })
	if i < len(r.Profiles) && r.Profiles[i].Name == name {
		return &r.Profiles[i]
	}
	return nil
}

// ParseWorkloadCEL reads a workload's canonical event log (COS TLV records
// on PCR 13) offline: every record's content must match its digests. It
// does not replay it against a quote; the verifier does that.
func ParseWorkloadCEL(raw []byte) (*Workload, error) {
	if len(raw) > MaxEventLogSize {
		return nil, fmt.Errorf("canonical event log is %d bytes; at most %d are read", len(raw), MaxEventLogSize)
	}
	log, err := cel.DecodeToCEL(bytes.NewBuffer(raw))
	if err != nil {
		return nil, fmt.Errorf("decoding the canonical event log: %w", err)
	}
	for i, r := range log.Records() {
		tlv, err := coscel.ParseToCOSTLV(r.Content)
		if err != nil {
			return nil, fmt.Errorf("record %d is not a COS TLV event: %w", i, err)
		}
		if err := cel.VerifyDigests(tlv, r.Digests); err != nil {
			return nil, fmt.Errorf("record %d: content does not match its digest: %w", i, err)
		}
	}
	st, err := csextract.VerifiedCOSState(log, uint8(cel.PCRType), csextract.Options{})
	if err != nil {
		return nil, fmt.Errorf("the canonical event log is not a valid launch: %w", err)
	}
	c := st.GetContainer()
	return &Workload{ImageRef: c.GetImageReference(), ImageDigest: c.GetImageDigest(), Args: c.GetArgs(), Env: c.GetEnvVars()}, nil
}
