package main

import (
	"fmt"
	"strings"

	"github.com/spf13/cobra"

	"github.com/tenantproxy/tenantproxy/catalog"
)

func newPlanCommand(g *globals) *cobra.Command {
	plan := &cobra.Command{
		Use:   "plan",
		Short: "Set the limits of a plan",
	}
	plan.AddCommand(newPlanSetCommand(g))
	return plan
}

func newPlanSetCommand(g *globals) *cobra.Command {
	var cf catalogFlags
	var limits []string
	cmd := &cobra.Command{
		Use:   "set PLAN --limit name=value ...",
		Short: "Set a plan's limits, which every tenant of the plan without its own gets",
		Long: `Sets limits of a plan (free, trial, standard, pro or enterprise) over
its built-in defaults. Every tenant of the plan that has no value of its own
(tenant update --limit) gets them, on every proxy, within a second. Names:
` + strings.Join(catalog.LimitNames(), ", ") + `;
durations in PostgreSQL's syntax (30s, 5min), 0 for none, and name= (empty)
to go back to the built-in default.`,
		Args: cobra.ExactArgs(1),
		RunE: cf.withCatalog(g, func(cmd *cobra.Command, args []string, c *catalog.Catalog) error {
			if len(limits) == 0 {
				return fmt.Errorf("nothing to set: give --limit name=value")
			}
			parsed, err := parseLimits(limits)
			if err != nil {
				return err
			}
			l, err := c.SetPlanLimits(cmd.Context(), args[0], parsed)
			if err != nil {
				return err
			}
			out := cmd.OutOrStdout()
			return cf.emit(out, l, func() error {
				_, err := fmt.Fprintf(out, "plan %s: %s\n", args[0], describeLimits(l))
				return err
			})
		}),
	}
	cf.register(cmd)
	cf.registerOutput(cmd)
	cmd.Flags().StringArrayVar(&limits, "limit", nil, "a limit as name=value (name= drops the plan's own); repeatable")
	return cmd
}
