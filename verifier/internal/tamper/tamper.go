// Package tamper edits TPM evidence the way an attacker would — flip a byte
// of one event's digest or data, drop an event, rewrite a CEL record — so
// that tests can prove the verifier notices. It is test support, not
// product code, and lives under internal so nothing else imports it.
package tamper

import (
	"bytes"
	"crypto"
	_ "crypto/sha1"
	_ "crypto/sha256"
	_ "crypto/sha512"
	"encoding/binary"
	"errors"
	"fmt"
	"unicode/utf16"
)

// Event locates one event of a crypto-agile TCG PC Client event log.
type Event struct {
	Index       int    // position in the log; 0 is the Spec ID header
	PCR         uint32 // PCR index
	Type        uint32 // event type
	Start, End  int    // byte range of the whole event
	DigestAt    []int  // offset of each digest
	DigestLen   []int  // and its length
	DigestAlgs  []uint16
	DataAt      int // offset of the event data
	DataLen     int
	HeaderEvent bool
}

var digestSizes = map[uint16]int{0x0004: 20, 0x000b: 32, 0x000c: 48, 0x000d: 64}

// ParseLog locates the events of a TCG PC Client event log: crypto-agile
// (the format every modern firmware writes) or the SHA-1-only format of
// TPM 1.2-era firmware. It trusts the log; it is for tests only.
func ParseLog(log []byte) ([]Event, error) {
	if len(log) < 32 {
		return nil, errors.New("log too short")
	}
	// Header: pcr, type, sha1 digest, size, data (TCG_PCR_EVENT).
	size := int(binary.LittleEndian.Uint32(log[28:32]))
	if 32+size > len(log) {
		return nil, errors.New("header event overruns the log")
	}
	if !bytes.HasPrefix(log[32:32+size], []byte("Spec ID Event03")) {
		return parseSHA1Log(log)
	}
	events := []Event{{Index: 0, PCR: binary.LittleEndian.Uint32(log[0:]), Type: binary.LittleEndian.Uint32(log[4:]),
		Start: 0, End: 32 + size, DataAt: 32, DataLen: size, HeaderEvent: true}}
	off := 32 + size
	for i := 1; off < len(log); i++ {
		if off+12 > len(log) {
			return nil, fmt.Errorf("event %d truncated", i)
		}
		e := Event{Index: i, Start: off, PCR: binary.LittleEndian.Uint32(log[off:]), Type: binary.LittleEndian.Uint32(log[off+4:])}
		if e.PCR == 0xffffffff || (e.PCR == 0 && e.Type == 0) {
			break // padding
		}
		count := int(binary.LittleEndian.Uint32(log[off+8:]))
		p := off + 12
		for range count {
			alg := binary.LittleEndian.Uint16(log[p:])
			n, ok := digestSizes[alg]
			if !ok {
				return nil, fmt.Errorf("event %d: unknown digest algorithm %#x", i, alg)
			}
			e.DigestAlgs = append(e.DigestAlgs, alg)
			e.DigestAt = append(e.DigestAt, p+2)
			e.DigestLen = append(e.DigestLen, n)
			p += 2 + n
		}
		e.DataLen = int(binary.LittleEndian.Uint32(log[p:]))
		e.DataAt = p + 4
		e.End = e.DataAt + e.DataLen
		if e.End > len(log) {
			return nil, fmt.Errorf("event %d overruns the log", i)
		}
		events = append(events, e)
		off = e.End
	}
	return events, nil
}

// parseSHA1Log locates the events of a SHA-1-only log: every event is a
// TCG_PCR_EVENT (PCR, type, SHA-1 digest, size, data).
func parseSHA1Log(log []byte) ([]Event, error) {
	var events []Event
	for off, i := 0, 0; off+32 <= len(log); i++ {
		e := Event{Index: i, Start: off, PCR: binary.LittleEndian.Uint32(log[off:]), Type: binary.LittleEndian.Uint32(log[off+4:]),
			DigestAt: []int{off + 8}, DigestLen: []int{20}, DigestAlgs: []uint16{AlgSHA1}, DataAt: off + 32,
			DataLen: int(binary.LittleEndian.Uint32(log[off+28:]))}
		if e.PCR == 0xffffffff || (e.PCR == 0 && e.Type == 0 && e.DataLen == 0) {
			break
		}
		e.End = e.DataAt + e.DataLen
		if e.End > len(log) {
			return nil, fmt.Errorf("event %d overruns the log", i)
		}
		events = append(events, e)
		off = e.End
	}
	if len(events) == 0 {
		return nil, errors.New("no events")
	}
	return events, nil
}

// TCG algorithm identifiers of event digests.
const (
	AlgSHA1   uint16 = 0x0004
	AlgSHA256 uint16 = 0x000b
	AlgSHA384 uint16 = 0x000c
)

// Hash returns the hash of a TCG digest algorithm.
func Hash(alg uint16) crypto.Hash {
	switch alg {
	case AlgSHA1:
		return crypto.SHA1
	case AlgSHA256:
		return crypto.SHA256
	case AlgSHA384:
		return crypto.SHA384
	}
	return crypto.SHA512
}

// Rewrite returns a copy of log with the event's data replaced and every
// digest of the event recomputed by digest (given the algorithm and the new
// data). This is what firmware measuring different content would log: the
// log stays consistent, and a TPM it is replayed into (agentside Boot)
// quotes the PCRs it claims.
func Rewrite(log []byte, e Event, data []byte, digest func(alg uint16, data []byte) []byte) []byte {
	var ev bytes.Buffer
	if len(e.DigestAlgs) == 1 && e.DigestAt[0] == e.Start+8 { // SHA-1 format
		ev.Write(log[e.Start : e.Start+8])
		ev.Write(digest(AlgSHA1, data))
	} else {
		ev.Write(log[e.Start : e.Start+12]) // PCR, type, digest count
		for i, alg := range e.DigestAlgs {
			d := digest(alg, data)
			if len(d) != e.DigestLen[i] {
				panic("tamper: digest of the wrong size")
			}
			binary.Write(&ev, binary.LittleEndian, alg)
			ev.Write(d)
		}
	}
	binary.Write(&ev, binary.LittleEndian, uint32(len(data)))
	ev.Write(data)
	out := append(bytes.Clone(log[:e.Start]), ev.Bytes()...)
	return append(out, log[e.End:]...)
}

// HashData is the digest rule of most events: the hash of the data.
func HashData(alg uint16, data []byte) []byte {
	h := Hash(alg).New()
	h.Write(data)
	return h.Sum(nil)
}

// SetDigests returns a copy of log with every digest of the event replaced
// by f(alg, old digest) — a different component measured in the same place
// (e.g. another boot loader), its event data left as it was.
func SetDigests(log []byte, e Event, f func(alg uint16, old []byte) []byte) []byte {
	out := bytes.Clone(log)
	for i, alg := range e.DigestAlgs {
		at, n := e.DigestAt[i], e.DigestLen[i]
		copy(out[at:at+n], f(alg, log[at:at+n]))
	}
	return out
}

// Data returns the event's data.
func (e Event) Data(log []byte) []byte { return log[e.DataAt : e.DataAt+e.DataLen] }

// VariableName returns the name of a UEFI_VARIABLE_DATA event and its
// value, or ok false.
func VariableName(data []byte) (name string, value []byte, ok bool) {
	if len(data) < 32 {
		return "", nil, false
	}
	nameLen := int(binary.LittleEndian.Uint64(data[16:]))
	valLen := int(binary.LittleEndian.Uint64(data[24:]))
	if nameLen > 256 || 32+2*nameLen+valLen > len(data) {
		return "", nil, false
	}
	u := make([]uint16, nameLen)
	for i := range u {
		u[i] = binary.LittleEndian.Uint16(data[32+2*i:])
	}
	return string(utf16.Decode(u)), data[32+2*nameLen : 32+2*nameLen+valLen], true
}

// SetVariableValue returns UEFI_VARIABLE_DATA with its value replaced.
func SetVariableValue(data, value []byte) []byte {
	nameLen := int(binary.LittleEndian.Uint64(data[16:]))
	out := bytes.Clone(data[:32+2*nameLen])
	binary.LittleEndian.PutUint64(out[24:], uint64(len(value)))
	return append(out, value...)
}

// FindVariable returns the first EV_EFI_VARIABLE_DRIVER_CONFIG event on
// PCR 7 that measures the named variable.
func FindVariable(log []byte, events []Event, name string) (Event, bool) {
	for _, e := range events {
		if e.HeaderEvent || e.PCR != 7 || e.Type != 0x80000001 {
			continue
		}
		if n, _, ok := VariableName(e.Data(log)); ok && n == name {
			return e, true
		}
	}
	return Event{}, false
}

// RemoveLastSignature removes the last EFI_SIGNATURE_DATA of the last
// EFI_SIGNATURE_LIST of a signature database (db, dbx), or the whole list
// when it holds one entry: a revocation rolled back.
func RemoveLastSignature(db []byte) ([]byte, error) {
	var starts []int
	for off := 0; off < len(db); {
		if off+28 > len(db) {
			return nil, errors.New("truncated signature list")
		}
		size := int(binary.LittleEndian.Uint32(db[off+16:]))
		if size < 28 || off+size > len(db) {
			return nil, errors.New("bad signature list size")
		}
		starts = append(starts, off)
		off += size
	}
	if len(starts) == 0 {
		return nil, errors.New("empty database")
	}
	last := starts[len(starts)-1]
	listSize := int(binary.LittleEndian.Uint32(db[last+16:]))
	hdrSize := int(binary.LittleEndian.Uint32(db[last+20:]))
	sigSize := int(binary.LittleEndian.Uint32(db[last+24:]))
	if sigSize == 0 || (listSize-28-hdrSize)/sigSize <= 1 {
		return bytes.Clone(db[:last]), nil
	}
	out := bytes.Clone(db[:last+listSize-sigSize])
	binary.LittleEndian.PutUint32(out[last+16:], uint32(listSize-sigSize))
	return out, nil
}

// FlipDigestByte returns a copy of log with one byte of the given event's
// SHA-256 digest inverted.
func FlipDigestByte(log []byte, e Event) []byte {
	out := bytes.Clone(log)
	for i, alg := range e.DigestAlgs {
		if alg == 0x000b {
			out[e.DigestAt[i]] ^= 0xff
		}
	}
	return out
}

// FlipDataByte returns a copy of log with the last byte of the event's data
// inverted; its digests are left alone.
func FlipDataByte(log []byte, e Event) []byte {
	out := bytes.Clone(log)
	out[e.DataAt+e.DataLen-1] ^= 0xff
	return out
}

// Remove returns a copy of log without the event.
func Remove(log []byte, e Event) []byte {
	return append(bytes.Clone(log[:e.Start]), log[e.End:]...)
}

// Find returns the first event of the given type in the given PCR.
func Find(events []Event, pcr, typ uint32) (Event, bool) {
	for _, e := range events {
		if !e.HeaderEvent && e.PCR == pcr && e.Type == typ {
			return e, true
		}
	}
	return Event{}, false
}

// SetType returns a copy of log with the event's type replaced. The type is
// not measured, so the log still replays to the same PCRs.
func SetType(log []byte, e Event, typ uint32) []byte {
	out := bytes.Clone(log)
	binary.LittleEndian.PutUint32(out[e.Start+4:], typ)
	return out
}
