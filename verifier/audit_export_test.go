package verifier_test

import (
	"net/http"

	"github.com/vouch-dev/vouch/verifier/audit"
)

func auditHandler(dataDir, key string) http.Handler {
	mux := http.NewServeMux()
	mux.Handle("GET /v1/log/", http.StripPrefix("/v1/log", audit.Handler(dataDir, key)))
	return mux
}
