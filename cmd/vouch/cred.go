package main

import (
	"context"
	"encoding/base64"
	"encoding/hex"
	"fmt"
	"io"
	"net/http"
	"os"
	"strings"
	"time"

	"github.com/spf13/cobra"

	"github.com/vouch-dev/vouch/attest"
)

func newCredCmd() *cobra.Command {
	cmd := &cobra.Command{Use: "cred", Short: "Inspect and verify credentials"}
	cmd.AddCommand(newCredVerifyCmd())
	return cmd
}

func newCredVerifyCmd() *cobra.Command {
	var keys, aud, iss string
	var asJSON bool
	var skew time.Duration
	cmd := &cobra.Command{
		Use:   "verify --keys URL|FILE --aud AUDIENCE CREDENTIAL",
		Short: "Verify a credential offline and print its claims",
		Long: `verify checks a credential the way a relying party does: COSE_Sign1
signature by a key of the verifier's key set (fetched from URL, e.g.
http://127.0.0.1:8700/v1/keys, or read from a COSE_KeySet FILE), algorithm and
curve, expiry and not-before (with --skew), audience and profile. It prints the
verified claims, or the reason it refuses.

CREDENTIAL is a file holding the credential as written by vouch-agent
(binary COSE, or base64url text); "-" reads standard input.`,
		Args: cobra.ExactArgs(1),
		RunE: func(cmd *cobra.Command, args []string) error {
			raw, err := readCredential(args[0])
			if err != nil {
				return err
			}
			ks, err := loadKeySet(cmd.Context(), keys)
			if err != nil {
				return err
			}
			claims, err := attest.VerifyCredential(raw, ks, attest.CredentialOptions{Audience: []string{aud}, Issuer: iss, Skew: skew})
			if err != nil {
				return fmt.Errorf("credential refused: %w", err)
			}
			if asJSON {
				return printJSON(cmd.OutOrStdout(), claimsView(claims))
			}
			printClaims(cmd.OutOrStdout(), claims)
			return nil
		},
	}
	cmd.Flags().StringVar(&keys, "keys", "", "verifier key set: URL of /v1/keys or a COSE_KeySet file (required)")
	cmd.Flags().StringVar(&aud, "aud", "", "audience this relying party answers to (required)")
	cmd.Flags().StringVar(&iss, "iss", "", "accept only this issuer (iss); default: any issuer whose key is in the key set")
	cmd.Flags().DurationVar(&skew, "skew", 5*time.Second, "clock skew allowed on exp and nbf")
	cmd.Flags().BoolVar(&asJSON, "json", false, "print the claims as JSON")
	cmd.MarkFlagRequired("keys")
	cmd.MarkFlagRequired("aud")
	return cmd
}

func readCredential(path string) ([]byte, error) {
	var b []byte
	var err error
	if path == "-" {
		b, err = io.ReadAll(io.LimitReader(os.Stdin, 4*attest.MaxCredentialSize))
	} else {
		b, err = os.ReadFile(path)
	}
	if err != nil {
		return nil, fmt.Errorf("reading credential: %w", err)
	}
	if len(b) > 0 && b[0] != 0xd2 { // not a tagged COSE_Sign1: try base64url text
		if d, err := base64.RawURLEncoding.DecodeString(strings.TrimRight(strings.TrimSpace(string(b)), "=")); err == nil {
			return d, nil
		}
	}
	return b, nil
}

func loadKeySet(ctx context.Context, src string) (*attest.KeySet, error) {
	var b []byte
	if strings.HasPrefix(src, "http://") || strings.HasPrefix(src, "https://") {
		ctx, cancel := context.WithTimeout(ctx, 10*time.Second)
		defer cancel()
		req, err := http.NewRequestWithContext(ctx, http.MethodGet, src, nil)
		if err != nil {
			return nil, err
		}
		req.Header.Set("Accept", attest.KeySetMediaType)
		resp, err := http.DefaultClient.Do(req)
		if err != nil {
			return nil, fmt.Errorf("fetching key set: %w", err)
		}
		defer resp.Body.Close()
		if resp.StatusCode != http.StatusOK {
			return nil, fmt.Errorf("fetching key set from %s: %s", src, resp.Status)
		}
		if b, err = io.ReadAll(io.LimitReader(resp.Body, attest.MaxKeySetSize+1)); err != nil {
			return nil, fmt.Errorf("reading key set: %w", err)
		}
	} else {
		var err error
		if b, err = os.ReadFile(src); err != nil {
			return nil, fmt.Errorf("reading key set: %w", err)
		}
	}
	return attest.DecodeKeySet(b)
}

// credentialView is the JSON form of verified claims.
type credentialView struct {
	Issuer     string                   `json:"iss"`
	Subject    string                   `json:"sub"`
	Audience   string                   `json:"aud"`
	IssuedAt   time.Time                `json:"iat"`
	NotBefore  time.Time                `json:"nbf"`
	Expires    time.Time                `json:"exp"`
	ID         string                   `json:"cti"`
	Nonce      string                   `json:"eat_nonce"`
	Profile    string                   `json:"eat_profile"`
	Scope      []string                 `json:"scope,omitempty"`
	Intent     string                   `json:"intent,omitempty"`
	Delegation string                   `json:"delegation,omitempty"`
	LogIndex   *uint64                  `json:"log_index,omitempty"`
	SingleUse  bool                     `json:"single_use,omitempty"`
	Verifier   attest.VerifierID        `json:"verifier_id"`
	Submods    map[string]appraisalView `json:"submods"`
}

type appraisalView struct {
	Status      string               `json:"status"`
	TrustVector map[string]int8      `json:"trust_vector"`
	PolicyID    string               `json:"policy_id,omitempty"`
	ImageDigest string               `json:"image_digest,omitempty"`
	ImageRef    string               `json:"image_ref,omitempty"`
	AKDigest    string               `json:"ak_digest,omitempty"`
	Platform    string               `json:"platform,omitempty"`
	SecureBoot  *bool                `json:"secure_boot,omitempty"`
	PCRBank     string               `json:"pcr_bank,omitempty"`
	Reasons     []attest.ClaimReason `json:"reasons,omitempty"`
}

func claimsView(c *attest.Claims) credentialView {
	v := credentialView{
		Issuer: c.Issuer, Subject: c.Subject, Audience: c.Audience,
		IssuedAt: c.IssuedAtTime().UTC(), NotBefore: c.NotBeforeTime().UTC(), Expires: c.ExpiresAt().UTC(),
		ID: hex.EncodeToString(c.ID), Nonce: hex.EncodeToString(c.Nonce), Profile: c.Profile,
		Scope: c.Scope, Intent: c.Intent, Delegation: c.Delegation, LogIndex: c.LogIndex, SingleUse: c.SingleUse,
		Verifier: c.VerifierID, Submods: map[string]appraisalView{},
	}
	for name, a := range c.Submods {
		av := appraisalView{Status: a.Status.String(), TrustVector: map[string]int8{}, PolicyID: a.PolicyID, Reasons: a.Reasons}
		for _, nc := range a.TrustVector.Values() {
			if nc.Value != 0 {
				av.TrustVector[nc.Name] = nc.Value
			}
		}
		if cl := a.Claims; cl != nil {
			if cl.ImageDigest != nil {
				av.ImageDigest = "sha256:" + hex.EncodeToString(cl.ImageDigest.Value)
			}
			if cl.AKDigest != nil {
				av.AKDigest = hex.EncodeToString(cl.AKDigest.Value)
			}
			av.ImageRef, av.Platform, av.SecureBoot, av.PCRBank = cl.ImageRef, cl.Platform, cl.SecureBoot, cl.PCRBank
		}
		v.Submods[name] = av
	}
	return v
}

func printClaims(w io.Writer, c *attest.Claims) {
	v := claimsView(c)
	fmt.Fprintf(w, "credential verified\n")
	fmt.Fprintf(w, "  subject   %s\n", v.Subject)
	fmt.Fprintf(w, "  issuer    %s\n", v.Issuer)
	fmt.Fprintf(w, "  audience  %s\n", v.Audience)
	fmt.Fprintf(w, "  issued    %s\n", v.IssuedAt.Format(time.RFC3339))
	fmt.Fprintf(w, "  expires   %s (%s lifetime)\n", v.Expires.Format(time.RFC3339), v.Expires.Sub(v.IssuedAt))
	fmt.Fprintf(w, "  id        %s\n", v.ID)
	if len(v.Scope) > 0 {
		fmt.Fprintf(w, "  scope     %s\n", strings.Join(v.Scope, " "))
	}
	if v.Intent != "" {
		fmt.Fprintf(w, "  intent    %s (delegation %s)\n", v.Intent, v.Delegation)
	}
	if v.LogIndex != nil {
		fmt.Fprintf(w, "  audit log index %d\n", *v.LogIndex)
	}
	for _, name := range []string{attest.SubmodTPM, attest.SubmodWorkload, attest.SubmodTEE} {
		a, ok := v.Submods[name]
		if !ok {
			continue
		}
		fmt.Fprintf(w, "  %-9s %s", name, a.Status)
		if a.Platform != "" {
			fmt.Fprintf(w, "  platform %s", a.Platform)
		}
		if a.SecureBoot != nil {
			fmt.Fprintf(w, "  secure boot %v", *a.SecureBoot)
		}
		if a.ImageDigest != "" {
			fmt.Fprintf(w, "  image %s", a.ImageDigest)
		}
		if a.ImageRef != "" {
			fmt.Fprintf(w, " (%s)", a.ImageRef)
		}
		fmt.Fprintln(w)
		for _, r := range a.Reasons {
			fmt.Fprintf(w, "            %s: %s\n", r.Reason, r.Detail)
		}
	}
}
