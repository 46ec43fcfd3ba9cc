package policy

import (
	"bytes"
	"crypto/sha256"
	"encoding/hex"
	"errors"
	"fmt"
	"io"
	"io/fs"
	"path"
	"regexp"
	"slices"
	"sort"
	"strings"

	"github.com/vouch-dev/vouch/attest"
	"go.yaml.in/yaml/v3"
)

// Schema is the schema identifier every reference-value file declares.
const Schema = "vouch.dev/firmware-refs/v1"

// Limits on reference-value input.
const (
	maxRefFileSize = 4 << 20
	maxRefFiles    = 256
	maxProfiles    = 1024
	maxImages      = 100_000
)

// RefSet is a loaded, validated set of reference values: the union of the
// YAML documents of one directory. Its ID is a content hash of the parsed
// values, so formatting and comments do not change it but any value does.
type RefSet struct {
	Profiles []Profile `yaml:"profiles,omitempty"`
	Images   []Image   `yaml:"images,omitempty"`
	Deny     DenyList  `yaml:"deny,omitempty"`

	id string
}

// Profile is the expected boot state of one kind of platform.
type Profile struct {
	Name        string `yaml:"name"`
	Description string `yaml:"description,omitempty"`
	Source      string `yaml:"source,omitempty"` // where it was derived from
	// Verify says how this platform's quote and firmware log are verified,
	// including the quirks it needs. Quirks are per profile, never global.
	Verify VerifyOptions `yaml:"verify"`
	// SecureBoot is "required", "disabled" or "any".
	SecureBoot string `yaml:"secure_boot"`
	// PCRs are golden values of the verified bank, by PCR index. Every listed
	// PCR must match.
	PCRs map[int]HexBytes `yaml:"pcrs"`
}

// VerifyOptions selects the PCR bank and the relaxations of event-log
// parsing a platform needs.
type VerifyOptions struct {
	Bank   string   `yaml:"bank"`             // "sha256" (default), "sha384" or "sha1"
	Quirks []string `yaml:"quirks,omitempty"` // names from KnownQuirks
	Loader string   `yaml:"loader,omitempty"` // "grub" to parse GRUB events; "" or "none"
}

// Quirks a profile may allow. Each relaxes one check of go-tpm-tools'
// event-log parsing for platforms that need it.
const (
	// QuirkSHA1 allows verifying the SHA-1 PCR bank (logs without SHA-256,
	// e.g. Debian 10). Signatures are still SHA-256.
	QuirkSHA1 = "allow-sha1"
	// QuirkEFIAppBeforeCalling allows EFI applications measured before the
	// "Calling EFI Application from Boot Option" event (firmware that loads
	// its own applications first).
	QuirkEFIAppBeforeCalling = "efi-app-before-calling-event"
	// QuirkEmptySBVar allows an empty SecureBoot variable (SB never set up).
	QuirkEmptySBVar = "empty-secure-boot-variable"
)

// KnownQuirks lists every quirk name a profile may use.
var KnownQuirks = []string{QuirkSHA1, QuirkEFIAppBeforeCalling, QuirkEmptySBVar}

// Has reports whether the options allow quirk q.
func (v VerifyOptions) Has(q string) bool { return slices.Contains(v.Quirks, q) }

// Key identifies the verification behaviour, for de-duplication.
func (v VerifyOptions) Key() string {
	q := slices.Clone(v.Quirks)
	sort.Strings(q)
	return v.Bank + "|" + v.Loader + "|" + strings.Join(q, ",")
}

// Covers reports whether a profile verified with v may accept evidence that
// needed the verification options used: same bank and loader, and every quirk
// used is allowed by v.
func (v VerifyOptions) Covers(used VerifyOptions) bool {
	if v.Bank != used.Bank || v.Loader != used.Loader {
		return false
	}
	for _, q := range used.Quirks {
		if !v.Has(q) {
			return false
		}
	}
	return true
}

// Image is an allowed workload image.
type Image struct {
	Digest string `yaml:"digest"` // "sha256:<64 hex>"
	// Repository, if set, is the only repository the image may be referenced
	// from ("ghcr.io/acme/agent"); the tag or digest part of the reference is
	// not compared.
	Repository string `yaml:"repository,omitempty"`
	Note       string `yaml:"note,omitempty"`
}

// DenyList names known-bad things that are refused whatever else matches.
type DenyList struct {
	ImageDigests []string `yaml:"image_digests,omitempty"`
}

// HexBytes is a byte string written as hex in YAML.
type HexBytes []byte

// UnmarshalYAML decodes lowercase or uppercase hex.
func (h *HexBytes) UnmarshalYAML(n *yaml.Node) error {
	var s string
	if err := n.Decode(&s); err != nil {
		return err
	}
	b, err := hex.DecodeString(strings.TrimPrefix(s, "0x"))
	if err != nil {
		return fmt.Errorf("line %d: %q is not hex", n.Line, s)
	}
	*h = b
	return nil
}

// MarshalYAML encodes as lowercase hex.
func (h HexBytes) MarshalYAML() (any, error) { return hex.EncodeToString(h), nil }

// ID returns the set's content hash, "sha256:<hex>". It names the set in
// credentials (the EAR appraisal policy id) and in the audit log.
func (r *RefSet) ID() string { return r.id }

// refFile is the on-disk form of one YAML document.
type refFile struct {
	Schema   string    `yaml:"schema"`
	Profiles []Profile `yaml:"profiles,omitempty"`
	Images   []Image   `yaml:"images,omitempty"`
	Deny     DenyList  `yaml:"deny,omitempty"`
}

// LoadRefs reads every *.yaml file at the top of dir in fsys, validates them
// and merges them into one RefSet.
func LoadRefs(fsys fs.FS, dir string) (*RefSet, error) {
	entries, err := fs.ReadDir(fsys, dir)
	if err != nil {
		return nil, fmt.Errorf("reading reference values: %w", err)
	}
	var set RefSet
	files := 0
	for _, e := range entries {
		if e.IsDir() || !(strings.HasSuffix(e.Name(), ".yaml") || strings.HasSuffix(e.Name(), ".yml")) {
			continue
		}
		if files++; files > maxRefFiles {
			return nil, fmt.Errorf("reference values: more than %d files in %s", maxRefFiles, dir)
		}
		name := path.Join(dir, e.Name())
		f, err := readRefFile(fsys, name)
		if err != nil {
			return nil, err
		}
		set.Profiles = append(set.Profiles, f.Profiles...)
		set.Images = append(set.Images, f.Images...)
		set.Deny.ImageDigests = append(set.Deny.ImageDigests, f.Deny.ImageDigests...)
	}
	if files == 0 {
		return nil, fmt.Errorf("reference values: no .yaml files in %s", dir)
	}
	if err := set.finish(); err != nil {
		return nil, err
	}
	return &set, nil
}

func readRefFile(fsys fs.FS, name string) (*refFile, error) {
	fh, err := fsys.Open(name)
	if err != nil {
		return nil, fmt.Errorf("reference values: %w", err)
	}
	defer fh.Close()
	b, err := io.ReadAll(io.LimitReader(fh, maxRefFileSize+1))
	if err != nil {
		return nil, fmt.Errorf("reference values %s: %w", name, err)
	}
	if len(b) > maxRefFileSize {
		return nil, fmt.Errorf("reference values %s: larger than %d bytes", name, maxRefFileSize)
	}
	dec := yaml.NewDecoder(bytes.NewReader(b))
	dec.KnownFields(true)
	var f refFile
	if err := dec.Decode(&f); err != nil {
		return nil, fmt.Errorf("reference values %s: %w", name, err)
	}
	if f.Schema != Schema {
		return nil, fmt.Errorf("reference values %s: schema is %q, want %q", name, f.Schema, Schema)
	}
	for i := range f.Profiles {
		if err := f.Profiles[i].validate(); err != nil {
			return nil, fmt.Errorf("reference values %s: profile %d (%s): %w", name, i, f.Profiles[i].Name, err)
		}
	}
	for i, im := range f.Images {
		if err := validImageDigest(im.Digest); err != nil {
			return nil, fmt.Errorf("reference values %s: image %d: %w", name, i, err)
		}
	}
	for i, d := range f.Deny.ImageDigests {
		if err := validImageDigest(d); err != nil {
			return nil, fmt.Errorf("reference values %s: deny image %d: %w", name, i, err)
		}
	}
	return &f, nil
}

var profileName = regexp.MustCompile(`^[a-z0-9][a-z0-9._-]{0,127}$`)

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
	switch p.SecureBoot {
	case "":
		p.SecureBoot = "any"
	case "required", "disabled", "any":
	default:
		return fmt.Errorf("secure_boot %q: use required, disabled or any", p.SecureBoot)
	}
	if len(p.PCRs) == 0 {
		return errors.New("no PCR values: a profile must pin at least the firmware PCRs")
	}
	for idx, v := range p.PCRs {
		if idx < 0 || idx > 23 {
			return fmt.Errorf("PCR %d out of range 0-23", idx)
		}
		if idx == WorkloadPCR {
			return fmt.Errorf("PCR %d is the workload PCR; workloads are appraised by image, not by golden value", idx)
		}
		if len(v) != size {
			return fmt.Errorf("PCR %d: %d bytes, a %s value is %d", idx, len(v), p.Verify.Bank, size)
		}
	}
	return nil
}

var bankSizes = map[string]int{"sha1": 20, "sha256": 32, "sha384": 48}

var imageDigest = regexp.MustCompile(`^sha256:[0-9a-f]{64}$`)

func validImageDigest(d string) error {
	if !imageDigest.MatchString(d) {
		return fmt.Errorf("image digest %q: want sha256: followed by 64 lowercase hex digits", d)
	}
	return nil
}

// finish checks set-wide rules and computes the id.
func (r *RefSet) finish() error {
	if len(r.Profiles) > maxProfiles || len(r.Images) > maxImages {
		return fmt.Errorf("reference values: %d profiles and %d images exceed the limits (%d, %d)", len(r.Profiles), len(r.Images), maxProfiles, maxImages)
	}
	sort.Slice(r.Profiles, func(i, j int) bool { return r.Profiles[i].Name < r.Profiles[j].Name })
	for i := 1; i < len(r.Profiles); i++ {
		if r.Profiles[i].Name == r.Profiles[i-1].Name {
			return fmt.Errorf("reference values: profile %q is defined twice", r.Profiles[i].Name)
		}
	}
	sort.Slice(r.Images, func(i, j int) bool {
		if r.Images[i].Digest != r.Images[j].Digest {
			return r.Images[i].Digest < r.Images[j].Digest
		}
		return r.Images[i].Repository < r.Images[j].Repository
	})
	slices.Sort(r.Deny.ImageDigests)
	r.Deny.ImageDigests = slices.Compact(r.Deny.ImageDigests)
	canon, err := attest.Marshal(r)
	if err != nil {
		return fmt.Errorf("reference values: canonical encoding: %w", err)
	}
	sum := sha256.Sum256(canon)
	r.id = "sha256:" + hex.EncodeToString(sum[:])
	return nil
}

// MarshalProfileYAML writes one profile as a reference-value file.
func MarshalProfileYAML(w io.Writer, p Profile, images []Image) error {
	enc := yaml.NewEncoder(w)
	enc.SetIndent(2)
	defer enc.Close()
	return enc.Encode(refFile{Schema: Schema, Profiles: []Profile{p}, Images: images})
}
