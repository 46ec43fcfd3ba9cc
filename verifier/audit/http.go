package audit

import (
	"encoding/hex"
	"errors"
	"io/fs"
	"net/http"
	"os"
	"path/filepath"
	"regexp"
	"strings"

	"github.com/vouch-dev/vouch/attest"
)

// Paths served by Handler, relative to its mount point (vouchd mounts it at
// /v1/log/):
//
//	checkpoint                      the latest signed checkpoint (C2SP tlog-checkpoint)
//	tile/<L>/<N>[.p/<W>]            hash tiles (C2SP tlog-tiles)
//	tile/entries/<N>[.p/<W>]        entry bundles: the audit records
//	key                             the checkpoint verifier key (note verifier key)
//	evidence/<sha256 hex>           archived evidence
//	refs/<sha256 hex>               archived reference set (canonical CBOR)
var (
	tilePath     = regexp.MustCompile(`^tile/(entries|[0-9]{1,2})/(x[0-9]{3}/)*[0-9]{3}(\.p/[0-9]{1,3})?$`)
	evidencePath = regexp.MustCompile(`^evidence/([0-9a-f]{64})$`)
	refsPath     = regexp.MustCompile(`^refs/([0-9a-f]{64})$`)
)

// MediaTypeRefs is the Content-Type of an archived reference set.
const MediaTypeRefs = "application/vnd.vouch.refs+cbor"

// Handler serves the audit log of a data directory, read-only, as static
// files in the C2SP tlog-tiles layout, plus its key and archives.
//
// The log is public to whoever can reach it: records name agents, delegated
// users and resources. Put /v1/log/ behind the same access control as the
// rest of the API when that matters (see docs/audit.md).
func Handler(dataDir, publicKey string) http.Handler {
	logDir := filepath.Join(dataDir, LogDirName)
	return http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		if r.Method != http.MethodGet && r.Method != http.MethodHead {
			w.Header().Set("Allow", "GET, HEAD")
			attest.WriteProblem(w, &attest.Problem{Type: "about:blank", Title: "method not allowed", Status: http.StatusMethodNotAllowed, Reason: "method-not-allowed"})
			return
		}
		p := strings.TrimPrefix(r.URL.Path, "/")
		switch {
		case p == "checkpoint":
			serveFile(w, r, filepath.Join(logDir, "checkpoint"), "text/plain; charset=utf-8", "no-cache")
		case p == "key":
			w.Header().Set("Content-Type", "text/plain; charset=utf-8")
			w.Header().Set("Cache-Control", "public, max-age=300")
			w.Write([]byte(publicKey + "\n"))
		case tilePath.MatchString(p):
			cache := "public, max-age=31536000, immutable"
			if strings.Contains(p, ".p/") {
				cache = "public, max-age=60"
			}
			serveFile(w, r, filepath.Join(logDir, filepath.FromSlash(p)), "application/octet-stream", cache)
		case evidencePath.MatchString(p):
			d, _ := hex.DecodeString(evidencePath.FindStringSubmatch(p)[1])
			serveFile(w, r, EvidencePath(dataDir, d), attest.EvidenceMediaType, "public, max-age=31536000, immutable")
		case refsPath.MatchString(p):
			path, _ := RefsPath(dataDir, "sha256:"+refsPath.FindStringSubmatch(p)[1])
			serveFile(w, r, path, MediaTypeRefs, "public, max-age=31536000, immutable")
		default:
			notFound(w, r)
		}
	})
}

func serveFile(w http.ResponseWriter, r *http.Request, path, contentType, cache string) {
	b, err := os.ReadFile(path)
	if errors.Is(err, fs.ErrNotExist) {
		notFound(w, r)
		return
	}
	if err != nil {
		attest.WriteProblem(w, attest.ProblemFor(http.StatusInternalServerError, err))
		return
	}
	w.Header().Set("Content-Type", contentType)
	w.Header().Set("Cache-Control", cache)
	if r.Method == http.MethodHead {
		return
	}
	w.Write(b)
}

func notFound(w http.ResponseWriter, r *http.Request) {
	attest.WriteProblem(w, &attest.Problem{Type: "about:blank", Title: "not found", Status: http.StatusNotFound,
		Detail: r.URL.Path + " is not part of the audit log", Reason: "not-found"})
}
