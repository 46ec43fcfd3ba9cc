package policy

import (
	"encoding/hex"
	"fmt"
	"sort"
	"strings"

	"github.com/vouch-dev/vouch/attest"
)

// maxEventPCR is the highest PCR appraised event by event when a profile
// pins no golden value for it. Events on higher PCRs (IMA, MOK lists, DRTM)
// are reported as unknown unless a golden value covers them.
const maxEventPCR = 9

// Results of one event's appraisal.
const (
	ResultMatch    = "match"
	ResultMismatch = "mismatch"
	ResultUnknown  = "unknown" // not appraised: no rule and no golden value covers it
)

// EventResult is the appraisal of one firmware event, for review tools.
type EventResult struct {
	Num      int           `json:"num"`
	PCR      int           `json:"pcr"`
	Type     string        `json:"type"`
	Class    Class         `json:"class"`
	Result   string        `json:"result"`
	By       string        `json:"by,omitempty"` // "event" rule, "pcr" golden value, or "deny" list
	Expected string        `json:"expected,omitempty"`
	Actual   string        `json:"actual,omitempty"`
	Reason   attest.Reason `json:"reason,omitempty"`
}

// Finding is one rule a boot breaks: an AR4SI claim value with the reason
// and an operator-actionable detail.
type Finding struct {
	Reason attest.Reason `json:"reason"`
	Claim  string        `json:"claim"` // "executables" or "configuration"
	Value  int8          `json:"value"` // AR4SI claim value
	Detail string        `json:"detail"`
}

// BootResult is the appraisal of a boot against one profile.
type BootResult struct {
	Profile  *Profile
	Findings []Finding
	Events   []EventResult // only when detail was asked for
}

// Status is the tier of the worst finding; affirming without findings.
func (r *BootResult) Status() attest.Status {
	st := attest.StatusAffirming
	for _, f := range r.Findings {
		if t := attest.TierOf(f.Value); t > st {
			st = t
		}
	}
	return st
}

// claimFor returns the AR4SI claim a PCR's content falls under: code PCRs
// (0, 2, 4, 9: firmware, option ROMs, boot manager, loaded files) are
// executables; the others configuration.
func claimFor(pcr int) string {
	switch pcr {
	case 0, 2, 4, 9:
		return "executables"
	}
	return "configuration"
}

type bootAppraiser struct {
	refs    *RefSet
	p       *Profile
	c       *compiledProfile
	b       *BootFacts
	detail  bool
	quiet   bool // count findings without formatting them (profile search)
	limit   int  // with quiet, stop after this many findings (0: no limit)
	res     *BootResult
	golden  [24]int8 // 0: no golden value, 1: matches, -1: differs
	sbFinds map[string][]int
}

// unrec is the claim value for something on no allowlist.
func (a *bootAppraiser) unrec(claim string) int8 {
	if a.p.Unrecognized == UnrecognizedWarning {
		if claim == "executables" {
			return attest.ExecUnrecognized
		}
		return attest.ConfigUnsafe
	}
	if claim == "executables" {
		return attest.ExecContraindicated
	}
	return attest.ConfigUnsupportable
}

func (a *bootAppraiser) find(r attest.Reason, claim string, v int8, format string, args ...any) int {
	f := Finding{Reason: r, Claim: claim, Value: v}
	if !a.quiet {
		f.Detail = fmt.Sprintf(format, args...)
	}
	a.res.Findings = append(a.res.Findings, f)
	return len(a.res.Findings) - 1
}

// AppraiseBoot appraises a classified boot against one profile. With
// detail, the result lists every event's appraisal.
func AppraiseBoot(refs *RefSet, p *Profile, b *BootFacts, detail bool) *BootResult {
	a := &bootAppraiser{refs: refs, p: p, c: p.compiled(), b: b, detail: detail, res: &BootResult{Profile: p}}
	a.run()
	return a.res
}

func (a *bootAppraiser) run() {
	idx := a.refs.index()
	for pcr, vals := range a.c.pcrs {
		got, ok := a.b.PCRs[pcr]
		a.golden[pcr] = -1
		for _, v := range vals {
			if ok && string(v) == string(got) {
				a.golden[pcr] = 1
				break
			}
		}
		if a.golden[pcr] < 0 {
			claim := claimFor(pcr)
			exp := hexShort(vals[0])
			if len(vals) > 1 {
				exp = fmt.Sprintf("one of %d values", len(vals))
			}
			if !ok {
				a.find(attest.ReasonRefsPCR, claim, a.unrec(claim), "PCR %d was not quoted; profile %s pins it", pcr, a.p.Name)
			} else {
				a.find(attest.ReasonRefsPCR, claim, a.unrec(claim), "PCR %d is %s, profile %s expects %s (events of this PCR that event rules cannot classify changed; compare with `vouch refs check`)", pcr, hexShort(got), a.p.Name, exp)
			}
		}
	}
	a.secureBoot(idx)
	for i := range a.b.Events {
		if a.quiet && a.limit > 0 && len(a.res.Findings) > a.limit {
			return // already worse than a profile seen before
		}
		a.event(&a.b.Events[i], idx)
	}
	if !a.quiet {
		a.res.Findings = mergeFindings(a.res.Findings)
	}
}

func (a *bootAppraiser) record(e *BootEvent, result, by, expected string, reason attest.Reason) {
	if !a.detail {
		return
	}
	a.res.Events = append(a.res.Events, EventResult{
		Num: e.Num, PCR: e.PCR, Type: e.TypeName(), Class: e.Class, Result: result, By: by,
		Expected: expected, Actual: actualOf(e), Reason: reason,
	})
}

func actualOf(e *BootEvent) string {
	switch e.Class {
	case ClassFirmwareVersion, ClassLoaderCommand, ClassKernelCmdline, ClassAction, ClassSecureBoot:
		return e.Text
	}
	s := hex.EncodeToString(e.Digest)
	if e.Text != "" {
		s += " (" + e.Text + ")"
	}
	return s
}

func (a *bootAppraiser) event(e *BootEvent, idx *refIndex) {
	if note, ok := idx.denyBoot[string(e.Digest)]; ok {
		a.find(attest.ReasonRefsDenied, "executables", attest.ExecContraindicated,
			"event %d (%s, PCR %d) measured %s, which is on the deny list%s", e.Num, e.Class, e.PCR, actualOf(e), denyNote(note))
		a.record(e, ResultMismatch, "deny", "not on the deny list", attest.ReasonRefsDenied)
		return
	}
	var g int8
	if e.PCR >= 0 && e.PCR < len(a.golden) {
		g = a.golden[e.PCR]
	}
	switch {
	case g > 0:
		a.record(e, ResultMatch, "pcr", "", "")
		return
	case g < 0 && !a.p.hasEventRules():
		a.record(e, ResultMismatch, "pcr", "PCR golden value", attest.ReasonRefsPCR)
		return
	case g == 0 && e.PCR > maxEventPCR:
		a.record(e, ResultUnknown, "", "", "")
		return
	}
	ok, reason, expected := a.rule(e, g < 0)
	switch {
	case ok:
		a.record(e, ResultMatch, "event", "", "")
	case g < 0 && reason == "":
		a.record(e, ResultMismatch, "pcr", "PCR golden value", attest.ReasonRefsPCR)
	default:
		a.record(e, ResultMismatch, "event", expected, reason)
	}
}

// rule applies the event's class rule. inGoldenPCR says the event's PCR
// has a golden value that differs: the PCR finding is already made, and an
// unclassified event only makes it more likely.
func (a *bootAppraiser) rule(e *BootEvent, inGoldenPCR bool) (ok bool, reason attest.Reason, expected string) {
	c := a.c
	miss := func(r attest.Reason, claim, list, format string, args ...any) (bool, attest.Reason, string) {
		a.find(r, claim, a.unrec(claim), "event %d: "+format+", which profile %s does not allow (add it to %s if it is trusted)",
			append(append([]any{e.Num}, args...), a.p.Name, list)...)
		return false, r, "one of " + list
	}
	switch e.Class {
	case ClassSeparator, ClassAction:
		return true, "", ""
	case ClassFirmwareVersion:
		if c.versions.has(string(e.Data)) {
			return true, "", ""
		}
		return miss(attest.ReasonRefsFirmware, "executables", "firmware.versions", "firmware version %q (S-CRTM)", e.Text)
	case ClassFirmware:
		if c.blobs.has(string(e.Digest)) {
			return true, "", ""
		}
		return miss(attest.ReasonRefsFirmware, "executables", "firmware.blobs", "firmware measurement %s (%s)", hexShort(e.Digest), e.TypeName())
	case ClassOptionROM:
		if c.optionROMs.has(string(e.Digest)) {
			return true, "", ""
		}
		return miss(attest.ReasonRefsOptionROM, "executables", "firmware.option_roms", "option ROM or driver %s %s", hexShort(e.Digest), e.Text)
	case ClassEFIApp:
		if c.apps.has(string(e.Digest)) {
			return true, "", ""
		}
		return miss(attest.ReasonRefsEFIApp, "executables", "efi_apps", "EFI application %s (%s) was booted", hexShort(e.Digest), orUnknown(e.Text))
	case ClassKernel, ClassBootFile:
		if c.files.has(string(e.Digest)) {
			return true, "", ""
		}
		return miss(attest.ReasonRefsKernel, "executables", "kernels or boot_files", "the boot loader loaded %s (%s)", hexShort(e.Digest), orUnknown(e.Text))
	case ClassSBAuthority:
		if c.authorities.has(string(e.Digest)) {
			return true, "", ""
		}
		return miss(attest.ReasonRefsSBAuthority, "configuration", "secure_boot.authorities", "image verification authority %s (%s)", hexShort(e.Digest), orUnknown(e.Text))
	case ClassLoaderCommand:
		if c.loaderCommands.has(e.Text) {
			return true, "", ""
		}
		return miss(attest.ReasonRefsLoader, "configuration", "loader_commands", "boot loader command %q", e.Text)
	case ClassKernelCmdline:
		if c.cmdline == nil {
			return true, "", ""
		}
		fs := c.cmdline.check(e.Params)
		if len(fs) == 0 {
			return true, "", ""
		}
		for _, f := range fs {
			v := a.unrec("configuration")
			if f.forbidden {
				v = attest.ConfigUnsupportable
			}
			a.find(attest.ReasonRefsKernelCmdline, "configuration", v, "event %d: %s (profile %s); the command line was %q", e.Num, f.msg, a.p.Name, e.Text)
		}
		return false, attest.ReasonRefsKernelCmdline, "kernel_cmdline rules"
	case ClassSecureBoot:
		if len(a.sbFinds[e.Text]) == 0 {
			return true, "", ""
		}
		r := a.res.Findings[a.sbFinds[e.Text][0]].Reason
		return false, r, "secure_boot rules"
	}
	if inGoldenPCR {
		return false, "", ""
	}
	claim := claimFor(e.PCR)
	a.find(attest.ReasonRefsBootState, claim, a.unrec(claim),
		"event %d (%s, PCR %d, digest %s) is of a kind event rules do not classify, and profile %s pins no golden value for PCR %d",
		e.Num, e.TypeName(), e.PCR, hexShort(e.Digest), a.p.Name, e.PCR)
	return false, attest.ReasonRefsBootState, "a golden value for PCR " + fmt.Sprint(e.PCR)
}

func orUnknown(s string) string {
	if s == "" {
		return "path unknown"
	}
	return s
}

// secureBoot checks the secure boot state against the profile and the deny
// lists, remembering which variable each finding is about.
func (a *bootAppraiser) secureBoot(idx *refIndex) {
	a.sbFinds = map[string][]int{}
	sbr := a.p.SecureBoot
	sb := a.b.SecureBoot
	if sb == nil {
		if sbr.Mode == SecureBootRequired {
			a.find(attest.ReasonRefsSecureBoot, "configuration", attest.ConfigUnsupportable,
				"profile %s requires secure boot, and the log's secure boot variables could not be parsed", a.p.Name)
		}
		return
	}
	switch {
	case sbr.Mode == SecureBootRequired && !sb.Enabled:
		a.sbFinds["SecureBoot"] = append(a.sbFinds["SecureBoot"], a.find(attest.ReasonRefsSecureBoot, "configuration", attest.ConfigUnsupportable,
			"secure boot is off, and profile %s requires it; turn secure boot on in the firmware", a.p.Name))
	case sbr.Mode == SecureBootDisabled && sb.Enabled:
		a.sbFinds["SecureBoot"] = append(a.sbFinds["SecureBoot"], a.find(attest.ReasonRefsSecureBoot, "configuration", attest.ConfigUnsupportable,
			"secure boot is on, and profile %s expects it off; derive a profile for this configuration", a.p.Name))
	}
	for _, v := range []struct {
		name    string
		allowed set
		actual  []string
	}{{"PK", a.c.pk, sb.PK}, {"KEK", a.c.kek, sb.KEK}, {"db", a.c.db, sb.DB}} {
		var unexpected, denied []string
		for _, e := range v.actual {
			if note, ok := idx.denyAuth[e]; ok {
				denied = append(denied, e+denyNote(note))
			} else if v.allowed != nil && !v.allowed.has(e) {
				unexpected = append(unexpected, e)
			}
		}
		if len(denied) > 0 {
			a.sbFinds[v.name] = append(a.sbFinds[v.name], a.find(attest.ReasonRefsDenied, "configuration", attest.ConfigUnsupportable,
				"%s trusts %s, on the deny list; remove it from %s (a signing key it names is compromised)", v.name, strings.Join(denied, ", "), v.name))
		}
		if len(unexpected) > 0 {
			a.sbFinds[v.name] = append(a.sbFinds[v.name], a.find(attest.ReasonRefsSBAuthority, "configuration", a.unrec("configuration"),
				"%s holds %s, which profile %s does not expect (secure_boot.%s)", v.name, abbrevList(unexpected), a.p.Name, strings.ToLower(v.name)))
		}
	}
	if missing := missingFrom(sb.dbx, a.c.dbxMin); len(missing) > 0 {
		a.sbFinds["dbx"] = append(a.sbFinds["dbx"], a.find(attest.ReasonRefsDBX, "configuration", attest.ConfigUnsupportable,
			"dbx lacks %d revocation(s) profile %s requires (%s): revoked boot components could run; apply the dbx update", len(missing), a.p.Name, abbrevList(missing)))
	}
	if sb.Enabled && len(idx.dbxRequired) > 0 {
		var missing []string
		for _, e := range idx.dbxRequired {
			if !sb.dbx.has(e.ID) {
				missing = append(missing, e.ID+denyNote(e.Note))
			}
		}
		if len(missing) > 0 {
			a.sbFinds["dbx"] = append(a.sbFinds["dbx"], a.find(attest.ReasonRefsDBX, "configuration", attest.ConfigUnsupportable,
				"dbx lacks %d revocation(s) the threat-intelligence deny list requires (%s); apply the dbx update", len(missing), abbrevList(missing)))
		}
	}
}

func missingFrom(have set, want []string) []string {
	var out []string
	for _, w := range want {
		if !have.has(w) {
			out = append(out, w)
		}
	}
	return out
}

func abbrevList(l []string) string {
	const show = 3
	short := make([]string, 0, show)
	for i, s := range l {
		if i == show {
			break
		}
		if len(s) > 30 && (strings.HasPrefix(s, "hash:") || strings.HasPrefix(s, "cert:")) {
			s = s[:21] + "…"
		}
		short = append(short, s)
	}
	if len(l) > show {
		return strings.Join(short, ", ") + fmt.Sprintf(" and %d more", len(l)-show)
	}
	return strings.Join(short, ", ")
}

// mergeFindings folds findings of one reason, claim and value into one, so
// that a boot loader with ten unknown commands gives one actionable reason.
func mergeFindings(fs []Finding) []Finding {
	if len(fs) < 2 {
		return fs
	}
	type key struct {
		r attest.Reason
		c string
		v int8
	}
	var order []key
	groups := map[key][]string{}
	for _, f := range fs {
		k := key{f.Reason, f.Claim, f.Value}
		if _, ok := groups[k]; !ok {
			order = append(order, k)
		}
		groups[k] = append(groups[k], f.Detail)
	}
	sort.SliceStable(order, func(i, j int) bool { return order[i].v > order[j].v })
	out := make([]Finding, 0, len(order))
	for _, k := range order {
		d := groups[k]
		detail := strings.Join(d[:min(len(d), 4)], "; ")
		if len(d) > 4 {
			detail += fmt.Sprintf("; and %d more", len(d)-4)
		}
		out = append(out, Finding{Reason: k.r, Claim: k.c, Value: k.v, Detail: detail})
	}
	return out
}

// bestBoot appraises a boot against every profile that covers the
// verification used, the likeliest first (most shared EFI applications and
// kernels), and returns the first affirming result or the closest one.
func bestBoot(refs *RefSet, b *BootFacts, used VerifyOptions, detail bool) (*BootResult, int) {
	idx := refs.index()
	var cands []int
	for i := range refs.Profiles {
		if refs.Profiles[i].Verify.Covers(used) {
			cands = append(cands, i)
		}
	}
	if len(cands) == 0 {
		return nil, 0
	}
	if len(cands) > 1 {
		hits := make(map[int]int, len(cands))
		for _, d := range b.components {
			for _, i := range idx.components[d] {
				hits[i]++
			}
		}
		sort.SliceStable(cands, func(x, y int) bool { return hits[cands[x]] > hits[cands[y]] })
	}
	// Search quietly (findings counted, not formatted, and a profile
	// abandoned once it is worse than the best so far), then appraise the
	// chosen profile in full.
	var best *BootResult
	var bestIdx int
	for _, i := range cands {
		a := &bootAppraiser{refs: refs, p: &refs.Profiles[i], c: refs.Profiles[i].compiled(), b: b, quiet: true, res: &BootResult{Profile: &refs.Profiles[i]}}
		if best != nil {
			a.limit = len(best.Findings)
		}
		a.run()
		if len(a.res.Findings) == 0 {
			best, bestIdx = a.res, i
			break
		}
		if best == nil || betterThan(a.res, best) {
			best, bestIdx = a.res, i
		}
	}
	return AppraiseBoot(refs, &refs.Profiles[bestIdx], b, detail), len(cands)
}

func betterThan(a, b *BootResult) bool {
	if sa, sb := a.Status(), b.Status(); sa != sb {
		return sa < sb
	}
	return len(a.Findings) < len(b.Findings)
}
