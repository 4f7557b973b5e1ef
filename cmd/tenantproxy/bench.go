package main

import (
	"fmt"
	"os"

	"github.com/spf13/cobra"

	"github.com/tenantproxy/tenantproxy/bench"
)

func newBenchCommand(*globals) *cobra.Command {
	var opts bench.Options
	cmd := &cobra.Command{
		Use:   "bench",
		Short: "Benchmark the proxy against direct PostgreSQL and PgBouncer on this machine",
		Long: "Starts a throwaway PostgreSQL from local binaries, provisions tenants in the shared and schema\n" +
			"tiers, and measures direct PostgreSQL, tenantproxy (session mode, and transaction mode when\n" +
			"available) and PgBouncer (when installed) in the same run, interleaved, with pgbench and a\n" +
			"built-in load generator. Prints a table of medians and ratios; writes bench.json and an SVG\n" +
			"chart per scenario into --out. Scenarios: a per-query overhead, b tenant context switching,\n" +
			"c connection scale and memory, d connect rate, e noisy neighbour, f provisioning rate,\n" +
			"g added latency at one client, h scaling with cores (transaction mode at every core and at one).",
		Args: cobra.NoArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			self, err := os.Executable()
			if err != nil {
				return fmt.Errorf("bench runs this binary's serve: %w", err)
			}
			if opts.ProxyBinary == "" {
				opts.ProxyBinary = self
			}
			opts.Progress = cmd.ErrOrStderr()
			report, err := bench.Run(cmd.Context(), opts)
			if report != nil {
				if terr := report.WriteTable(cmd.OutOrStdout()); terr != nil && err == nil {
					err = terr
				}
				fmt.Fprintf(cmd.OutOrStdout(), "\nbench.json and charts in %s\n", opts.OutDir)
			}
			return err
		},
	}
	f := cmd.Flags()
	f.BoolVar(&opts.Quick, "quick", false, "one-minute smoke run: short measurements, one round, small scales")
	f.DurationVar(&opts.Duration, "duration", 0, "length of one measurement; 0 means 5s (quick: 2s)")
	f.IntVar(&opts.Rounds, "rounds", 0, "interleaved repetitions of every measurement; 0 means 3 (quick: 1)")
	f.StringSliceVar(&opts.Scenarios, "scenarios", nil, "scenarios to run, by letter a-h; empty means all")
	f.StringSliceVar(&opts.Targets, "targets", nil, "targets: direct, tp-session, tp-transaction, tp-transaction-1proc (scenario h only), pgbouncer; empty means all available")
	f.StringVar(&opts.Script, "script", "", "pgbench script for the custom case of scenario a (may use :naccounts)")
	f.StringVar(&opts.OutDir, "out", "bench-results", "directory for bench.json and the SVG charts")
	f.StringVar(&opts.ProxyBinary, "proxy-binary", "", "tenantproxy executable to measure; empty means this one")
	f.IntVar(&opts.ProxyProcs, "proxy-procs", 0, "GOMAXPROCS of the measured tenantproxy (1: the one core PgBouncer uses); 0 leaves Go's default, every core")
	return cmd
}
