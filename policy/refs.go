package policy

import (
	"bytes"
	"crypto/sha256"
	"encoding/hex"
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

// Schema is the schema identifier of reference-value files this version
// writes. SchemaV1 files (PCR golden values, secure boot mode, images, image
// deny list) are still read.
const (
	Schema   = "vouch.dev/firmware-refs/v2"
	SchemaV1 = "vouch.dev/firmware-refs/v1"
)

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

	id  string
	idx *refIndex
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

// LoadRefs reads every *.yaml file at the top of each dir in fsys (default
// "."), validates them
// and merges them into one RefSet. Any invalid file fails the whole load:
// a set is used entirely or not at all.
func LoadRefs(fsys fs.FS, dirs ...string) (*RefSet, error) {
	if len(dirs) == 0 {
		dirs = []string{"."}
	}
	var set RefSet
	files := 0
	for _, dir := range dirs {
		entries, err := fs.ReadDir(fsys, dir)
		if err != nil {
			return nil, fmt.Errorf("reading reference values: %w", err)
		}
		n, err := set.addDir(fsys, dir, entries, files)
		if err != nil {
			return nil, err
		}
		files = n
	}
	if files == 0 {
		return nil, fmt.Errorf("reference values: no .yaml files in %s", strings.Join(dirs, ", "))
	}
	if err := set.finish(); err != nil {
		return nil, err
	}
	return &set, nil
}

// addDir adds the reference-value files of one directory; files counts the
// files read so far, across directories.
func (set *RefSet) addDir(fsys fs.FS, dir string, entries []fs.DirEntry, files int) (int, error) {
	for _, e := range entries {
		if e.IsDir() || !IsRefFile(e.Name()) {
			continue
		}
		if files++; files > maxRefFiles {
			return files, fmt.Errorf("reference values: more than %d files", maxRefFiles)
		}
		name := path.Join(dir, e.Name())
		f, err := readRefFile(fsys, name)
		if err != nil {
			return files, err
		}
		set.Profiles = append(set.Profiles, f.Profiles...)
		set.Images = append(set.Images, f.Images...)
		set.Deny.merge(f.Deny)
	}
	return files, nil
}

// IsRefFile reports whether a file name is one LoadRefs reads.
func IsRefFile(name string) bool {
	return !strings.HasPrefix(name, ".") && (strings.HasSuffix(name, ".yaml") || strings.HasSuffix(name, ".yml"))
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
	f, err := ParseRefFile(b)
	if err != nil {
		return nil, fmt.Errorf("reference values %s: %w", name, err)
	}
	return f, nil
}

// ParseRefFile parses and validates one reference-value document.
func ParseRefFile(b []byte) (*refFile, error) {
	dec := yaml.NewDecoder(bytes.NewReader(b))
	dec.KnownFields(true)
	var f refFile
	if err := dec.Decode(&f); err != nil {
		return nil, err
	}
	switch f.Schema {
	case Schema:
	case SchemaV1:
		if err := f.checkV1(); err != nil {
			return nil, err
		}
	default:
		return nil, fmt.Errorf("schema is %q, want %q (or %q)", f.Schema, Schema, SchemaV1)
	}
	for i := range f.Profiles {
		if err := f.Profiles[i].validate(); err != nil {
			return nil, fmt.Errorf("profile %d (%s): %w", i, f.Profiles[i].Name, err)
		}
	}
	for i := range f.Images {
		if err := f.Images[i].validate(); err != nil {
			return nil, fmt.Errorf("image %d: %w", i, err)
		}
	}
	if err := f.Deny.validate(); err != nil {
		return nil, fmt.Errorf("deny: %w", err)
	}
	return &f, nil
}

// checkV1 refuses v2 fields in a file that declares schema v1, so that a
// file's schema line says what it may contain.
func (f *refFile) checkV1() error {
	for _, p := range f.Profiles {
		sb := p.SecureBoot
		if p.hasEventRules() || p.Unrecognized != "" || len(sb.PK)+len(sb.KEK)+len(sb.DB)+len(sb.DBXMin)+len(sb.Authorities) > 0 {
			return fmt.Errorf("profile %s uses %s fields; declare schema %s", p.Name, Schema, Schema)
		}
		for _, v := range p.PCRs {
			if len(v) > 1 {
				return fmt.Errorf("profile %s lists several values for a PCR; declare schema %s", p.Name, Schema)
			}
		}
	}
	for _, im := range f.Images {
		if im.Args != nil || im.Env != nil {
			return fmt.Errorf("image %s has args/env rules; declare schema %s", im.Digest, Schema)
		}
	}
	d := f.Deny
	if len(d.BootDigests)+len(d.Authorities)+len(d.DBXRequired)+len(d.AKs)+len(d.EKs) > 0 {
		return fmt.Errorf("deny lists other than image_digests need schema %s", Schema)
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

// finish checks set-wide rules, computes the id and builds the lookups.
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
	sort.SliceStable(r.Images, func(i, j int) bool {
		if r.Images[i].Digest != r.Images[j].Digest {
			return r.Images[i].Digest < r.Images[j].Digest
		}
		return r.Images[i].Repository < r.Images[j].Repository
	})
	r.Deny.normalize()
	canon, err := attest.Marshal(r)
	if err != nil {
		return fmt.Errorf("reference values: canonical encoding: %w", err)
	}
	sum := sha256.Sum256(canon)
	r.id = "sha256:" + hex.EncodeToString(sum[:])
	r.idx = r.buildIndex()
	return nil
}

// NewRefSet validates profiles, images and deny lists built in code (for
// tests and tools) into a set, as LoadRefs would.
func NewRefSet(profiles []Profile, images []Image, deny DenyList) (*RefSet, error) {
	f := refFile{Schema: Schema, Profiles: profiles, Images: images, Deny: deny}
	for i := range f.Profiles {
		if err := f.Profiles[i].validate(); err != nil {
			return nil, fmt.Errorf("profile %s: %w", f.Profiles[i].Name, err)
		}
	}
	for i := range f.Images {
		if err := f.Images[i].validate(); err != nil {
			return nil, err
		}
	}
	if err := f.Deny.validate(); err != nil {
		return nil, err
	}
	set := &RefSet{Profiles: f.Profiles, Images: f.Images, Deny: f.Deny}
	if err := set.finish(); err != nil {
		return nil, err
	}
	return set, nil
}

// RefDoc is one reference-value file to write.
type RefDoc struct {
	Profiles []Profile
	Images   []Image
	Deny     DenyList
}

// MarshalRefs writes a reference-value file of the current schema.
func MarshalRefs(w io.Writer, d RefDoc) error {
	enc := yaml.NewEncoder(w)
	enc.SetIndent(2)
	if err := enc.Encode(refFile{Schema: Schema, Profiles: d.Profiles, Images: d.Images, Deny: d.Deny}); err != nil {
		return err
	}
	return enc.Close()
}

// MarshalProfileYAML writes one profile (and images) as a reference-value file.
func MarshalProfileYAML(w io.Writer, p Profile, images []Image) error {
	return MarshalRefs(w, RefDoc{Profiles: []Profile{p}, Images: images})
}

// String returns lowercase hex.
func (h HexBytes) String() string { return hex.EncodeToString(h) }
