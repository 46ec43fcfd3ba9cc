package policy

import (
	"bytes"
	"crypto"
	_ "crypto/sha1"
	"crypto/sha256"
	_ "crypto/sha512"
	"encoding/hex"
	"fmt"
	"strings"
	"sync/atomic"
	"unicode/utf16"

	statepb "github.com/google/go-eventlog/proto/state"
	"github.com/google/go-eventlog/tcg"
)

// Class is the kind of a firmware event, as far as appraisal is concerned.
// Event types are not measured, so a class is only a claim about which rule
// applies: every rule compares measured content (the digest, or data whose
// digest was checked), and an event whose content does not fit its claimed
// type is Unclassified.
type Class string

// Event classes.
const (
	ClassSeparator       Class = "separator"        // EV_SEPARATOR with valid data
	ClassAction          Class = "action"           // EV_ACTION / EV_EFI_ACTION, data matches digest
	ClassFirmwareVersion Class = "firmware-version" // EV_S_CRTM_VERSION (PCR 0)
	ClassFirmware        Class = "firmware"         // other PCR 0 code: firmware blobs, S-CRTM contents, POST code, platform info
	ClassOptionROM       Class = "option-rom"       // PCR 2: option ROMs, drivers from adapters
	ClassEFIApp          Class = "efi-app"          // PCR 4: EFI applications (shim, boot loaders)
	ClassSecureBoot      Class = "secure-boot"      // PCR 7: SecureBoot, PK, KEK, db, dbx variables
	ClassSBAuthority     Class = "sb-authority"     // PCR 7: EV_EFI_VARIABLE_AUTHORITY
	ClassKernel          Class = "kernel"           // PCR 9: a kernel the boot loader loaded
	ClassBootFile        Class = "boot-file"        // PCR 9: other files the boot loader read (initrd, grub.cfg)
	ClassLoaderCommand   Class = "loader-command"   // PCR 8: GRUB commands
	ClassKernelCmdline   Class = "kernel-cmdline"   // PCR 8: the kernel command line
	ClassUnclassified    Class = "unclassified"     // anything else: appraised by its PCR's golden value
)

// BootEvent is one measured firmware event, classified.
type BootEvent struct {
	Num      int // position in the log, from 1 (the Spec ID header is 0)
	PCR      int
	Type     uint32
	Class    Class
	Digest   []byte // the digest extended into the PCR (verified by replay)
	Verified bool   // the digest is the hash of the data
	Data     []byte
	Text     string   // what the event names: a file, command, variable, version
	Params   []string // kernel-cmdline: the parameters
}

// TypeName returns the event type's TCG name.
func (e *BootEvent) TypeName() string {
	if n, ok := tcg.EventType(e.Type).KnownName(); ok {
		return n
	}
	return fmt.Sprintf("type %#x", e.Type)
}

// SecureBootFacts are the secure boot variables the log measured, parsed.
// Entries use the notation of SecureBootRules.
type SecureBootFacts struct {
	Enabled          bool
	PK, KEK, DB, DBX []string
	dbx              set
}

// BootFacts are a verified firmware log, classified once and appraised
// against any number of profiles. Build them with NewBootFacts.
type BootFacts struct {
	Bank   Bank
	PCRs   map[int][]byte
	Events []BootEvent
	// SecureBoot is nil when the log's secure boot state could not be
	// parsed (offline checks of logs go-tpm-tools refuses); the variable
	// events are then unclassified.
	SecureBoot *SecureBootFacts
	// Firmware is the S-CRTM version, or "gce:N" for GCE virtual firmware.
	Firmware string
	// Technology is the GCE confidential computing technology the platform
	// claims (AMD_SEV, INTEL_TDX, ...) or "".
	Technology string
	components []string // EFI app and kernel digests, to rank profiles
	cached     atomic.Pointer[cachedBoot]
}

// cachedBoot is the last boot appraisal of a BootFacts: a verifier caches
// BootFacts per machine and boot, and the result only changes with the set.
type cachedBoot struct {
	refs *RefSet
	res  *BootResult
}

// NewBootFacts classifies the raw events of a verified firmware log. state
// is go-eventlog's parse of the same log (nil if unavailable); events are
// its raw events, or the log's events for an offline check.
func NewBootFacts(bank Bank, pcrs map[int][]byte, events []*statepb.Event, state *statepb.FirmwareLogState) *BootFacts {
	b := &BootFacts{Bank: bank, PCRs: pcrs, Events: make([]BootEvent, 0, len(events))}
	if sb := state.GetSecureBoot(); sb != nil {
		b.SecureBoot = &SecureBootFacts{
			Enabled: sb.GetEnabled(),
			PK:      dbEntries(sb.GetPk()),
			KEK:     dbEntries(sb.GetKek()),
			DB:      dbEntries(sb.GetDb()),
			DBX:     dbEntries(sb.GetDbx()),
		}
		b.SecureBoot.dbx = make(set, len(b.SecureBoot.DBX))
		for _, e := range b.SecureBoot.DBX {
			b.SecureBoot.dbx[e] = struct{}{}
		}
	}
	if p := state.GetPlatform(); p != nil {
		if v, ok := p.GetFirmware().(*statepb.PlatformState_GceVersion); ok {
			b.Firmware = fmt.Sprintf("gce:%d", v.GceVersion)
		} else {
			b.Firmware = printable(p.GetScrtmVersionId())
		}
		if t := p.GetTechnology(); t != statepb.GCEConfidentialTechnology_NONE {
			b.Technology = t.String()
		}
	}
	n := 0
	for _, ev := range events {
		n++
		if tcg.EventType(ev.GetUntrustedType()) == tcg.NoAction {
			continue
		}
		e := BootEvent{
			Num: n, PCR: int(ev.GetPcrIndex()), Type: ev.GetUntrustedType(),
			Digest: ev.GetDigest(), Verified: ev.GetDigestVerified(), Data: ev.GetData(),
		}
		classify(&e, b.SecureBoot != nil)
		if e.Class == ClassEFIApp || e.Class == ClassKernel {
			b.components = append(b.components, string(e.Digest))
		}
		b.Events = append(b.Events, e)
	}
	return b
}

// dbEntries names the entries of a signature database.
func dbEntries(db *statepb.Database) []string {
	var out []string
	for _, c := range db.GetCerts() {
		if wk := c.GetWellKnown(); wk != statepb.WellKnownCertificate_UNKNOWN {
			out = append(out, wk.String())
			continue
		}
		sum := sha256.Sum256(c.GetDer())
		out = append(out, "cert:"+hex.EncodeToString(sum[:]))
	}
	for _, h := range db.GetHashes() {
		out = append(out, "hash:"+hex.EncodeToString(h))
	}
	return out
}

var (
	grubCmdlinePrefixes = []string{"kernel_cmdline: ", "grub_kernel_cmdline "}
	grubCmdPrefixes     = []string{"grub_cmd: ", "grub_cmd ", "module_cmdline: "}
	sbVariables         = map[string]bool{"SecureBoot": true, "PK": true, "KEK": true, "db": true, "dbx": true}
)

func validSeparator(e *BootEvent) bool {
	return e.Verified && (bytes.Equal(e.Data, []byte{0, 0, 0, 0}) || bytes.Equal(e.Data, []byte{0xff, 0xff, 0xff, 0xff}))
}

// classify sets e.Class (and Text, Params). withSB says whether secure
// boot variables can be appraised (the state was parsed).
func classify(e *BootEvent, withSB bool) {
	e.Class = ClassUnclassified
	t := tcg.EventType(e.Type)
	switch t {
	case tcg.Separator:
		if validSeparator(e) {
			e.Class = ClassSeparator
		}
		return
	case tcg.Action, tcg.EFIAction:
		if e.Verified {
			e.Class, e.Text = ClassAction, printable(e.Data)
		}
		return
	}
	switch e.PCR {
	case 0:
		switch t {
		case tcg.SCRTMVersion:
			if e.Verified {
				e.Class, e.Text = ClassFirmwareVersion, printable(e.Data)
			}
		case tcg.PostCode, tcg.SCRTMContents, tcg.EFIPlatformFirmwareBlob, tcg.EFIPlatformFirmwareBlob2,
			tcg.EFIHCRTMEvent, tcg.NonhostCode, tcg.NonhostConfig, tcg.NonhostInfo, tcg.CPUMicrocode:
			e.Class = ClassFirmware
		}
	case 2:
		switch t {
		case tcg.EFIBootServicesDriver, tcg.EFIRuntimeServicesDriver, tcg.EFIBootServicesApplication,
			tcg.EFIPlatformFirmwareBlob, tcg.EFIPlatformFirmwareBlob2:
			e.Class, e.Text = ClassOptionROM, imagePath(e.Data)
		}
	case 4:
		switch t {
		case tcg.EFIBootServicesApplication, tcg.EFIBootServicesDriver:
			e.Class, e.Text = ClassEFIApp, imagePath(e.Data)
		}
	case 7:
		switch t {
		case tcg.EFIVariableDriverConfig:
			if name, ok := variableName(e.Data); ok && e.Verified && withSB && sbVariables[name] {
				e.Class, e.Text = ClassSecureBoot, name
			}
		case tcg.EFIVariableAuthority:
			name, _ := variableName(e.Data)
			e.Class, e.Text = ClassSBAuthority, name
		}
	case 8:
		if t == tcg.Ipl {
			classifyGRUBCommand(e)
		}
	case 9:
		switch t {
		case tcg.Ipl:
			e.Text = printable(e.Data)
			e.Class = ClassBootFile
			low := strings.ToLower(e.Text)
			if strings.Contains(low, "vmlinuz") || strings.Contains(low, "kernel") || strings.Contains(low, "bzimage") {
				e.Class = ClassKernel
			}
		case tcg.EventTag:
			e.Class, e.Text = ClassBootFile, "tagged event (initrd or load options measured by the kernel's EFI stub)"
		}
	}
}

// classifyGRUBCommand recognises GRUB's PCR 8 measurements: a prefix, then
// the command whose hash (with or without its trailing NUL) is the digest.
func classifyGRUBCommand(e *BootEvent) {
	s := string(e.Data)
	for _, pre := range grubCmdlinePrefixes {
		if rest, ok := strings.CutPrefix(s, pre); ok {
			if grubDigestOK(e, rest) {
				e.Class, e.Text = ClassKernelCmdline, strings.TrimRight(rest, "\x00")
				e.Params = KernelParams(rest)
			}
			return
		}
	}
	for _, pre := range grubCmdPrefixes {
		if rest, ok := strings.CutPrefix(s, pre); ok {
			if !grubDigestOK(e, rest) {
				return
			}
			cmd := strings.TrimRight(rest, "\x00")
			word, args, _ := strings.Cut(cmd, " ")
			switch word {
			case "linux", "linuxefi", "linux16":
				e.Class, e.Text, e.Params = ClassKernelCmdline, cmd, KernelParams(args)
			default:
				e.Class, e.Text = ClassLoaderCommand, cmd
			}
			return
		}
	}
}

func grubDigestOK(e *BootEvent, rest string) bool {
	var h crypto.Hash
	switch len(e.Digest) {
	case 20:
		h = crypto.SHA1
	case 32:
		h = crypto.SHA256
	case 48:
		h = crypto.SHA384
	default:
		return false
	}
	for _, v := range []string{rest, strings.TrimSuffix(rest, "\x00")} {
		hh := h.New()
		hh.Write([]byte(v))
		if bytes.Equal(hh.Sum(nil), e.Digest) {
			return true
		}
	}
	return false
}

// variableName returns the name of a UEFI_VARIABLE_DATA event.
func variableName(data []byte) (string, bool) {
	v, err := tcg.ParseUEFIVariableData(bytes.NewReader(data))
	if err != nil {
		return "", false
	}
	return v.VarName(), true
}

// imagePath returns the file path of an EFI_IMAGE_LOAD_EVENT's device path,
// for display only: device paths are not measured.
func imagePath(data []byte) string {
	img, err := tcg.ParseEFIImageLoad(bytes.NewReader(data))
	if err != nil {
		return ""
	}
	elems, err := img.DevicePath()
	if err != nil {
		return ""
	}
	var parts []string
	for _, el := range elems {
		if el.Type == tcg.MediaDevice && el.Subtype == 4 && len(el.Data) >= 2 {
			u := make([]uint16, len(el.Data)/2)
			for i := range u {
				u[i] = uint16(el.Data[2*i]) | uint16(el.Data[2*i+1])<<8
			}
			parts = append(parts, strings.TrimRight(string(utf16.Decode(u)), "\x00"))
		}
	}
	return strings.Join(parts, "")
}

// printable renders event data as text when it is text (ASCII or UTF-16LE),
// else as hex.
func printable(b []byte) string {
	t := bytes.TrimRight(b, "\x00")
	if len(t) == 0 {
		return ""
	}
	if isText(t) {
		return string(t)
	}
	if len(b)%2 == 0 {
		u := make([]uint16, len(b)/2)
		for i := range u {
			u[i] = uint16(b[2*i]) | uint16(b[2*i+1])<<8
		}
		s := strings.TrimRight(string(utf16.Decode(u)), "\x00")
		if s != "" && isText([]byte(s)) {
			return s
		}
	}
	return hex.EncodeToString(b)
}

func isText(b []byte) bool {
	for _, c := range b {
		if c < 0x20 && c != '\t' && c != '\n' || c > 0x7e {
			return false
		}
	}
	return true
}
