package main

import (
	"fmt"
	"time"

	"github.com/spf13/cobra"

	"github.com/vouch-dev/vouch/internal/loadgen"
)

func newBenchCmd() *cobra.Command {
	cmd := &cobra.Command{Use: "bench", Short: "Measure the verifier's performance"}
	cmd.AddCommand(newBenchAuthorizeCmd())
	return cmd
}

func newBenchAuthorizeCmd() *cobra.Command {
	var o loadgen.Options
	var asJSON bool
	cmd := &cobra.Command{
		Use:   "authorize [--server URL --data DIR] [--workers N] [--duration 10s]",
		Short: "Drive POST /v1/authorize with proofs of possession and report decisions/s and latency",
		Long: `authorize is a load generator for continuous authorization. It creates a
delegation and an agent credential under it (minted with the verifier's own
issuing key, for a software P-256 agent key), then N workers send
POST /v1/authorize questions, each with a fresh proof of possession, for the
given duration after a warm-up. Every answer must be a permit.

Without --server it starts a verifier in this process on a loopback port
(load generator and server then share the machine's CPUs, as they do with
--server on the same host). With --server, --data must be that verifier's
data directory (for its issuing key and database) and --issuer its --issuer.

--presign signs all proofs before the run, so that the generator's ECDSA
signing does not compete with the verifier for the CPU. --json prints
decisions_per_s, p50_ms, p99_ms and the rest.`,
		Args: cobra.NoArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			res, err := loadgen.Run(cmd.Context(), o)
			if err != nil {
				return err
			}
			if asJSON {
				return printJSON(cmd.OutOrStdout(), res)
			}
			w := cmd.OutOrStdout()
			where := res.Server
			if res.InProcess {
				where += " (in process)"
			}
			fmt.Fprintf(w, "POST /v1/authorize on %s: %d workers, %.1f s, GOMAXPROCS %d, %d CPUs, presigned %v\n",
				where, res.Workers, res.DurationS, res.GOMAXPROCS, res.CPUs, res.Presigned)
			fmt.Fprintf(w, "  %d decisions (%d permit, %d deny, %d errors): %.0f decisions/s\n", res.Decisions, res.Permits, res.Denies, res.Errors, res.DecisionsPerS)
			fmt.Fprintf(w, "  latency p50 %.2f ms, p90 %.2f ms, p99 %.2f ms, max %.2f ms\n", res.P50ms, res.P90ms, res.P99ms, res.MaxMs)
			if res.FirstDenial != "" {
				fmt.Fprintf(w, "  first denial: %s\n", res.FirstDenial)
			}
			if res.FirstError != "" {
				fmt.Fprintf(w, "  first error: %s\n", res.FirstError)
			}
			if res.Denies+res.Errors > 0 {
				return fmt.Errorf("%d questions were not permitted", res.Denies+res.Errors)
			}
			return nil
		},
	}
	f := cmd.Flags()
	f.StringVar(&o.Server, "server", "", "verifier URL (default: start one in this process)")
	f.StringVar(&o.DataDir, "data", "", "data directory of the verifier at --server")
	f.StringVar(&o.Issuer, "issuer", "vouchd", "the --issuer of the verifier at --server")
	f.IntVar(&o.Workers, "workers", 0, "concurrent workers (default 2 × GOMAXPROCS)")
	f.DurationVar(&o.Duration, "duration", 10*time.Second, "measurement duration")
	f.DurationVar(&o.Warmup, "warmup", time.Second, "warm-up before measuring")
	f.BoolVar(&o.Presign, "presign", false, "sign every proof before the run")
	f.IntVar(&o.Rate, "rate", 0, "cap the offered load at this many questions per second (0: as fast as answered)")
	f.BoolVar(&asJSON, "json", false, "print the result as JSON")
	return cmd
}
