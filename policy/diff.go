package policy

import (
	"encoding/hex"
	"fmt"
	"sort"
	"strings"
)

// Change is one difference between two reference sets.
type Change struct {
	Op    string `json:"op"`              // "+" added, "-" removed
	Scope string `json:"scope"`           // "profile NAME", "images", "deny"
	Field string `json:"field,omitempty"` // e.g. "efi_apps", "pcrs.7", "secure_boot.mode"
	Value string `json:"value"`
}

func (c Change) String() string {
	if c.Field == "" {
		return fmt.Sprintf("%s %s %s", c.Op, c.Scope, c.Value)
	}
	return fmt.Sprintf("%s %s: %s %s", c.Op, c.Scope, c.Field, c.Value)
}

// Diff lists what b adds to and removes from a, field by field, for review
// before a set is rolled out. Notes are shown but not compared.
func Diff(a, b *RefSet) []Change {
	fa, fb := flatten(a), flatten(b)
	var out []Change
	scopes := map[string]bool{}
	for s := range fa {
		scopes[s] = true
	}
	for s := range fb {
		scopes[s] = true
	}
	names := make([]string, 0, len(scopes))
	for s := range scopes {
		names = append(names, s)
	}
	sort.Strings(names)
	for _, scope := range names {
		ma, inA := fa[scope]
		mb, inB := fb[scope]
		if strings.HasPrefix(scope, "profile ") && inA != inB {
			op := "+"
			if inA {
				op = "-"
			}
			out = append(out, Change{Op: op, Scope: scope[:7], Value: scope[8:]})
			continue
		}
		fields := map[string]bool{}
		for f := range ma {
			fields[f] = true
		}
		for f := range mb {
			fields[f] = true
		}
		fl := make([]string, 0, len(fields))
		for f := range fields {
			fl = append(fl, f)
		}
		sort.Strings(fl)
		for _, f := range fl {
			va, vb := ma[f], mb[f]
			for _, k := range sortedKeys(va) {
				if _, ok := vb[k]; !ok {
					out = append(out, Change{Op: "-", Scope: scope, Field: f, Value: withNote(k, va[k])})
				}
			}
			for _, k := range sortedKeys(vb) {
				if _, ok := va[k]; !ok {
					out = append(out, Change{Op: "+", Scope: scope, Field: f, Value: withNote(k, vb[k])})
				}
			}
		}
	}
	return out
}

func withNote(k, note string) string {
	if note == "" {
		return k
	}
	return k + " (" + note + ")"
}

func sortedKeys(m map[string]string) []string {
	out := make([]string, 0, len(m))
	for k := range m {
		out = append(out, k)
	}
	sort.Strings(out)
	return out
}

// flatten maps scope → field → value → note.
func flatten(r *RefSet) map[string]map[string]map[string]string {
	out := map[string]map[string]map[string]string{}
	put := func(scope, field, value, note string) {
		if out[scope] == nil {
			out[scope] = map[string]map[string]string{}
		}
		if out[scope][field] == nil {
			out[scope][field] = map[string]string{}
		}
		out[scope][field][value] = note
	}
	digests := func(scope, field string, l DigestList) {
		for _, d := range l {
			put(scope, field, hex.EncodeToString(d.Digest), d.Note)
		}
	}
	entries := func(scope, field string, l EntryList) {
		for _, e := range l {
			put(scope, field, e.ID, e.Note)
		}
	}
	for _, p := range r.Profiles {
		s := "profile " + p.Name
		put(s, "verify", p.Verify.Key(), "")
		put(s, "unrecognized", p.Unrecognized, "")
		put(s, "secure_boot.mode", p.SecureBoot.Mode, "")
		entries(s, "secure_boot.pk", p.SecureBoot.PK)
		entries(s, "secure_boot.kek", p.SecureBoot.KEK)
		entries(s, "secure_boot.db", p.SecureBoot.DB)
		entries(s, "secure_boot.dbx_min", p.SecureBoot.DBXMin)
		digests(s, "secure_boot.authorities", p.SecureBoot.Authorities)
		for _, v := range p.Firmware.Versions {
			put(s, "firmware.versions", hex.EncodeToString(v), printable(v))
		}
		digests(s, "firmware.blobs", p.Firmware.Blobs)
		digests(s, "firmware.option_roms", p.Firmware.OptionROMs)
		digests(s, "efi_apps", p.EFIApps)
		digests(s, "kernels", p.Kernels)
		digests(s, "boot_files", p.BootFiles)
		for _, c := range p.LoaderCommands {
			put(s, "loader_commands", fmt.Sprintf("%q", c), "")
		}
		if k := p.KernelCmdline; k != nil {
			for _, e := range k.Exact {
				put(s, "kernel_cmdline.exact", fmt.Sprintf("%q", e), "")
			}
			for _, e := range k.Allowed {
				put(s, "kernel_cmdline.allowed", e, "")
			}
			for _, e := range k.Forbidden {
				put(s, "kernel_cmdline.forbidden", e, "")
			}
		}
		for idx, vals := range p.PCRs {
			for _, v := range vals {
				put(s, fmt.Sprintf("pcrs.%02d", idx), hex.EncodeToString(v), "")
			}
		}
		if p.Description != "" {
			put(s, "description", p.Description, "")
		}
	}
	for _, im := range r.Images {
		v := im.Digest
		if im.Repository != "" {
			v += " from " + im.Repository
		}
		if im.Args != nil {
			v += fmt.Sprintf(" args %q", im.Args)
		}
		if im.Env != nil {
			v += fmt.Sprintf(" env allowed %q forbidden %q", im.Env.Allowed, im.Env.Forbidden)
		}
		put("images", "image", v, im.Note)
	}
	for _, d := range r.Deny.ImageDigests {
		put("deny", "image_digests", d, "")
	}
	digests("deny", "boot_digests", r.Deny.BootDigests)
	entries("deny", "authorities", r.Deny.Authorities)
	entries("deny", "dbx_required", r.Deny.DBXRequired)
	digests("deny", "ak_keys", r.Deny.AKs)
	digests("deny", "ek_keys", r.Deny.EKs)
	return out
}
