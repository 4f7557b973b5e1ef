package main

import (
	"fmt"
	"io"
	"text/tabwriter"
	"time"

	"github.com/spf13/cobra"

	"github.com/tenantproxy/tenantproxy/catalog"
)

func newTenantMoveCommand(g *globals) *cobra.Command {
	var cf catalogFlags
	var req catalog.MoveRequest
	var tier string
	cmd := &cobra.Command{
		Use:   "move SUBDOMAIN [--tier shared|schema|database] [--backend NAME] [--region R] [--keep-source DURATION]",
		Short: "Move a tenant to another tier, server or region while it keeps working (README: Moving tenants)",
		Long: `Copies the tenant's data to its new place while its clients keep working,
then holds its new transactions on every proxy for a moment, catches up
the last changes, checks every table's row count and checksum, switches
the catalog and releases them; the hold time is printed. Clients keep
their DSN; transaction-mode clients see no error, session-mode clients
(and pinned transaction-mode ones) are ended with 57P01 at their next
idle moment and reconnect to the new place.

Without --backend the tenant stays on its server when only the tier
changes, else goes to the least loaded server of the region. The source is
dropped after the switch, or kept for --keep-source and dropped by the same
command run after that (or with --keep-source 0). A move interrupted at
any step is finished (after the switch) or rolled back and done afresh
(before it) by running the same command again.`,
		Args: cobra.ExactArgs(1),
		RunE: cf.withCatalog(g, func(cmd *cobra.Command, args []string, c *catalog.Catalog) error {
			req.Subdomain, req.Tier, req.Progress = args[0], catalog.Tier(tier), cmd.ErrOrStderr()
			m, err := c.Move(cmd.Context(), req)
			if err != nil {
				return err
			}
			return reportMove(cmd.OutOrStdout(), &cf, m)
		}),
	}
	cf.register(cmd)
	cf.registerOutput(cmd)
	f := cmd.Flags()
	f.StringVar(&tier, "tier", "", "the tier to move to: shared, schema or database (default: the tenant's)")
	f.StringVar(&req.Backend, "backend", "", "the server to move to (default: see above)")
	f.StringVar(&req.Region, "region", "", "the region to move to (default: the tenant's)")
	f.DurationVar(&req.KeepSource, "keep-source", 0, "keep the source's data this long after the switch")
	f.StringVar(&req.StopAfter, "stop-after", "", "stop after this step as if the process died there (chaos testing)")
	f.MarkHidden("stop-after")
	return cmd
}

// reportMove prints m, or writes it as JSON.
func reportMove(out io.Writer, cf *catalogFlags, m *catalog.Moved) error {
	return cf.emit(out, m, func() error {
		if m.Resumed != "" {
			fmt.Fprintf(out, "an interrupted move was found at step %s\n", m.Resumed)
		}
		var rows int64
		for _, tb := range m.Tables {
			rows += tb.Rows
		}
		fmt.Fprintf(out, "tenant %s moved: %s -> %s; %d tables, counts and checksums equal; %d catch-up rounds; transactions held %s\n",
			m.Tenant, m.From, m.To, len(m.Tables), m.Rounds, m.Hold.Round(time.Millisecond))
		if m.KeepUntil != nil {
			fmt.Fprintf(out, "the source is kept until %s\n", m.KeepUntil.UTC().Format(time.RFC3339))
		}
		return nil
	})
}

// moveToPlan moves t to the tier plan implies, if it is not there.
func moveToPlan(cmd *cobra.Command, cf *catalogFlags, c *catalog.Catalog, t *catalog.Tenant) error {
	tier, ok := catalog.PlanTier(t.Plan)
	if !ok || tier == t.Tier {
		return nil
	}
	m, err := c.Move(cmd.Context(), catalog.MoveRequest{Subdomain: t.Subdomain, Tier: tier, Progress: cmd.ErrOrStderr()})
	if err != nil {
		return fmt.Errorf("plan %s set, but moving to the %s tier failed (run tenant move %s --tier %s): %w", t.Plan, tier, t.Subdomain, tier, err)
	}
	return reportMove(cmd.OutOrStdout(), cf, m)
}

func newBackendDrainCommand(g *globals) *cobra.Command {
	var cf catalogFlags
	cmd := &cobra.Command{
		Use:   "drain NAME",
		Short: "Move every tenant off a server to the other servers of its region, one by one (README: Moving tenants)",
		Args:  cobra.ExactArgs(1),
		RunE: cf.withCatalog(g, func(cmd *cobra.Command, args []string, c *catalog.Catalog) error {
			moved, err := c.Drain(cmd.Context(), args[0], cmd.ErrOrStderr())
			if err != nil {
				return err
			}
			out := cmd.OutOrStdout()
			return cf.emit(out, moved, func() error {
				_, err := fmt.Fprintf(out, "backend %s drained: %d tenants moved\n", args[0], len(moved))
				return err
			})
		}),
	}
	cf.register(cmd)
	cf.registerOutput(cmd)
	return cmd
}

// writeBackendLoads is backend list's table: a row per server, then a
// row per region with its servers' sums.
func writeBackendLoads(out io.Writer, bs []catalog.BackendLoad) error {
	tw := tabwriter.NewWriter(out, 0, 4, 2, ' ', 0)
	fmt.Fprintln(tw, "NAME\tREGION\tTENANTS\tSHARED\tSCHEMA\tDATABASE\tCAPACITY\tFREE\tSERVING USER")
	type sums struct{ tenants, free int }
	regions := map[string]*sums{}
	var order []string
	for _, b := range bs {
		t := b.Tenants
		n := t[catalog.TierShared] + t[catalog.TierSchema] + t[catalog.TierDatabase]
		fmt.Fprintf(tw, "%s\t%s\t%d\t%d\t%d\t%d\t%d\t%d\t%s\n", b.Name, b.Region, n,
			t[catalog.TierShared], t[catalog.TierSchema], t[catalog.TierDatabase], b.Capacity, b.Free, b.ServingUser)
		r := regions[b.Region]
		if r == nil {
			r = &sums{}
			regions[b.Region] = r
			order = append(order, b.Region)
		}
		r.tenants, r.free = r.tenants+n, r.free+b.Free
	}
	for _, name := range order {
		fmt.Fprintf(tw, "(region)\t%s\t%d\t\t\t\t\t%d\t\n", name, regions[name].tenants, regions[name].free)
	}
	return tw.Flush()
}
