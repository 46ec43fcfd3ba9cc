package policy

import (
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
	// SecureBoot is the secure boot state the verified log shows; used only
	// when Boot is nil.
	SecureBoot bool
	// Boot is the verified firmware log, classified (NewBootFacts). Without
	// it only PCR golden values and the secure boot mode are appraised.
	Boot *BootFacts
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
	// Boot is the boot appraisal against the matched (or closest) profile.
	Boot *BootResult
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
	res := &Result{RefSetID: refs.ID(), Submods: make(map[string]attest.Appraisal, 2)}
	res.Submods[attest.SubmodTPM] = appraisePlatform(refs, f, res)
	res.Submods[attest.SubmodWorkload] = appraiseWorkload(refs, f)
	return res
}

// bootFacts returns the classified boot of f, or PCR-level facts when the
// caller has no event log (golden values only).
func (f *Facts) bootFacts() *BootFacts {
	if f.Boot != nil {
		return f.Boot
	}
	return &BootFacts{Bank: Bank(f.Verify.Bank), PCRs: f.PCRs, SecureBoot: &SecureBootFacts{Enabled: f.SecureBoot}}
}

func appraisePlatform(refs *RefSet, f *Facts, res *Result) attest.Appraisal {
	b := f.bootFacts()
	sb := b.SecureBoot != nil && b.SecureBoot.Enabled
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
	boot := f.bootResult(refs, b)
	switch {
	case boot == nil:
		a.TrustVector.Executables = attest.ExecContraindicated
		a.Reasons = append(a.Reasons, attest.ClaimReason{Reason: attest.ReasonRefsNoProfile, Claim: "executables",
			Detail: fmt.Sprintf("no reference profile covers this platform's verification (bank %s, quirks [%s]); derive one with `vouch refs derive` from a known-good machine", f.Verify.Bank, strings.Join(f.Verify.Quirks, ","))})
	default:
		res.Boot = boot
		a.TrustVector.Executables = attest.ExecApprovedBoot
		a.TrustVector.Configuration = attest.ConfigApproved
		if boot.Status() != attest.StatusContraindicated {
			res.Profile = boot.Profile.Name
			a.Claims.Platform = boot.Profile.Name
		}
		for _, fd := range boot.Findings {
			applyFinding(&a.TrustVector, fd)
			a.Reasons = append(a.Reasons, attest.ClaimReason{Reason: fd.Reason, Claim: fd.Claim, Detail: fd.Detail})
		}
	}
	a.Status = a.TrustVector.Status()
	return a
}

// bootResult appraises the boot, reusing the result of an earlier
// appraisal of the same boot with the same set (see BootFacts.Cached).
func (f *Facts) bootResult(refs *RefSet, b *BootFacts) *BootResult {
	if c := b.cached.Load(); c != nil && c.refs == refs {
		return c.res
	}
	r, _ := bestBoot(refs, b, f.Verify, false)
	b.cached.Store(&cachedBoot{refs: refs, res: r})
	return r
}

// applyFinding lowers the trust vector claim a finding is about to the
// finding's value when that is worse.
func applyFinding(v *attest.TrustVector, f Finding) {
	var c *int8
	switch f.Claim {
	case "executables":
		c = &v.Executables
	case "configuration":
		c = &v.Configuration
	case "file-system":
		c = &v.FileSystem
	default:
		return
	}
	if attest.TierOf(f.Value) > attest.TierOf(*c) || (attest.TierOf(f.Value) == attest.TierOf(*c) && f.Value > *c) {
		*c = f.Value
	}
}

// shortID abbreviates a reference-set id ("sha256:" and 12 hex digits).
func shortID(id string) string {
	if len(id) > 19 {
		return id[:19] + "…"
	}
	return id
}

func appraiseWorkload(refs *RefSet, f *Facts) attest.Appraisal {
	w := f.Workload
	idx := refs.index()
	a := attest.Appraisal{
		PolicyID: refs.ID(),
		Claims:   &attest.AttesterClaims{ImageRef: w.ImageRef},
	}
	if d, err := hex.DecodeString(strings.TrimPrefix(w.ImageDigest, "sha256:")); err == nil && strings.HasPrefix(w.ImageDigest, "sha256:") {
		a.Claims.ImageDigest = &attest.Digest{Alg: attest.HashSHA256, Value: d}
	}
	refuse := func(r attest.Reason, claim string, msg string) attest.Appraisal {
		if claim == "configuration" {
			a.TrustVector.Executables = attest.ExecApprovedRuntime
			a.TrustVector.Configuration = attest.ConfigUnsupportable
		} else {
			a.TrustVector.Executables = attest.ExecContraindicated
		}
		a.Reasons = append(a.Reasons, attest.ClaimReason{Reason: r, Claim: claim, Detail: msg})
		a.Status = a.TrustVector.Status()
		return a
	}
	if idx.denyImages.has(w.ImageDigest) {
		return refuse(attest.ReasonRefsDenied, "executables", fmt.Sprintf("image %s is on the deny list", w.ImageDigest))
	}
	cands := idx.images[w.ImageDigest]
	if len(cands) == 0 {
		return refuse(attest.ReasonRefsImageDigest, "executables", fmt.Sprintf("image digest %s is not allowed by reference set %s; add it to the images of firmware-refs if this image is trusted", w.ImageDigest, shortID(refs.ID())))
	}
	repo := Repository(w.ImageRef)
	var im *Image
	for _, i := range cands {
		if c := &refs.Images[i]; c.Repository == "" || c.Repository == repo {
			im = c
			break
		}
	}
	if im == nil {
		return refuse(attest.ReasonRefsImageRef, "executables", fmt.Sprintf("image %s is allowed only from %s, and the agent ran it as %s", w.ImageDigest, refs.Images[cands[0]].Repository, w.ImageRef))
	}
	if msg := launchMismatch(im, w); msg != "" {
		return refuse(attest.ReasonRefsWorkloadConfig, "configuration", msg)
	}
	a.TrustVector.Executables = attest.ExecApprovedRuntime
	if im.Args != nil || im.Env != nil {
		a.TrustVector.Configuration = attest.ConfigApproved
	}
	a.Status = a.TrustVector.Status()
	return a
}

// launchMismatch checks a workload's arguments and environment against its
// image's rules.
func launchMismatch(im *Image, w Workload) string {
	if im.Args != nil && !slices.Equal(im.Args, w.Args) {
		return fmt.Sprintf("image %s must be launched with arguments %q, and was launched with %q", im.Digest, im.Args, w.Args)
	}
	if im.Env == nil {
		return ""
	}
	names := make([]string, 0, len(w.Env))
	for k := range w.Env {
		names = append(names, k)
	}
	slices.Sort(names)
	var forbidden, notAllowed []string
	for _, k := range names {
		kv := k + "=" + w.Env[k]
		if slices.Contains(im.Env.Forbidden, k) || slices.Contains(im.Env.Forbidden, kv) {
			forbidden = append(forbidden, k)
		} else if im.Env.Allowed != nil && !slices.Contains(im.Env.Allowed, k) && !slices.Contains(im.Env.Allowed, kv) {
			notAllowed = append(notAllowed, k)
		}
	}
	switch {
	case len(forbidden) > 0:
		return fmt.Sprintf("image %s was launched with forbidden environment variable(s) %s", im.Digest, strings.Join(forbidden, ", "))
	case len(notAllowed) > 0:
		return fmt.Sprintf("image %s was launched with environment variable(s) %s, which its rules do not allow", im.Digest, strings.Join(notAllowed, ", "))
	}
	return ""
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
