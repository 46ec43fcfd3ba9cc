package policy

import (
	"bytes"
	"encoding/hex"
	"fmt"
	"slices"
	"sort"
	"strings"
)

// DenyList is threat intelligence: known-bad things refused whatever else
// matches. Deny lists are usually kept in their own files of the reference
// directory (e.g. deny-2026-06.yaml), replaced as feeds update; vouchd
// reloads them live.
type DenyList struct {
	// ImageDigests are workload images that must not run ("sha256:<hex>").
	ImageDigests []string `yaml:"image_digests,omitempty"`
	// BootDigests are boot components that must not run, by the digest their
	// event carries in any bank: revoked boot loaders and shims, vulnerable
	// firmware volumes, option ROMs, kernels.
	BootDigests DigestList `yaml:"boot_digests,omitempty"`
	// Authorities are signature database entries that must not be trusted
	// in PK, KEK or db (a leaked signing key), in the notation of
	// SecureBootRules.
	Authorities EntryList `yaml:"authorities,omitempty"`
	// DBXRequired are revocations every platform running with secure boot
	// must have applied (dbx updates), in the notation of SecureBootRules.
	DBXRequired EntryList `yaml:"dbx_required,omitempty"`
	// AKs and EKs are TPM keys that must not be trusted, by the SHA-256 of
	// their SubjectPublicKeyInfo (DER): keys of stolen or compromised
	// machines, or of TPMs with known flaws.
	AKs DigestList `yaml:"ak_keys,omitempty"`
	EKs DigestList `yaml:"ek_keys,omitempty"`
}

func (d *DenyList) merge(o DenyList) {
	d.ImageDigests = append(d.ImageDigests, o.ImageDigests...)
	d.BootDigests = append(d.BootDigests, o.BootDigests...)
	d.Authorities = append(d.Authorities, o.Authorities...)
	d.DBXRequired = append(d.DBXRequired, o.DBXRequired...)
	d.AKs = append(d.AKs, o.AKs...)
	d.EKs = append(d.EKs, o.EKs...)
}

func (d *DenyList) validate() error {
	for i, v := range d.ImageDigests {
		if err := validImageDigest(v); err != nil {
			return fmt.Errorf("image_digests[%d]: %w", i, err)
		}
	}
	for i, b := range d.BootDigests {
		if n := len(b.Digest); n != 20 && n != 32 && n != 48 {
			return fmt.Errorf("boot_digests[%d]: %d bytes is no SHA-1, SHA-256 or SHA-384 digest", i, n)
		}
	}
	for _, l := range []struct {
		name string
		l    EntryList
	}{{"authorities", d.Authorities}, {"dbx_required", d.DBXRequired}} {
		for i, e := range l.l {
			if !entryID.MatchString(e.ID) {
				return fmt.Errorf("%s[%d] %q: use a well-known certificate name, cert:<sha256 hex> or hash:<hex>", l.name, i, e.ID)
			}
		}
	}
	for _, l := range []struct {
		name string
		l    DigestList
	}{{"ak_keys", d.AKs}, {"ek_keys", d.EKs}} {
		for i, k := range l.l {
			if len(k.Digest) != 32 {
				return fmt.Errorf("%s[%d]: a key is named by the SHA-256 of its SubjectPublicKeyInfo (32 bytes), not %d bytes", l.name, i, len(k.Digest))
			}
		}
	}
	n := len(d.ImageDigests) + len(d.BootDigests) + len(d.Authorities) + len(d.DBXRequired) + len(d.AKs) + len(d.EKs)
	if n > maxListLen {
		return fmt.Errorf("more than %d entries", maxListLen)
	}
	return nil
}

// normalize sorts and de-duplicates, so that the set id does not depend on
// file order.
func (d *DenyList) normalize() {
	slices.Sort(d.ImageDigests)
	d.ImageDigests = slices.Compact(d.ImageDigests)
	for _, l := range []*DigestList{&d.BootDigests, &d.AKs, &d.EKs} {
		sort.SliceStable(*l, func(i, j int) bool { return bytes.Compare((*l)[i].Digest, (*l)[j].Digest) < 0 })
		*l = slices.CompactFunc(*l, func(a, b DigestItem) bool { return bytes.Equal(a.Digest, b.Digest) })
	}
	for _, l := range []*EntryList{&d.Authorities, &d.DBXRequired} {
		sort.SliceStable(*l, func(i, j int) bool { return (*l)[i].ID < (*l)[j].ID })
		*l = slices.CompactFunc(*l, func(a, b EntryItem) bool { return a.ID == b.ID })
	}
}

// Image is an allowed workload image, with optional launch rules.
type Image struct {
	Digest string `yaml:"digest"` // "sha256:<64 hex>"
	// Repository, if set, is the only repository the image may be referenced
	// from ("ghcr.io/acme/agent"); the tag or digest part of the reference is
	// not compared.
	Repository string `yaml:"repository,omitempty"`
	Note       string `yaml:"note,omitempty"`
	// Args, if set (even empty), are the exact arguments the image must be
	// launched with.
	Args []string `yaml:"args,omitempty"`
	// Env constrains the launch environment.
	Env *EnvRules `yaml:"env,omitempty"`
}

// EnvRules constrain a workload's environment. Entries are NAME (any value)
// or NAME=VALUE (that value only).
type EnvRules struct {
	// Allowed, if set, lists every variable that may be set.
	Allowed []string `yaml:"allowed,omitempty"`
	// Forbidden lists variables that must not be set.
	Forbidden []string `yaml:"forbidden,omitempty"`
}

func (im *Image) validate() error {
	if err := validImageDigest(im.Digest); err != nil {
		return err
	}
	if len(im.Args) > maxParams {
		return fmt.Errorf("image %s: more than %d args", im.Digest, maxParams)
	}
	if im.Env != nil {
		for _, e := range append(slices.Clone(im.Env.Allowed), im.Env.Forbidden...) {
			if e == "" || strings.HasPrefix(e, "=") {
				return fmt.Errorf("image %s: env entry %q: use NAME or NAME=VALUE", im.Digest, e)
			}
		}
	}
	return nil
}

// refIndex holds a set's lookups, built once when the set is loaded so that
// an appraisal only does map lookups.
type refIndex struct {
	// components maps a boot component digest (EFI app, kernel, boot file)
	// to the profiles that allow it, to try the likeliest profile first.
	components  map[string][]int
	denyBoot    map[string]string // digest → note
	denyAuth    map[string]string // entry → note
	dbxRequired []EntryItem
	denyImages  set
	denyAKs     map[string]string
	denyEKs     map[string]string
	images      map[string][]int // image digest → indices into Images
	verify      []VerifyOptions  // VerifyCandidates
}

func (r *RefSet) buildIndex() *refIndex {
	x := &refIndex{
		components:  map[string][]int{},
		denyBoot:    map[string]string{},
		denyAuth:    map[string]string{},
		dbxRequired: r.Deny.DBXRequired,
		denyImages:  set{},
		denyAKs:     map[string]string{},
		denyEKs:     map[string]string{},
		images:      map[string][]int{},
	}
	for i := range r.Profiles {
		p := &r.Profiles[i]
		for _, l := range []DigestList{p.EFIApps, p.Kernels} {
			for _, d := range l {
				k := string(d.Digest)
				if n := len(x.components[k]); n == 0 || x.components[k][n-1] != i {
					x.components[k] = append(x.components[k], i)
				}
			}
		}
	}
	for _, d := range r.Deny.BootDigests {
		x.denyBoot[string(d.Digest)] = d.Note
	}
	for _, e := range r.Deny.Authorities {
		x.denyAuth[e.ID] = e.Note
	}
	for _, d := range r.Deny.ImageDigests {
		x.denyImages[d] = struct{}{}
	}
	for _, d := range r.Deny.AKs {
		x.denyAKs[string(d.Digest)] = d.Note
	}
	for _, d := range r.Deny.EKs {
		x.denyEKs[string(d.Digest)] = d.Note
	}
	for i, im := range r.Images {
		x.images[im.Digest] = append(x.images[im.Digest], i)
	}
	x.verify = verifyCandidates(r)
	return x
}

// index returns the set's lookups; a RefSet built by LoadRefs or NewRefSet
// always has them.
func (r *RefSet) index() *refIndex {
	if r.idx == nil {
		return (&RefSet{}).buildIndex()
	}
	return r.idx
}

// AKDenied reports whether an attestation key, named by the SHA-256 of its
// SubjectPublicKeyInfo, is on the threat-intelligence deny list, with the
// list's note. The verifier's ak step refuses such keys (reason ak-denied).
func (r *RefSet) AKDenied(spkiDigest []byte) (bool, string) {
	note, ok := r.index().denyAKs[string(spkiDigest)]
	return ok, note
}

// EKDenied reports whether an endorsement key, named by the SHA-256 of its
// SubjectPublicKeyInfo, is on the deny list, with the list's note.
// Enrollment must call it before trusting an EK (reason ek-denied).
func (r *RefSet) EKDenied(spkiDigest []byte) (bool, string) {
	note, ok := r.index().denyEKs[string(spkiDigest)]
	return ok, note
}

// denyNote formats a deny list note for a detail message.
func denyNote(note string) string {
	if note == "" {
		return ""
	}
	return " (" + note + ")"
}

func hexShort(b []byte) string {
	s := hex.EncodeToString(b)
	if len(s) > 16 {
		return s[:16] + "…"
	}
	return s
}
