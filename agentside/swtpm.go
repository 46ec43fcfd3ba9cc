package agentside

import (
	"context"
	"encoding/binary"
	"errors"
	"fmt"
	"io"
	"net"
	"time"

	"github.com/google/go-tpm/legacy/tpm2"
)

// swtpmIOTimeout bounds one TPM command over TCP.
const swtpmIOTimeout = 30 * time.Second

// maxTPMResponse bounds a TPM response read from the network.
const maxTPMResponse = 64 << 10

// openSWTPM connects to the data channel of swtpm ("swtpm socket --tpm2
// --server type=tcp,port=PORT"), which carries raw TPM 2.0 commands, and
// makes sure the TPM has started. swtpm must have been started with
// --flags not-need-init (and preferably startup-clear): Vouch does not power
// cycle a TPM through the control channel, which would reset its PCRs.
func openSWTPM(ctx context.Context, addr string) (io.ReadWriteCloser, error) {
	var d net.Dialer
	conn, err := d.DialContext(ctx, "tcp", addr)
	if err != nil {
		return nil, fmt.Errorf("connecting to swtpm: %w", err)
	}
	s := &tpmStream{conn: conn}
	if err := tpm2.Startup(s, tpm2.StartupClear); err != nil {
		var rc tpm2.Error
		if !errors.As(err, &rc) || rc.Code != tpm2.RCInitialize { // RCInitialize: already started
			_ = conn.Close()
			return nil, fmt.Errorf("swtpm at %s: TPM2_Startup failed (start swtpm with --tpm2 --flags not-need-init,startup-clear): %w", addr, err)
		}
	}
	return s, nil
}

// tpmStream frames TPM responses on a byte stream: go-tpm reads a response
// with a single Read, which a TCP connection may split. Read returns whole
// responses (header, then the size it announces).
type tpmStream struct {
	conn    net.Conn
	pending []byte
}

func (s *tpmStream) Write(p []byte) (int, error) {
	if err := s.conn.SetDeadline(time.Now().Add(swtpmIOTimeout)); err != nil {
		return 0, err
	}
	s.pending = nil
	return s.conn.Write(p)
}

func (s *tpmStream) Read(p []byte) (int, error) {
	if len(s.pending) == 0 {
		var hdr [10]byte // tag (2), size (4), response code (4)
		if _, err := io.ReadFull(s.conn, hdr[:]); err != nil {
			return 0, fmt.Errorf("reading a TPM response: %w", err)
		}
		size := binary.BigEndian.Uint32(hdr[2:6])
		if size < uint32(len(hdr)) || size > maxTPMResponse {
			return 0, fmt.Errorf("the TPM announced a response of %d bytes", size)
		}
		resp := make([]byte, size)
		copy(resp, hdr[:])
		if _, err := io.ReadFull(s.conn, resp[len(hdr):]); err != nil {
			return 0, fmt.Errorf("reading a TPM response: %w", err)
		}
		s.pending = resp
	}
	n := copy(p, s.pending)
	s.pending = s.pending[n:]
	return n, nil
}

func (s *tpmStream) Close() error { return s.conn.Close() }
