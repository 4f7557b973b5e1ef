package main

import (
	"fmt"
	"text/tabwriter"
	"time"

	"github.com/spf13/cobra"

	"github.com/tenantproxy/tenantproxy/canary"
	"github.com/tenantproxy/tenantproxy/catalog"
)

func newCheckCommand(g *globals) *cobra.Command {
	check := &cobra.Command{
		Use:   "check",
		Short: "Verify a running deployment from the outside",
	}
	check.AddCommand(newCheckIsolationCommand(g))
	return check
}

func newCheckIsolationCommand(g *globals) *cobra.Command {
	var cf catalogFlags
	cfg := canary.Config{}
	cmd := &cobra.Command{
		Use:   "isolation",
		Short: "Plant canary rows for a sample of tenants through the proxy and verify no tenant sees another's; exits non-zero on a violation",
		Args:  cobra.NoArgs,
		RunE: cf.withCatalog(g, func(cmd *cobra.Command, _ []string, c *catalog.Catalog) error {
			cfg.Logger = g.logger
			can, err := canary.New(cfg, c)
			if err != nil {
				return err
			}
			rep, checkErr := can.Check(cmd.Context())
			out := cmd.OutOrStdout()
			if err := cf.emit(out, rep, func() error {
				fmt.Fprintf(out, "checked %d tenants through %s\n", len(rep.Tenants), cfg.ProxyAddr)
				if len(rep.Violations) == 0 {
					return nil
				}
				w := tabwriter.NewWriter(out, 0, 4, 2, ' ', 0)
				fmt.Fprintln(w, "TENANT\tOTHER TENANT\tVIOLATION")
				for _, v := range rep.Violations {
					fmt.Fprintf(w, "%s\t%s\t%s\n", v.Tenant, v.Other, v.What)
				}
				return w.Flush()
			}); err != nil {
				return err
			}
			if n := len(rep.Violations); n > 0 {
				return fmt.Errorf("%d isolation violations", n)
			}
			return checkErr
		}),
	}
	cf.register(cmd)
	cf.registerOutput(cmd)
	f := cmd.Flags()
	f.StringVar(&cfg.ProxyAddr, "proxy", "127.0.0.1:6432", "the proxy's client listener, host:port")
	f.IntVar(&cfg.Sample, "sample", canary.DefaultSample, "tenants to probe, chosen at random; -1 for all")
	f.DurationVar(&cfg.Timeout, "timeout", time.Minute, "bound on the whole check")
	return cmd
}
