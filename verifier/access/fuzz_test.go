package access

import (
	"testing"

	"github.com/vouch-dev/vouch/attest"
)

// FuzzAuthorizeQuestion: the body of POST /v1/authorize is decoded and
// validated without panics, and every refusal is an *attest.Error.
func FuzzAuthorizeQuestion(f *testing.F) {
	f.Add([]byte(`{"credential":"AAEC","pop":"AAEC","method":"GET","target":"https://a/b","body_sha256":"47DEQpj8HBSa+/TImW+5JCeuQeRkm5NMpJWZG3hSuFU=","audience":"a","action":"documents:read","resource":"Document::\"x\"","context":{"source_ip":"10.0.0.1","threat_flags":["x"],"anomaly_score":3}}`))
	f.Add([]byte(`{"resource":"Document::\"x*\""}`))
	f.Add([]byte(`{}`))
	f.Fuzz(func(t *testing.T, b []byte) {
		var q attest.AuthorizeRequest
		if err := decodeJSON(b, &q); err != nil {
			if attest.ReasonOf(err) != attest.ReasonRequestMalformed {
				t.Fatalf("decode: %v", err)
			}
			return
		}
		res, err := validateQuestion(&q)
		if err != nil {
			if attest.ReasonOf(err) != attest.ReasonRequestMalformed {
				t.Fatalf("validate: %v", err)
			}
			return
		}
		if res.IsPattern() {
			t.Fatalf("pattern %s accepted for a decision", res)
		}
	})
}

// FuzzPeekAudience: reading an unverified credential's audience never
// panics.
func FuzzPeekAudience(f *testing.F) {
	f.Add([]byte{0xd2, 0x84, 0x40, 0xa0, 0x43, 0xa1, 0x03, 0x61, 0x61, 0x40})
	f.Fuzz(func(t *testing.T, b []byte) {
		if _, err := peekAudience(b); err != nil && attest.ReasonOf(err) != attest.ReasonCredentialMalformed {
			t.Fatal(err)
		}
	})
}
