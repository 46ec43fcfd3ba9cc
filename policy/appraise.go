package policy

import (
	"bytes"
	"encoding/hex"
	"fmt"
	"slices"
	"sort"
	"strings"

	"github.com/vouch-dev/vouch/attest"
)

// Facts are what the verifier established cryptographically about one
// attestation: every field here was checked against a TPM signature before
// appraisal sees it. Appraisal compares them with reference values.
type Facts struct {
	// Verify is how the quote and firmware log were verified: the bank and
	// the quirks that were needed.
	Verify VerifyOptions
	// PCRs are the quoted values of the Verify.Bank bank, by index.
	PCRs map[int][]byte
	// SecureBoot is the secure boot state the verified log shows.
	SecureBoot bool
	// AKDigest is the SHA-256 of the AK's SubjectPublicKeyInfo.
	AKDigest []byte
	// Workload is what the canonical event log (PCR 13) measured.
	Workload Workload
}

// Workload is the agent's measured image.
type Workload struct {
	ImageRef    string
	ImageDigest string // "sha256:<hex>"
	Args        []string
	Env         map[string]string
}

// Result is the appraisal of one attestation.
type Result struct {
	RefSetID string
	Profile  string // name of the matched profile, "" if none matched
	Submods  map[string]attest.Appraisal
}

// Status is the worst status of the submodules.
func (r *Result) Status() attest.Status {
	worst := attest.StatusNone
	for _, a := range r.Submods {
		if a.Status > worst {
			worst = a.Status
		}
	}
	return worst
}

// Reasons lists every non-affirming claim's reason, submodules in name order.
func (r *Result) Reasons() []attest.ClaimReason {
	names := make([]string, 0, len(r.Submods))
	for n := range r.Submods {
		names = append(names, n)
	}
	sort.Strings(names)
	var out []attest.ClaimReason
	for _, n := range names {
		out = append(out, r.Submods[n].Reasons...)
	}
	return out
}

// Error returns the refusal for a non-affirming result: an *attest.Error
// whose reason is the first non-affirming claim's, with every reason in the
// detail. It returns nil for an affirming result.
func (r *Result) Error() error {
	reasons := r.Reasons()
	if len(reasons) == 0 {
		return nil
	}
	parts := make([]string, len(reasons))
	for i, c := range reasons {
		parts[i] = c.Detail
	}
	return &attest.Error{Reason: reasons[0].Reason, Detail: strings.Join(parts, "; ")}
}

// Appraise compares facts with the reference set. It never fails: anything
// that does not match becomes a non-affirming claim with a reason.
func Appraise(refs *RefSet, f *Facts) *Result {
	res := &Result{RefSetID: refs.ID(), Submods: map[string]attest.Appraisal{}}
	res.Submods[attest.SubmodTPM] = appraisePlatform(refs, f, res)
	res.Submods[attest.SubmodWorkload] = appraiseWorkload(refs, f)
	return res
}

func appraisePlatform(refs *RefSet, f *Facts, res *Result) attest.Appraisal {
	sb := f.SecureBoot
	a := attest.Appraisal{
		PolicyID: refs.ID(),
		Claims: &attest.AttesterClaims{
			AKDigest:   &attest.Digest{Alg: attest.HashSHA256, Value: f.AKDigest},
			SecureBoot: &sb,
			PCRBank:    f.Verify.Bank,
		},
		TrustVector: attest.TrustVector{
			InstanceIdentity: attest.IdentityTrusted, // the AK is enrolled: the pipeline checked it
			Hardware:         attest.HardwareGenuine,
			StorageOpaque:    attest.StorageHWKeys, // the agent key is fixedTPM: certified
		},
	}
	profile, mismatch := matchProfile(refs, f)
	switch {
	case profile == nil:
		a.TrustVector.Executables = attest.ExecContraindicated
		a.Reasons = append(a.Reasons, attest.ClaimReason{Reason: attest.ReasonRefsBootState, Claim: "executables", Detail: mismatch})
	default:
		res.Profile = profile.Name
		a.Claims.Platform = profile.Name
		a.TrustVector.Executables = attest.ExecApprovedBoot
		a.TrustVector.Configuration = attest.ConfigApproved
		if msg := secureBootMismatch(profile, f.SecureBoot); msg != "" {
			a.TrustVector.Configuration = attest.ConfigUnsupportable
			a.Reasons = append(a.Reasons, attest.ClaimReason{Reason: attest.ReasonRefsSecureBoot, Claim: "configuration", Detail: msg})
		}
	}
	a.Status = a.TrustVector.Status()
	return a
}

func secureBootMismatch(p *Profile, enabled bool) string {
	switch {
	case p.SecureBoot == "required" && !enabled:
		return fmt.Sprintf("secure boot is off, and profile %s requires it; turn secure boot on in the firmware", p.Name)
	case p.SecureBoot == "disabled" && enabled:
		return fmt.Sprintf("secure boot is on, and profile %s expects it off; derive a profile for this configuration", p.Name)
	}
	return ""
}

// matchProfile returns the first profile (by name) whose verification options
// cover the ones used and whose every PCR golden value matches. With none, it
// describes the closest profile's differences.
func matchProfile(refs *RefSet, f *Facts) (*Profile, string) {
	type candidate struct {
		p     *Profile
		diffs []string
	}
	var best *candidate
	considered := 0
	for i := range refs.Profiles {
		p := &refs.Profiles[i]
		if !p.Verify.Covers(f.Verify) {
			continue
		}
		considered++
		var diffs []string
		idxs := make([]int, 0, len(p.PCRs))
		for idx := range p.PCRs {
			idxs = append(idxs, idx)
		}
		slices.Sort(idxs)
		for _, idx := range idxs {
			got, ok := f.PCRs[idx]
			if !ok {
				diffs = append(diffs, fmt.Sprintf("PCR %d was not quoted", idx))
				continue
			}
			if !bytes.Equal(got, p.PCRs[idx]) {
				diffs = append(diffs, fmt.Sprintf("PCR %d is %s, expected %s", idx, short(got), short(p.PCRs[idx])))
			}
		}
		if len(diffs) == 0 {
			return p, ""
		}
		if best == nil || len(diffs) < len(best.diffs) {
			best = &candidate{p, diffs}
		}
	}
	if best == nil {
		return nil, fmt.Sprintf("no reference profile covers this platform's verification (bank %s, quirks [%s]); derive one with `vouch refs derive` from a known-good machine", f.Verify.Bank, strings.Join(f.Verify.Quirks, ","))
	}
	return nil, fmt.Sprintf("measured boot matches none of %d profiles; closest is %s: %s", considered, best.p.Name, strings.Join(best.diffs, ", "))
}

// shortID abbreviates a reference-set id ("sha256:" and 12 hex digits).
func shortID(id string) string {
	if len(id) > 19 {
		return id[:19] + "…"
	}
	return id
}

func short(b []byte) string {
	s := hex.EncodeToString(b)
	if len(s) > 16 {
		return s[:16] + "…"
	}
	return s
}

func appraiseWorkload(refs *RefSet, f *Facts) attest.Appraisal {
	w := f.Workload
	a := attest.Appraisal{
		PolicyID: refs.ID(),
		Claims:   &attest.AttesterClaims{ImageRef: w.ImageRef},
	}
	if d, err := hex.DecodeString(strings.TrimPrefix(w.ImageDigest, "sha256:")); err == nil && strings.HasPrefix(w.ImageDigest, "sha256:") {
		a.Claims.ImageDigest = &attest.Digest{Alg: attest.HashSHA256, Value: d}
	}
	deny := func(r attest.Reason, msg string) attest.Appraisal {
		a.TrustVector.Executables = attest.ExecContraindicated
		a.Reasons = append(a.Reasons, attest.ClaimReason{Reason: r, Claim: "executables", Detail: msg})
		a.Status = a.TrustVector.Status()
		return a
	}
	if slices.Contains(refs.Deny.ImageDigests, w.ImageDigest) {
		return deny(attest.ReasonRefsDenied, fmt.Sprintf("image %s is on the deny list", w.ImageDigest))
	}
	var allowed []Image
	for _, im := range refs.Images {
		if im.Digest == w.ImageDigest {
			allowed = append(allowed, im)
		}
	}
	if len(allowed) == 0 {
		return deny(attest.ReasonRefsImageDigest, fmt.Sprintf("image digest %s is not allowed by reference set %s; add it to the images of firmware-refs if this image is trusted", w.ImageDigest, shortID(refs.ID())))
	}
	repo := Repository(w.ImageRef)
	ok := false
	for _, im := range allowed {
		if im.Repository == "" || im.Repository == repo {
			ok = true
			break
		}
	}
	if !ok {
		return deny(attest.ReasonRefsImageRef, fmt.Sprintf("image %s is allowed only from %s, and the agent ran it as %s", w.ImageDigest, allowed[0].Repository, w.ImageRef))
	}
	a.TrustVector.Executables = attest.ExecApprovedRuntime
	a.Status = a.TrustVector.Status()
	return a
}

// Repository returns the repository part of an image reference: the
// reference without its "@digest" and ":tag" suffixes.
func Repository(ref string) string {
	if i := strings.IndexByte(ref, '@'); i >= 0 {
		ref = ref[:i]
	}
	if i := strings.LastIndexByte(ref, ':'); i > strings.LastIndexByte(ref, '/') {
		ref = ref[:i]
	}
	return ref
}
