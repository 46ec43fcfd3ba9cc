package main

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"log/slog"
	"net"
	"net/http"
	"net/http/httputil"
	"net/url"
	"path"
	"strings"
	"time"

	"github.com/spf13/cobra"

	"github.com/vouch-dev/vouch/agentside"
	"github.com/vouch-dev/vouch/attest"
)

// defaultListen is the sidecar's default address: loopback only.
const defaultListen = "127.0.0.1:8479"

// reservedPrefix is the path prefix the sidecar answers itself and never
// forwards: /.vouch/healthz, /.vouch/readyz, /.vouch/status, /.vouch/metrics.
const reservedPrefix = "/.vouch/"

type runFlags struct {
	agentFlags
	listen      string
	upstream    string
	allowRemote bool
	maxBody     int64
	adminListen string
}

func (a *app) runCmd() *cobra.Command {
	var f runFlags
	cmd := &cobra.Command{
		Use:   "run",
		Short: "Run a local proxy (sidecar) that attests, keeps the credential fresh and signs every request",
		Long: `run is the sidecar for agents written in any language. It opens the TPM,
measures the workload, creates one TPM-resident agent key for its whole life,
attests to the verifier, and keeps a fresh credential: it attests again at
about 2/3 of each credential's lifetime, and after a failure retries with
backoff (1 s doubling to 30 s) while the old credential is still valid.

It listens on a loopback address (--listen, default ` + defaultListen + `) and
forwards every request to ONE relying party (--upstream): a request for
http://` + defaultListen + `/path?q is sent to {upstream}/path?q with
"Authorization: Vouch <credential>" and a fresh proof of possession
("Vouch-PoP") signed by the TPM key over the method, the upstream URL, the
time and the body. Authorization and Vouch-PoP headers from the local client
are dropped. The application needs no Vouch code: it speaks plain HTTP to the
sidecar.

Why loopback only: whoever can reach the sidecar acts as this agent. A
non-loopback --listen is refused unless --allow-remote is given. Why one
upstream: the sidecar is not a general (CONNECT) proxy, so nothing on the host
can use the agent's identity against other hosts; the credential's audience
is the upstream (default: its origin, scheme://host[:port]).

While the sidecar holds no valid credential (before the first attestation,
after a refusal, or when renewal failed past the expiry) it answers 503 with
an RFC 9457 problem (reason "unavailable", detail saying why) and sends
nothing upstream: an expired credential is never sent. A request body larger
than --max-body is refused with 413 (the proof of possession digests the
whole body).

Just-in-time elevation: a request with the header
  Vouch-Elevate: documents:write Document::"customer-A/report-7"
is sent with a single-use credential for exactly that action and resource,
obtained from the verifier (POST /v1/elevate) first; a refusal is answered
with the verifier's reason and nothing is sent upstream. The header is never
forwarded.

Paths under /.vouch/ are answered by the sidecar and never forwarded:
/.vouch/healthz (the process is up), /.vouch/readyz (200 iff a valid
credential is held), /.vouch/status (JSON: expiry, last success, last error
and the verifier's reason) and /.vouch/metrics (Prometheus). --admin-listen
serves them on a second address too (for probes from outside the pod), from
where nothing is forwarded.`,
		Example: `  vouch-agent run --verifier https://vouch.example --upstream https://docs.example \
      --boot-log testdata/eventlogs/rhel8-uefi.bin \
      --image-ref ghcr.io/acme/agent:1.4 --image-digest sha256:<64 hex> \
      --intent summarize-documents --delegation dlg_… --resource 'Document::"customer-A/*"'

  curl http://127.0.0.1:8479/documents/customer-A/report-7   # sent to https://docs.example/documents/…
  curl http://127.0.0.1:8479/.vouch/readyz                   # 200 once attested`,
		Args: cobra.NoArgs,
		RunE: func(cmd *cobra.Command, _ []string) error { return a.runSidecar(cmd, &f) },
	}
	fs := cmd.Flags()
	f.add(fs, "")
	fs.Lookup("audience").Usage = "relying party the credential is for (default: the origin of --upstream)"
	fs.StringVar(&f.listen, "listen", defaultListen, "address to listen on; loopback only unless --allow-remote")
	fs.StringVar(&f.upstream, "upstream", "", "the relying party every request is forwarded to, https://HOST[:PORT][/PREFIX] (http for loopback only) (required)")
	fs.BoolVar(&f.allowRemote, "allow-remote", false, "allow a non-loopback --listen address: anyone who can reach it acts as this agent")
	fs.StringVar(&f.adminListen, "admin-listen", "", "also serve the sidecar's own read-only paths (/.vouch/healthz, readyz, status, metrics) on this address, e.g. :8480 for a kubelet's probes; it never forwards anything (default: none)")
	fs.Int64Var(&f.maxBody, "max-body", agentside.DefaultMaxPoPBody, "largest request body forwarded, in bytes (the proof of possession digests the whole body); larger ones get 413")
	return cmd
}

// checkRunFlags validates what run needs beyond the attestation flags and
// returns the upstream URL.
func (f *runFlags) check(a *app) (*url.URL, error) {
	if f.upstream == "" {
		return nil, usagef("--upstream is required: the relying party to forward requests to")
	}
	up, err := attest.ServiceURL("--upstream", f.upstream)
	if err != nil {
		return nil, usageError{err}
	}
	if up.RawQuery != "" || up.Fragment != "" || up.User != nil {
		return nil, usagef("--upstream %q must not have a query, fragment or user info", f.upstream)
	}
	if f.verifier != "" {
		if _, err := attest.ServiceURL("--verifier", f.verifier); err != nil {
			return nil, usageError{err}
		}
	}
	if f.audience == "" {
		f.audience = up.Scheme + "://" + up.Host
	}
	if f.maxBody <= 0 {
		return nil, usagef("--max-body must be positive")
	}
	host, _, err := net.SplitHostPort(f.listen)
	if err != nil {
		return nil, usagef("--listen %q: want HOST:PORT: %v", f.listen, err)
	}
	if !isLoopback(host) {
		if !f.allowRemote {
			return nil, usagef("--listen %q is not a loopback address: anyone who can reach the sidecar acts as this agent; use 127.0.0.1 or ::1, or --allow-remote if you really mean it", f.listen)
		}
		a.log.Warn("listening beyond loopback (--allow-remote): anyone who can reach this address acts as the agent", "listen", f.listen)
	}
	return up, nil
}

// isLoopback reports whether a listen host is loopback ("" is every
// interface, so not).
func isLoopback(host string) bool {
	if strings.EqualFold(host, "localhost") {
		return true
	}
	ip := net.ParseIP(host)
	return ip != nil && ip.IsLoopback()
}

func (a *app) runSidecar(cmd *cobra.Command, f *runFlags) error {
	ctx := cmd.Context()
	up, err := f.check(a)
	if err != nil {
		return err
	}
	req, w, err := f.request()
	if err != nil {
		return err
	}
	client, err := agentside.NewClient(f.verifier, nil)
	if err != nil {
		return usageError{err}
	}
	tpm, agent, err := f.openAgent(ctx, a, w)
	if err != nil {
		return err
	}
	defer tpm.Close()
	defer agent.Close()

	m := newSidecarMetrics()
	renewer, err := agentside.NewRenewer(agentside.RenewerOptions{
		Agent: agent, Client: client, Request: req,
		AttemptTimeout: f.timeout,
		Logger:         a.log,
		OnAttempt:      func(o agentside.RenewOutcome, _ error) { m.renewals.WithLabelValues(string(o)).Inc() },
	})
	if err != nil {
		return err
	}
	m.watch(renewer)
	sc := newSidecar(up, renewer, client, f.maxBody, m, a.log)

	ln, err := net.Listen("tcp", f.listen)
	if err != nil {
		return fmt.Errorf("listening on %s: %w", f.listen, err)
	}
	srv := &http.Server{
		Handler:           sc,
		ReadHeaderTimeout: 10 * time.Second,
		ErrorLog:          slog.NewLogLogger(a.log.Handler(), slog.LevelWarn),
	}
	ctx, cancel := context.WithCancel(ctx)
	defer cancel()
	renewed := make(chan struct{})
	go func() {
		defer close(renewed)
		_ = renewer.Run(ctx)
	}()
	served := make(chan error, 2)
	go func() { served <- srv.Serve(ln) }()
	if f.adminListen != "" {
		aln, err := net.Listen("tcp", f.adminListen)
		if err != nil {
			cancel()
			_ = srv.Close()
			<-renewed
			return fmt.Errorf("--admin-listen %s: %w", f.adminListen, err)
		}
		admin := &http.Server{Handler: http.HandlerFunc(sc.serveAdmin), ReadHeaderTimeout: 10 * time.Second,
			ErrorLog: slog.NewLogLogger(a.log.Handler(), slog.LevelWarn)}
		go func() { served <- admin.Serve(aln) }()
		defer admin.Close()
		a.log.Info("sidecar admin paths", "listen", aln.Addr().String())
		if a.adminListening != nil {
			a.adminListening(aln.Addr())
		}
	}
	a.log.Info("sidecar listening", "listen", ln.Addr().String(), "upstream", up.String(),
		"audience", req.Audience, "verifier", client.Base())
	if a.listening != nil {
		a.listening(ln.Addr())
	}
	select {
	case <-ctx.Done():
	case err = <-served:
	}
	cancel()
	sctx, scancel := context.WithTimeout(context.WithoutCancel(ctx), 5*time.Second)
	defer scancel()
	_ = srv.Shutdown(sctx)
	<-renewed
	if err != nil && !errors.Is(err, http.ErrServerClosed) {
		return fmt.Errorf("serving on %s: %w", ln.Addr(), err)
	}
	a.log.Info("sidecar stopped")
	return nil
}

// sidecar is the proxy: reserved paths answered locally, everything else
// forwarded to the one upstream through the Vouch transport.
type sidecar struct {
	renewer *agentside.Renewer
	client  *agentside.Client // for elevations
	proxy   *httputil.ReverseProxy
	maxBody int64
	metrics *sidecarMetrics
	log     *slog.Logger
}

func newSidecar(up *url.URL, r *agentside.Renewer, client *agentside.Client, maxBody int64, m *sidecarMetrics, log *slog.Logger) *sidecar {
	s := &sidecar{renewer: r, client: client, maxBody: maxBody, metrics: m, log: log}
	tr := r.Transport(nil)
	tr.MaxBody = maxBody
	s.proxy = &httputil.ReverseProxy{
		Rewrite: func(pr *httputil.ProxyRequest) {
			pr.SetURL(up)
			// The credential and the proof are the sidecar's to add; the
			// local application must not inject its own.
			pr.Out.Header.Del("Authorization")
			pr.Out.Header.Del(attest.PoPHeader)
			pr.Out.Header.Del(ElevateHeader)
			pr.Out = withInbound(pr.Out, pr.In.Host)
		},
		ModifyResponse: modifyResponse(up, r.RenewNow),
		Transport:      elevatingTransport{standing: tr},
		ErrorHandler:   s.proxyError,
		ErrorLog:       slog.NewLogLogger(log.Handler(), slog.LevelWarn),
	}
	return s
}

func (s *sidecar) ServeHTTP(w http.ResponseWriter, r *http.Request) {
	// Dot segments are resolved before the check, so /x/../.vouch/readyz
	// is answered here too rather than forwarded.
	if p := path.Clean("/" + r.URL.Path); p == strings.TrimSuffix(reservedPrefix, "/") || strings.HasPrefix(p, reservedPrefix) {
		s.serveReserved(w, r, p)
		return
	}
	rec := &statusRecorder{ResponseWriter: w}
	defer func() { s.metrics.requests.WithLabelValues(statusClass(rec.status)).Inc() }()
	if s.renewer.Credential() == nil {
		s.unavailable(rec)
		return
	}
	if r.ContentLength > s.maxBody {
		s.tooLarge(rec)
		return
	}
	if r.Body != nil && r.Body != http.NoBody {
		r.Body = http.MaxBytesReader(w, r.Body, s.maxBody)
	}
	if r = s.elevate(rec, r); r == nil {
		return
	}
	s.proxy.ServeHTTP(rec, r)
}

// proxyError answers a request the transport could not send.
func (s *sidecar) proxyError(w http.ResponseWriter, r *http.Request, err error) {
	var mbe *http.MaxBytesError
	switch {
	case errors.As(err, &mbe):
		s.tooLarge(w)
	case errors.Is(err, agentside.ErrNoCredential):
		s.unavailable(w) // expired between the check and the send
	case errors.Is(err, context.Canceled) && r.Context().Err() != nil:
		w.WriteHeader(http.StatusBadGateway) // the client left; nobody reads this
	default:
		s.log.Warn("forwarding failed", "method", r.Method, "path", r.URL.Path, "error", err)
		attest.WriteProblem(w, attest.ProblemFor(http.StatusBadGateway,
			attest.Errorf(attest.ReasonUnavailable, "the relying party could not be reached: %v", err)))
	}
}

func (s *sidecar) tooLarge(w http.ResponseWriter) {
	attest.WriteProblem(w, attest.ProblemFor(http.StatusRequestEntityTooLarge, attest.Errorf(attest.ReasonRequestTooLarge,
		"the request body is larger than %d bytes, the most the sidecar signs a proof of possession over (--max-body)", s.maxBody)))
}

// unavailable answers 503 while no valid credential is held, saying why.
func (s *sidecar) unavailable(w http.ResponseWriter) {
	st := s.renewer.Status()
	var detail string
	switch {
	case st.LastError != "" && st.Refused:
		detail = fmt.Sprintf("no valid credential: the verifier refused the attestation (%s): %s", st.LastReason, st.LastError)
	case st.LastError != "":
		detail = fmt.Sprintf("no valid credential: the last attestation failed (%s): %s", st.LastReason, st.LastError)
	case st.Successes == 0:
		detail = "no credential yet: the first attestation has not finished"
	default:
		detail = "no valid credential: the last one expired before it was renewed"
	}
	w.Header().Set("Retry-After", "1")
	attest.WriteProblem(w, attest.ProblemFor(http.StatusServiceUnavailable, attest.Errorf(attest.ReasonUnavailable, "%s", detail)))
}

// serveAdmin answers --admin-listen: the sidecar's own read-only paths,
// and 404 for anything else (nothing is ever forwarded from there).
func (s *sidecar) serveAdmin(w http.ResponseWriter, r *http.Request) {
	p := path.Clean("/" + r.URL.Path)
	if !strings.HasPrefix(p, reservedPrefix) {
		http.Error(w, "not found: the admin address serves "+reservedPrefix+"healthz, readyz, status and metrics only", http.StatusNotFound)
		return
	}
	s.serveReserved(w, r, p)
}

// serveReserved answers the sidecar's own paths.
func (s *sidecar) serveReserved(w http.ResponseWriter, r *http.Request, p string) {
	if r.Method != http.MethodGet && r.Method != http.MethodHead {
		w.Header().Set("Allow", "GET, HEAD")
		http.Error(w, "method not allowed", http.StatusMethodNotAllowed)
		return
	}
	switch strings.TrimPrefix(p, reservedPrefix) {
	case "healthz":
		w.Header().Set("Content-Type", "text/plain; charset=utf-8")
		_, _ = w.Write([]byte("ok\n"))
	case "readyz":
		if s.renewer.Credential() == nil {
			s.unavailable(w)
			return
		}
		w.Header().Set("Content-Type", "text/plain; charset=utf-8")
		_, _ = w.Write([]byte("ready\n"))
	case "status":
		w.Header().Set("Content-Type", "application/json")
		w.Header().Set("Cache-Control", "no-store")
		_ = json.NewEncoder(w).Encode(s.renewer.Status())
	case "metrics":
		s.metrics.handler().ServeHTTP(w, r)
	default:
		http.Error(w, "not found: paths under "+reservedPrefix+" are the sidecar's own and are never forwarded", http.StatusNotFound)
	}
}

// statusRecorder remembers the status written, for the metrics.
type statusRecorder struct {
	http.ResponseWriter
	status int
}

func (r *statusRecorder) WriteHeader(code int) {
	if r.status == 0 {
		r.status = code
	}
	r.ResponseWriter.WriteHeader(code)
}

func (r *statusRecorder) Write(b []byte) (int, error) {
	if r.status == 0 {
		r.status = http.StatusOK
	}
	return r.ResponseWriter.Write(b)
}

// Unwrap lets http.ResponseController (used by ReverseProxy to flush) reach
// the real writer.
func (r *statusRecorder) Unwrap() http.ResponseWriter { return r.ResponseWriter }

func statusClass(code int) string {
	if code < 100 || code > 599 {
		return "none"
	}
	return fmt.Sprintf("%dxx", code/100)
}
