package main

import (
	"fmt"
	"io"
	"text/tabwriter"
	"time"

	"github.com/spf13/cobra"

	"github.com/tenantproxy/tenantproxy/migrations"
)

// migrateFlags are the settings of migrate up and status.
type migrateFlags struct {
	cf catalogFlags
	// concurrency is how many targets are migrated at once; default
	// migrations.DefaultConcurrency.
	concurrency int
	// lockTimeout bounds a migration's wait for one table lock; default
	// migrations.DefaultLockTimeout, 0 means no bound (up only).
	lockTimeout time.Duration
	// lockRetries is how often a migration whose lock wait timed out is
	// retried; default migrations.DefaultLockRetries, 0 means none (up only).
	lockRetries int
	// dir is the adopter's migrations directory to store before migrating
	// (up and down); empty means the catalog's stored set as it is.
	dir string
	// to is the app version down reverts to.
	to int
}

// options turns the flags into migrations.Options, progress and retries
// going to w.
func (f *migrateFlags) options(g *globals, w io.Writer) migrations.Options {
	return migrations.Options{
		Concurrency: f.concurrency,
		Progress:    migrations.TextProgress(w),
		Retry:       migrations.TextRetry(w),
		Logger:      g.logger,
		LockTimeout: lockOption(f.lockTimeout),
		LockRetries: lockOption(f.lockRetries),
	}
}

func newMigrateCommand(g *globals) *cobra.Command {
	cmd, _ := buildMigrateCommand(g)
	return cmd
}

// buildMigrateCommand returns the command and the flags it fills, so that a
// test can check their wiring.
func buildMigrateCommand(g *globals) (*cobra.Command, *migrateFlags) {
	f := &migrateFlags{}
	cf := &f.cf
	migrate := &cobra.Command{
		Use:   "migrate",
		Short: "Apply or show migrations of the catalog and of every tenant target",
	}
	options := func(cmd *cobra.Command) (migrations.Options, error) {
		if cf.dsn == "" {
			return migrations.Options{}, fmt.Errorf("--catalog-dsn (or TENANTPROXY_CATALOG_DSN) is required")
		}
		keys, err := cf.keyring()
		o := f.options(g, cmd.ErrOrStderr())
		o.Secrets = keys
		if err == nil && f.dir != "" {
			o.App, err = migrations.ReadAppDir(f.dir)
		}
		return o, err
	}
	up := &cobra.Command{
		Use:   "up",
		Short: "Migrate the catalog, then the shared database, every tenant schema and every tenant database",
		Long: "Applies the control migrations; on an empty catalog registers the catalog's own server as\n" +
			"backend \"main\" (region \"default\") and creates the serving role there; then migrates every\n" +
			"tenant target with bounded concurrency. A failed target is reported and the others go on.\n\n" +
			"Each migration waits at most --lock-timeout for a table lock, so that a session holding one\n" +
			"(a tenant idle in an open transaction) cannot make every other tenant's queries queue behind\n" +
			"the migration; a migration that timed out is rolled back and retried up to --lock-retries\n" +
			"times, after pauses at least as long as the timeout, then its target fails and the next\n" +
			"migrate up completes it.\n\n" +
			"Every tenant target also gets the app migrations stored in the catalog, in its tier's form.\n" +
			"--dir DIR first stores DIR's NNNN_name.up.sql (or NNNN_name.sql) and NNNN_name.down.sql files\n" +
			"there; a stored version whose up SQL differs from DIR's is refused.",
		Args: cobra.NoArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			opts, err := options(cmd)
			if err != nil {
				return err
			}
			report, err := migrations.Up(cmd.Context(), cf.dsn, opts)
			if report != nil {
				stored := ""
				if f.dir != "" {
					stored = fmt.Sprintf(" (%d new app migrations stored)", report.AppStored)
				}
				fmt.Fprintf(cmd.OutOrStdout(), "migrated %d targets in %s, %d failed%s\n",
					len(report.Results), report.Duration.Round(1e6), report.Failed, stored)
			}
			return err
		},
	}
	down := &cobra.Command{
		Use:   "down --to N",
		Short: "Revert the app migrations above version N on every tenant target",
		Long: "Runs the stored down SQL of every app version above --to on every tenant target that has it,\n" +
			"highest first, in the target's tier's form, each in its own transaction. The versions leave the\n" +
			"catalog only once every target is down; after a failure, run it again. --dir DIR first stores\n" +
			"DIR's down files of the stored versions (a fixed down file replaces the stored one).",
		Args: cobra.NoArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			if f.to < 0 {
				return fmt.Errorf("--to N is required (0 reverts every app version)")
			}
			opts, err := options(cmd)
			if err != nil {
				return err
			}
			report, err := migrations.Down(cmd.Context(), cf.dsn, f.to, opts)
			if report != nil {
				fmt.Fprintf(cmd.OutOrStdout(), "down to app version %d on %d targets in %s: %d failed, %d versions removed from the catalog\n",
					f.to, len(report.Results), report.Duration.Round(1e6), report.Failed, report.AppRemoved)
			}
			return err
		},
	}
	status := &cobra.Command{
		Use:   "status",
		Short: "Show every target's migration version",
		Args:  cobra.NoArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
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
				fmt.Fprintln(tw, "TARGET\tVERSION\tLATEST\tSTATE\tAPP\tAPP LATEST\tAPP STATE")
				for _, r := range report.Results {
					state := "up to date"
					switch {
					case r.Err != nil:
						state = "error: " + r.Err.Error()
					case r.Version < r.Latest:
						state = "pending"
					}
					app := "-\t-\t-"
					if r.App != nil {
						app = fmt.Sprintf("%d\t%d\t%s", r.App.Version, r.App.Latest, r.App.State())
					}
					fmt.Fprintf(tw, "%s\t%d\t%d\t%s\t%s\n", r.Target, r.Version, r.Latest, state, app)
				}
				return tw.Flush()
			})
			if emitErr != nil {
				return emitErr
			}
			return err
		},
	}
	for _, c := range []*cobra.Command{up, down, status} {
		cf.register(c)
		c.Flags().IntVar(&f.concurrency, "concurrency", migrations.DefaultConcurrency, "targets migrated at once")
	}
	for _, c := range []*cobra.Command{up, down} {
		c.Flags().DurationVar(&f.lockTimeout, "lock-timeout", migrations.DefaultLockTimeout,
			"longest wait of a migration for one table lock before it is rolled back and retried (0: wait as long as it takes)")
		c.Flags().IntVar(&f.lockRetries, "lock-retries", migrations.DefaultLockRetries,
			"retries of a migration whose lock wait timed out before its target fails (0: fail at the first timeout)")
		c.Flags().StringVar(&f.dir, "dir", "", "the app's migrations directory (NNNN_name.up.sql, NNNN_name.down.sql), stored in the catalog first (down: only the down files of stored versions)")
	}
	down.Flags().IntVar(&f.to, "to", -1, "the app version to revert to (required; 0 reverts them all)")
	cf.registerOutput(status)
	migrate.AddCommand(up, down, status)
	return migrate, f
}

// lockOption maps a lock flag to its migrations.Options field: 0 on the
// command line means none (no lock_timeout, no retries), as lock_timeout = 0
// does in PostgreSQL, where the field's zero means its default.
func lockOption[T time.Duration | int](v T) T {
	if v == 0 {
		return -1
	}
	return v
}
