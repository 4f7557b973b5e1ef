package main

import (
	"fmt"
	"text/tabwriter"

	"github.com/spf13/cobra"

	"github.com/tenantproxy/tenantproxy/migrations"
)

func newMigrateCommand(g *globals) *cobra.Command {
	var cf catalogFlags
	var concurrency int
	migrate := &cobra.Command{
		Use:   "migrate",
		Short: "Apply or show migrations of the catalog and of every tenant target",
	}
	options := func(cmd *cobra.Command) (migrations.Options, error) {
		keys, err := cf.keyring()
		return migrations.Options{
			Concurrency: concurrency,
			Progress:    migrations.TextProgress(cmd.ErrOrStderr()),
			Logger:      g.logger,
			Secrets:     keys,
		}, err
	}
	up := &cobra.Command{
		Use:   "up",
		Short: "Migrate the catalog, then the shared database, every tenant schema and every tenant database",
		Long: "Applies the control migrations; on an empty catalog registers the catalog's own server as\n" +
			"backend \"main\" (region \"default\") and creates the serving role there; then migrates every\n" +
			"tenant target with bounded concurrency. A failed target is reported and the others go on.",
		Args: cobra.NoArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			if cf.dsn == "" {
				return fmt.Errorf("--catalog-dsn (or TENANTPROXY_CATALOG_DSN) is required")
			}
			opts, err := options(cmd)
			if err != nil {
				return err
			}
			report, err := migrations.Up(cmd.Context(), cf.dsn, opts)
			if report != nil {
				fmt.Fprintf(cmd.OutOrStdout(), "migrated %d targets in %s, %d failed\n",
					len(report.Results), report.Duration.Round(1e6), report.Failed)
			}
			return err
		},
	}
	status := &cobra.Command{
		Use:   "status",
		Short: "Show every target's migration version",
		Args:  cobra.NoArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			if cf.dsn == "" {
				return fmt.Errorf("--catalog-dsn (or TENANTPROXY_CATALOG_DSN) is required")
			}
			opts, err := options(cmd)
			if err != nil {
				return err
			}
			opts.Progress = nil
			report, err := migrations.Status(cmd.Context(), cf.dsn, opts)
			if report == nil {
				return err
			}
			emitErr := cf.emit(cmd.OutOrStdout(), report, func() error {
				tw := tabwriter.NewWriter(cmd.OutOrStdout(), 0, 4, 2, ' ', 0)
				fmt.Fprintln(tw, "TARGET\tVERSION\tLATEST\tSTATE")
				for _, r := range report.Results {
					state := "up to date"
					switch {
					case r.Err != nil:
						state = "error: " + r.Err.Error()
					case r.Version < r.Latest:
						state = "pending"
					}
					fmt.Fprintf(tw, "%s\t%d\t%d\t%s\n", r.Target, r.Version, r.Latest, state)
				}
				return tw.Flush()
			})
			if emitErr != nil {
				return emitErr
			}
			return err
		},
	}
	for _, c := range []*cobra.Command{up, status} {
		cf.register(c)
		c.Flags().IntVar(&concurrency, "concurrency", migrations.DefaultConcurrency, "targets migrated at once")
	}
	cf.registerOutput(status)
	migrate.AddCommand(up, status)
	return migrate
}
