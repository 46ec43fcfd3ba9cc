package policy

import (
	"encoding/hex"
	"errors"
	"fmt"
	"regexp"
	"slices"
	"strings"

	"go.yaml.in/yaml/v3"
)

// Profile is the expected boot state of one kind of platform: how its
// evidence is verified, which boot components it may run (per event class,
// several allowed values each, for fleets running mixed versions), its secure
// boot and kernel command-line rules, and PCR golden values for whatever the
// event-level rules cannot classify.
//
// A PCR with a golden value is appraised as a whole (the fallback); a boot
// PCR (0-9) without one is appraised event by event, and then every one of
// its events must be classified and allowed. Deny lists apply to every event
// whichever way its PCR is appraised.
type Profile struct {
	Name        string `yaml:"name"`
	Description string `yaml:"description,omitempty"`
	Source      string `yaml:"source,omitempty"` // where it was derived from
	// Verify says how this platform's quote and firmware log are verified,
	// including the quirks it needs. Quirks are per profile, never global.
	Verify VerifyOptions `yaml:"verify"`
	// Unrecognized is what a boot component, loader command or kernel
	// parameter on none of the profile's allowlists makes the appraisal:
	// "contraindicated" (default) or "warning" (to observe a rollout before
	// pinning it; the verifier issues for warnings only with --allow-warning).
	// Deny-list hits, forbidden parameters, secure boot and dbx findings are
	// always contraindicated.
	Unrecognized string `yaml:"unrecognized,omitempty"`
	// SecureBoot holds the secure boot rules. In YAML it may also be just the
	// mode, as in schema v1: `secure_boot: required`.
	SecureBoot SecureBootRules `yaml:"secure_boot"`
	// Firmware lists the allowed platform firmware (PCR 0) and option ROMs
	// (PCR 2).
	Firmware FirmwareRules `yaml:"firmware,omitempty"`
	// EFIApps are the allowed EFI applications (PCR 4): shim, boot loaders,
	// systemd-boot, unified kernel images, by PE/COFF (Authenticode) digest.
	EFIApps DigestList `yaml:"efi_apps,omitempty"`
	// Kernels are the allowed kernels a boot loader measured (PCR 9, file
	// digests). BootFiles are the other files it measured (initrd, grub.cfg,
	// modules lists, the initrd the kernel's EFI stub measured). File names
	// in the log are not measured, so an event is allowed if its digest is in
	// either list; the split is for the reader.
	Kernels   DigestList `yaml:"kernels,omitempty"`
	BootFiles DigestList `yaml:"boot_files,omitempty"`
	// LoaderCommands are the GRUB commands (PCR 8) allowed, other than the
	// kernel command line, as measured without their "grub_cmd" prefix.
	LoaderCommands []string `yaml:"loader_commands,omitempty"`
	// KernelCmdline constrains the kernel command line the boot loader
	// measured (PCR 8).
	KernelCmdline *CmdlineRules `yaml:"kernel_cmdline,omitempty"`
	// PCRs are golden values of the verified bank, by PCR index; a PCR
	// matches if it equals any of its values. In YAML a value or a list.
	PCRs map[int]PCRValues `yaml:"pcrs,omitempty"`

	c *compiledProfile
}

// Secure boot modes.
const (
	SecureBootRequired = "required"
	SecureBootDisabled = "disabled"
	SecureBootAny      = "any"
)

// SecureBootRules are a profile's secure boot expectations. Entries name a
// signature database entry: a well-known certificate by name
// ("MS_WINDOWS_PROD_PCA_2011", "MS_THIRD_PARTY_UEFI_CA_2011",
// "MS_THIRD_PARTY_KEK_CA_2011", "GCE_DEFAULT_PK"), any other certificate as
// "cert:" and the SHA-256 of its DER, or a hash entry as "hash:" and hex.
type SecureBootRules struct {
	// Mode is "required", "disabled" or "any" (default).
	Mode string `yaml:"mode"`
	// PK, KEK and DB are the entries each variable may hold: every entry
	// measured must be listed. Omitted: not checked.
	PK  EntryList `yaml:"pk,omitempty"`
	KEK EntryList `yaml:"kek,omitempty"`
	DB  EntryList `yaml:"db,omitempty"`
	// DBXMin are revocations the dbx must contain (at least these).
	DBXMin EntryList `yaml:"dbx_min,omitempty"`
	// Authorities are the allowed EV_EFI_VARIABLE_AUTHORITY events (PCR 7):
	// the db or shim entries that verified the loaded images, and shim's
	// SBAT level, by event digest.
	Authorities DigestList `yaml:"authorities,omitempty"`
}

// UnmarshalYAML accepts the v1 form (a mode string) or the rules map.
func (s *SecureBootRules) UnmarshalYAML(n *yaml.Node) error {
	if n.Kind == yaml.ScalarNode {
		return n.Decode(&s.Mode)
	}
	type plain SecureBootRules
	return n.Decode((*plain)(s))
}

// FirmwareRules list the platform firmware a profile allows.
type FirmwareRules struct {
	// Versions are the allowed S-CRTM versions (EV_S_CRTM_VERSION data, hex).
	Versions []HexBytes `yaml:"versions,omitempty"`
	// Blobs are the other allowed PCR 0 measurements by digest: firmware
	// volumes, S-CRTM contents, POST code, platform (non-host) information.
	Blobs DigestList `yaml:"blobs,omitempty"`
	// OptionROMs are the allowed PCR 2 measurements: option ROMs, boot and
	// runtime services drivers loaded from adapters.
	OptionROMs DigestList `yaml:"option_roms,omitempty"`
}

// CmdlineRules constrain a kernel command line. A parameter entry is a name
// ("init": any value) or a name and value ("selinux=0": that value only).
type CmdlineRules struct {
	// Exact, if set, lists the complete command lines allowed (parameters
	// separated by single spaces, without the kernel path).
	Exact []string `yaml:"exact,omitempty"`
	// Allowed, if set, lists every parameter that may appear.
	Allowed []string `yaml:"allowed,omitempty"`
	// Forbidden lists parameters that must not appear.
	Forbidden []string `yaml:"forbidden,omitempty"`
}

// DigestList is a list of allowed digests, each with an optional note. In
// YAML an item is hex, or a map {digest: hex, note: text}.
type DigestList []DigestItem

// DigestItem is one allowed digest.
type DigestItem struct {
	Digest HexBytes `yaml:"digest"`
	Note   string   `yaml:"note,omitempty"`
}

// UnmarshalYAML accepts a bare hex string.
func (d *DigestItem) UnmarshalYAML(n *yaml.Node) error {
	if n.Kind == yaml.ScalarNode {
		return n.Decode(&d.Digest)
	}
	type plain DigestItem
	return n.Decode((*plain)(d))
}

// MarshalYAML writes a bare hex string when there is no note.
func (d DigestItem) MarshalYAML() (any, error) {
	if d.Note == "" {
		return hex.EncodeToString(d.Digest), nil
	}
	type plain DigestItem
	return plain(d), nil
}

// EntryList is a list of signature database entries (see SecureBootRules),
// each with an optional note. In YAML an item is the entry string, or a map
// {id: entry, note: text}.
type EntryList []EntryItem

// EntryItem is one signature database entry.
type EntryItem struct {
	ID   string `yaml:"id"`
	Note string `yaml:"note,omitempty"`
}

// UnmarshalYAML accepts a bare entry string.
func (e *EntryItem) UnmarshalYAML(n *yaml.Node) error {
	if n.Kind == yaml.ScalarNode {
		return n.Decode(&e.ID)
	}
	type plain EntryItem
	return n.Decode((*plain)(e))
}

// MarshalYAML writes a bare string when there is no note.
func (e EntryItem) MarshalYAML() (any, error) {
	if e.Note == "" {
		return e.ID, nil
	}
	type plain EntryItem
	return plain(e), nil
}

// PCRValues are the allowed values of one PCR. In YAML a hex string or a
// list of them.
type PCRValues []HexBytes

// UnmarshalYAML accepts one value or a list.
func (v *PCRValues) UnmarshalYAML(n *yaml.Node) error {
	if n.Kind == yaml.ScalarNode {
		var h HexBytes
		if err := n.Decode(&h); err != nil {
			return err
		}
		*v = PCRValues{h}
		return nil
	}
	return n.Decode((*[]HexBytes)(v))
}

// MarshalYAML writes a single value as a scalar.
func (v PCRValues) MarshalYAML() (any, error) {
	if len(v) == 1 {
		return hex.EncodeToString(v[0]), nil
	}
	return []HexBytes(v), nil
}

// Unrecognized policies.
const (
	UnrecognizedContraindicated = "contraindicated"
	UnrecognizedWarning         = "warning"
)

var profileName = regexp.MustCompile(`^[a-z0-9][a-z0-9._-]{0,127}$`)

var entryID = regexp.MustCompile(`^((cert|hash):[0-9a-f]{40,128}|[A-Z][A-Z0-9_]{2,63})$`)

// Limits of one profile's lists.
const (
	maxListLen = 100_000
	maxParams  = 4096
)

// validate checks a profile, normalises it and compiles its lookups.
func (p *Profile) validate() error {
	if !profileName.MatchString(p.Name) {
		return fmt.Errorf("name %q: use 1-128 lowercase letters, digits, '.', '_' or '-'", p.Name)
	}
	if p.Verify.Bank == "" {
		p.Verify.Bank = "sha256"
	}
	size, ok := bankSizes[p.Verify.Bank]
	if !ok {
		return fmt.Errorf("verify.bank %q: use sha256, sha384 or sha1", p.Verify.Bank)
	}
	if p.Verify.Bank == "sha1" && !p.Verify.Has(QuirkSHA1) {
		return fmt.Errorf("verify.bank sha1 needs the %q quirk, stated explicitly", QuirkSHA1)
	}
	for _, q := range p.Verify.Quirks {
		if !slices.Contains(KnownQuirks, q) {
			return fmt.Errorf("unknown quirk %q; known: %s", q, strings.Join(KnownQuirks, ", "))
		}
	}
	slices.Sort(p.Verify.Quirks)
	p.Verify.Quirks = slices.Compact(p.Verify.Quirks)
	switch p.Verify.Loader {
	case "none":
		p.Verify.Loader = ""
	case "", "grub":
	default:
		return fmt.Errorf("verify.loader %q: use grub or none", p.Verify.Loader)
	}
	switch p.Unrecognized {
	case "":
		p.Unrecognized = UnrecognizedContraindicated
	case UnrecognizedContraindicated, UnrecognizedWarning:
	default:
		return fmt.Errorf("unrecognized %q: use contraindicated or warning", p.Unrecognized)
	}
	switch p.SecureBoot.Mode {
	case "":
		p.SecureBoot.Mode = SecureBootAny
	case SecureBootRequired, SecureBootDisabled, SecureBootAny:
	default:
		return fmt.Errorf("secure_boot mode %q: use required, disabled or any", p.SecureBoot.Mode)
	}
	if !p.hasEventRules() && len(p.PCRs) == 0 {
		return errors.New("no PCR values and no event rules: a profile must pin the boot somehow")
	}
	for idx, vals := range p.PCRs {
		if idx < 0 || idx > 23 {
			return fmt.Errorf("PCR %d out of range 0-23", idx)
		}
		if idx == WorkloadPCR {
			return fmt.Errorf("PCR %d is the workload PCR; workloads are appraised by image, not by golden value", idx)
		}
		if len(vals) == 0 {
			return fmt.Errorf("PCR %d: no value", idx)
		}
		for _, v := range vals {
			if len(v) != size {
				return fmt.Errorf("PCR %d: %d bytes, a %s value is %d", idx, len(v), p.Verify.Bank, size)
			}
		}
	}
	lists := []struct {
		name string
		l    DigestList
	}{
		{"firmware.blobs", p.Firmware.Blobs}, {"firmware.option_roms", p.Firmware.OptionROMs},
		{"efi_apps", p.EFIApps}, {"kernels", p.Kernels}, {"boot_files", p.BootFiles},
		{"secure_boot.authorities", p.SecureBoot.Authorities},
	}
	for _, l := range lists {
		if len(l.l) > maxListLen {
			return fmt.Errorf("%s: more than %d entries", l.name, maxListLen)
		}
		for i, d := range l.l {
			if len(d.Digest) != size {
				return fmt.Errorf("%s[%d]: %d bytes, a %s digest is %d", l.name, i, len(d.Digest), p.Verify.Bank, size)
			}
		}
	}
	for _, l := range []struct {
		name string
		l    EntryList
	}{{"secure_boot.pk", p.SecureBoot.PK}, {"secure_boot.kek", p.SecureBoot.KEK}, {"secure_boot.db", p.SecureBoot.DB}, {"secure_boot.dbx_min", p.SecureBoot.DBXMin}} {
		if len(l.l) > maxListLen {
			return fmt.Errorf("%s: more than %d entries", l.name, maxListLen)
		}
		for i, e := range l.l {
			if !entryID.MatchString(e.ID) {
				return fmt.Errorf("%s[%d] %q: use a well-known certificate name, cert:<sha256 hex> or hash:<hex>", l.name, i, e.ID)
			}
		}
	}
	if len(p.LoaderCommands) > maxListLen {
		return fmt.Errorf("loader_commands: more than %d entries", maxListLen)
	}
	if r := p.KernelCmdline; r != nil {
		if len(r.Exact)+len(r.Allowed)+len(r.Forbidden) > maxParams {
			return fmt.Errorf("kernel_cmdline: more than %d entries", maxParams)
		}
		for _, f := range append(slices.Clone(r.Allowed), r.Forbidden...) {
			if f == "" || strings.ContainsAny(f, "\n\x00") || (strings.ContainsAny(f, " \t") && !strings.Contains(f, `"`)) {
				return fmt.Errorf("kernel_cmdline: parameter %q must be one parameter, a name or name=value (quote values with spaces)", f)
			}
		}
	}
	p.compile()
	return nil
}

// hasEventRules reports whether the profile says anything below PCR level.
func (p *Profile) hasEventRules() bool {
	f := p.Firmware
	sb := p.SecureBoot
	return len(f.Versions)+len(f.Blobs)+len(f.OptionROMs)+len(p.EFIApps)+len(p.Kernels)+len(p.BootFiles)+
		len(p.LoaderCommands)+len(sb.PK)+len(sb.KEK)+len(sb.DB)+len(sb.DBXMin)+len(sb.Authorities) > 0 ||
		p.KernelCmdline != nil
}

// compiledProfile holds a profile's lookups, built once at load time.
type compiledProfile struct {
	versions, blobs, optionROMs, apps, files, authorities set
	loaderCommands                                        set
	pk, kek, db                                           set // nil: not checked
	dbxMin                                                []string
	pcrs                                                  map[int][][]byte
	cmdline                                               *compiledCmdline
}

type set map[string]struct{}

func (s set) has(k string) bool { _, ok := s[k]; return ok }

func digestSet(ls ...DigestList) set {
	s := set{}
	for _, l := range ls {
		for _, d := range l {
			s[string(d.Digest)] = struct{}{}
		}
	}
	return s
}

func entrySet(l EntryList) set {
	if l == nil {
		return nil
	}
	s := make(set, len(l))
	for _, e := range l {
		s[e.ID] = struct{}{}
	}
	return s
}

func (p *Profile) compile() {
	c := &compiledProfile{
		blobs:          digestSet(p.Firmware.Blobs),
		optionROMs:     digestSet(p.Firmware.OptionROMs),
		apps:           digestSet(p.EFIApps),
		files:          digestSet(p.Kernels, p.BootFiles),
		authorities:    digestSet(p.SecureBoot.Authorities),
		versions:       set{},
		loaderCommands: set{},
		pk:             entrySet(p.SecureBoot.PK),
		kek:            entrySet(p.SecureBoot.KEK),
		db:             entrySet(p.SecureBoot.DB),
		pcrs:           map[int][][]byte{},
	}
	for _, v := range p.Firmware.Versions {
		c.versions[string(v)] = struct{}{}
	}
	for _, cmd := range p.LoaderCommands {
		c.loaderCommands[cmd] = struct{}{}
	}
	for _, e := range p.SecureBoot.DBXMin {
		c.dbxMin = append(c.dbxMin, e.ID)
	}
	for idx, vals := range p.PCRs {
		for _, v := range vals {
			c.pcrs[idx] = append(c.pcrs[idx], v)
		}
	}
	if p.KernelCmdline != nil {
		c.cmdline = compileCmdline(p.KernelCmdline)
	}
	p.c = c
}

// compiled returns the profile's lookups, compiling them if the profile was
// built in code rather than loaded.
func (p *Profile) compiled() *compiledProfile {
	if p.c == nil {
		p.compile()
	}
	return p.c
}
