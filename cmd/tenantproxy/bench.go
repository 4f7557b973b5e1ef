package main

import (
	"errors"

	"github.com/spf13/cobra"
)

func newBenchCommand(*globals) *cobra.Command {
	return &cobra.Command{
		Use:   "bench",
		Short: "Benchmark the proxy against direct connections and PgBouncer (arrives with issue #7)",
		Args:  cobra.NoArgs,
		RunE: func(*cobra.Command, []string) error {
			return errors.New("bench is not built yet: issue #7 brings it")
		},
	}
}
