// Package tamper edits TPM evidence the way an attacker would — flip a byte
// of one event's digest or data, drop an event, rewrite a CEL record — so
// that tests can prove the verifier notices. It is test support, not
// product code, and lives under internal so nothing else imports it.
package tamper

import (
	"bytes"
	"encoding/binary"
	"errors"
	"fmt"
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

// ParseLog locates the events of a crypto-agile log (the format every
// modern firmware writes). It trusts the log; it is for tests only.
func ParseLog(log []byte) ([]Event, error) {
	if len(log) < 32 {
		return nil, errors.New("log too short")
	}
	// Header: pcr, type, sha1 digest, size, data (TCG_PCR_EVENT).
	size := int(binary.LittleEndian.Uint32(log[28:32]))
	if 32+size > len(log) {
		return nil, errors.New("header event overruns the log")
	}
	events := []Event{{Index: 0, PCR: binary.LittleEndian.Uint32(log[0:]), Type: binary.LittleEndian.Uint32(log[4:]),
		Start: 0, End: 32 + size, DataAt: 32, DataLen: size, HeaderEvent: true}}
	if !bytes.HasPrefix(log[32:32+size], []byte("Spec ID Event03")) {
		return nil, errors.New("not a crypto-agile log")
	}
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
