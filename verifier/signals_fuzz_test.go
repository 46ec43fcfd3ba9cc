package verifier_test

import (
	"testing"

	"github.com/vouch-dev/vouch/attest"
	"github.com/vouch-dev/vouch/verifier"
)

// FuzzDecodeReportBatch: the POST /v1/signals body decoder never panics, and
// whatever it accepts is within the documented bounds.
func FuzzDecodeReportBatch(f *testing.F) {
	f.Add([]byte(`{"reports":[{"time":"2026-01-02T15:04:05Z","cti":"MDEyMzQ1Njc4OWFiY2RlZg==","sub":"urn:x","method":"GET","path":"/a","outcome":"accepted"}]}`))
	f.Add([]byte(`{"reports":[]}`))
	f.Add([]byte(`{"reports":[{"cti":"AA==","outcome":"refused","reason":"pop-signature"}]} {}`))
	f.Fuzz(func(t *testing.T, b []byte) {
		batch, err := verifier.DecodeReportBatch(b)
		if err != nil {
			return
		}
		if len(batch.Reports) > attest.MaxReportBatch {
			t.Fatalf("%d reports accepted", len(batch.Reports))
		}
		for _, r := range batch.Reports {
			if len(r.CTI) != attest.CredentialIDSize || (r.Outcome != attest.ReportAccepted && r.Outcome != attest.ReportRefused) {
				t.Fatalf("accepted an invalid report: %+v", r)
			}
		}
	})
}
