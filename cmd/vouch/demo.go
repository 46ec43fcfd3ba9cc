package main

import (
	"github.com/spf13/cobra"
)

func newDemoCmd() *cobra.Command {
	return &cobra.Command{Use: "demo", Short: "Run the whole Vouch flow on this machine (placeholder)"}
}
