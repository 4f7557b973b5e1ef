package main

import (
	"context"
	"fmt"
	"strings"
	"text/tabwriter"

	"github.com/spf13/cobra"
	"github.com/spf13/pflag"

	"github.com/tenantproxy/tenantproxy/catalog"
)

func newTenantCommand(g *globals) *cobra.Command {
	tenant := &cobra.Command{
		Use:   "tenant",
		Short: "Provision and manage tenants",
	}
	tenant.AddCommand(
		newTenantCreateCommand(g),
		newTenantListCommand(g),
		newTenantShowCommand(g),
		newTenantUpdateCommand(g),
		newTenantStatusCommand(g, "suspend", "Suspend a tenant: its new connections are refused", (*catalog.Catalog).Suspend),
		newTenantStatusCommand(g, "resume", "Resume a suspended tenant", (*catalog.Catalog).Resume),
		newTenantDeleteCommand(g),
		newTenantImportCommand(g),
		newTenantExportCommand(g),
		newTenantMoveCommand(g),
		newTenantUserCommand(g),
	)
	return tenant
}

func newTenantCreateCommand(g *globals) *cobra.Command {
	var cf catalogFlags
	var req catalog.CreateRequest
	var tier string
	cmd := &cobra.Command{
		Use:   "create SUBDOMAIN",
		Short: "Provision a tenant in the tier its plan implies; prints a generated admin password once",
		Args:  cobra.ExactArgs(1),
		RunE: cf.withCatalog(g, func(cmd *cobra.Command, args []string, c *catalog.Catalog) error {
			req.Subdomain, req.Tier = args[0], catalog.Tier(tier)
			created, err := c.Create(cmd.Context(), req)
			if err != nil {
				return err
			}
			t := created.Tenant
			out := cmd.OutOrStdout()
			return cf.emit(out, created, func() error {
				fmt.Fprintf(out, "tenant %s created: plan %s, tier %s, backend %s, database %s\n", t.ID, t.Plan, t.Tier, t.Backend, t.Database)
				if created.Password != "" {
					fmt.Fprintf(out, "admin user %s, password %s (shown once; only its SCRAM verifier is stored)\n", created.AdminUser, created.Password)
				} else {
					fmt.Fprintf(out, "admin user %s\n", created.AdminUser)
				}
				return nil
			})
		}),
	}
	cf.register(cmd)
	cf.registerOutput(cmd)
	registerCreateFlags(cmd.Flags(), &req, &tier)
	return cmd
}

// registerCreateFlags registers the flags of a tenant's creation into req
// and tier, for tenant create and tenant import.
func registerCreateFlags(f *pflag.FlagSet, req *catalog.CreateRequest, tier *string) {
	f.StringVar(&req.Name, "name", "", "display name; defaults to the subdomain")
	f.StringVar(&req.Plan, "plan", catalog.PlanFree, "free, trial, standard, pro or enterprise")
	f.StringVar(&req.Region, "region", "", "data region; defaults to \"default\"")
	f.StringVar(tier, "isolation", "", "override the plan's tier: shared, schema or database")
	f.StringVar(&req.AdminUser, "admin-user", "", "the tenant's first login; defaults to admin")
	f.StringVar(&req.AdminPassword, "admin-password", "", "its password; generated and printed once when empty")
}

func newTenantListCommand(g *globals) *cobra.Command {
	var cf catalogFlags
	cmd := &cobra.Command{
		Use:   "list",
		Short: "List tenants",
		Args:  cobra.NoArgs,
		RunE: cf.withCatalog(g, func(cmd *cobra.Command, _ []string, c *catalog.Catalog) error {
			ts, err := c.List(cmd.Context())
			if err != nil {
				return err
			}
			out := cmd.OutOrStdout()
			return cf.emit(out, ts, func() error {
				tw := tabwriter.NewWriter(out, 0, 4, 2, ' ', 0)
				fmt.Fprintln(tw, "ID\tNAME\tPLAN\tTIER\tSTATUS\tREGION\tBACKEND\tCREATED")
				for _, t := range ts {
					fmt.Fprintf(tw, "%s\t%s\t%s\t%s\t%s\t%s\t%s\t%s\n", t.ID, t.Name, t.Plan, t.Tier, t.Status, t.Region, t.Backend, t.CreatedAt.Format("2006-01-02 15:04"))
				}
				return tw.Flush()
			})
		}),
	}
	cf.register(cmd)
	cf.registerOutput(cmd)
	return cmd
}

func newTenantShowCommand(g *globals) *cobra.Command {
	var cf catalogFlags
	cmd := &cobra.Command{
		Use:   "show SUBDOMAIN",
		Short: "Show one tenant",
		Args:  cobra.ExactArgs(1),
		RunE: cf.withCatalog(g, func(cmd *cobra.Command, args []string, c *catalog.Catalog) error {
			t, err := c.Show(cmd.Context(), args[0])
			if err != nil {
				return err
			}
			out := cmd.OutOrStdout()
			return cf.emit(out, t, func() error {
				tw := tabwriter.NewWriter(out, 0, 4, 2, ' ', 0)
				row := func(k, v string) { fmt.Fprintf(tw, "%s\t%s\n", k, v) }
				row("id", t.ID)
				row("name", t.Name)
				row("subdomain", t.Subdomain)
				row("plan", t.Plan)
				row("isolation_level", string(t.Tier))
				row("status", string(t.Status))
				row("data_region", t.Region)
				row("backend", t.Backend)
				row("database", t.Database)
				row("schema_name", t.SchemaName)
				row("database_url", t.DatabaseURL)
				row("max_users", fmt.Sprint(t.MaxUsers))
				row("max_storage_gb", fmt.Sprint(t.MaxStorageGB))
				row("features", string(t.Features))
				row("settings", string(t.Settings))
				for _, name := range catalog.LimitNames() {
					row("limit "+name, t.Limits.Value(name)+" ("+t.Limits.Source[name]+")")
				}
				row("storage", describeStorage(t))
				row("created_at", t.CreatedAt.Format("2006-01-02 15:04:05 MST"))
				if t.SubscriptionExpiresAt != nil {
					row("subscription_expires_at", t.SubscriptionExpiresAt.Format("2006-01-02 15:04:05 MST"))
				}
				return tw.Flush()
			})
		}),
	}
	cf.register(cmd)
	cf.registerOutput(cmd)
	return cmd
}

func newTenantUpdateCommand(g *globals) *cobra.Command {
	var cf catalogFlags
	var req catalog.UpdateRequest
	var features, limits []string
	var noMove bool
	cmd := &cobra.Command{
		Use:   "update SUBDOMAIN [--plan PLAN] [--feature name=value ...] [--limit name=value ...]",
		Short: "Change a tenant's plan, feature flags and limits",
		Long: `Changes a tenant's plan (with the max_users and max_storage_gb the plan
implies), merges feature flags into its features, and sets its own limits
over its plan's. A flag's value is true, false, a number, or else a string
("\"true\"" for the string true). A limit is name=value with name one of
` + strings.Join(catalog.LimitNames(), ", ") + `;
durations in PostgreSQL's syntax (30s, 5min), 0 for none, and name= (empty)
to drop the tenant's own value so its plan's applies again.

A plan that implies another tier moves the tenant there, as tenant move
--tier does (its data is copied while it keeps working; README "Moving
tenants"); --no-move changes only the plan.

Every proxy sees the change within a second: SQL reads it as
current_setting('tenant.plan') and current_setting('tenant.features') in
new sessions, and in sessions already open from their next transaction (a
transaction-mode session pinned by session state: once unpinned).`,
		Args: cobra.ExactArgs(1),
		RunE: cf.withCatalog(g, func(cmd *cobra.Command, args []string, c *catalog.Catalog) error {
			if req.Plan == "" && len(features) == 0 && len(limits) == 0 {
				return fmt.Errorf("nothing to update: give --plan, --feature or --limit")
			}
			var err error
			if req.Limits, err = parseLimits(limits); err != nil {
				return err
			}
			req.Features = make(map[string]any, len(features))
			for _, f := range features {
				name, value, err := catalog.ParseFeature(f)
				if err != nil {
					return err
				}
				req.Features[name] = value
			}
			t, err := c.Update(cmd.Context(), args[0], req)
			if err != nil {
				return err
			}
			out := cmd.OutOrStdout()
			err = cf.emit(out, t, func() error {
				_, err := fmt.Fprintf(out, "tenant %s updated: plan %s, features %s, limits %s\n", t.Subdomain, t.Plan, t.Features, describeLimits(t.Limits))
				return err
			})
			if err != nil || req.Plan == "" || noMove {
				return err
			}
			return moveToPlan(cmd, &cf, c, t)
		}),
	}
	cf.register(cmd)
	cf.registerOutput(cmd)
	f := cmd.Flags()
	f.StringVar(&req.Plan, "plan", "", "the new plan: free, trial, standard, pro or enterprise (the tenant moves to its tier unless --no-move)")
	f.BoolVar(&noMove, "no-move", false, "change the plan only: the tenant stays in its tier")
	f.StringArrayVar(&features, "feature", nil, "a feature flag as name=value; repeatable")
	f.StringArrayVar(&limits, "limit", nil, "a limit as name=value (name= drops the tenant's own); repeatable")
	return cmd
}

// parseLimits reads repeated --limit flags.
func parseLimits(flags []string) (map[string]*float64, error) {
	limits := make(map[string]*float64, len(flags))
	for _, l := range flags {
		name, value, err := catalog.ParseLimit(l)
		if err != nil {
			return nil, err
		}
		limits[name] = value
	}
	return limits, nil
}

// describeStorage is the tenant's measured storage against its quota:
// "12.3 MB of 10 MB (over quota: read-only), measured 2026-…".
func describeStorage(t *catalog.Tenant) string {
	if t.StorageBytes == nil || t.StorageMeasuredAt == nil {
		return "not measured yet"
	}
	s := fmt.Sprintf("%.1f MB", float64(*t.StorageBytes)/(1<<20))
	if t.Limits.StorageMB > 0 {
		s += fmt.Sprintf(" of %d MB", t.Limits.StorageMB)
	}
	switch catalog.StorageQuota(t.StorageBytes, t.Limits.StorageMB) {
	case catalog.QuotaOver:
		s += " (over quota: read-only)"
	case catalog.QuotaWarning:
		s += " (over 80% of quota)"
	}
	return s + ", measured " + t.StorageMeasuredAt.Format("2006-01-02 15:04:05 MST")
}

// describeLimits is one line of name=value (source).
func describeLimits(l catalog.Limits) string {
	parts := make([]string, 0, len(l.Source))
	for _, name := range catalog.LimitNames() {
		parts = append(parts, fmt.Sprintf("%s=%s (%s)", name, l.Value(name), l.Source[name]))
	}
	return strings.Join(parts, ", ")
}

// newTenantStatusCommand builds suspend and resume, which differ only in the
// catalog call they make.
func newTenantStatusCommand(g *globals, verb, short string, change func(*catalog.Catalog, context.Context, string) error) *cobra.Command {
	var cf catalogFlags
	cmd := &cobra.Command{
		Use:   verb + " SUBDOMAIN",
		Short: short,
		Args:  cobra.ExactArgs(1),
		RunE: cf.withCatalog(g, func(cmd *cobra.Command, args []string, c *catalog.Catalog) error {
			if err := change(c, cmd.Context(), args[0]); err != nil {
				return err
			}
			fmt.Fprintf(cmd.OutOrStdout(), "tenant %s: %s done\n", args[0], verb)
			return nil
		}),
	}
	cf.register(cmd)
	return cmd
}

func newTenantDeleteCommand(g *globals) *cobra.Command {
	var cf catalogFlags
	var confirm string
	cmd := &cobra.Command{
		Use:   "delete SUBDOMAIN",
		Short: "Delete a tenant and all its data (schema and role, database, or shared rows)",
		Long:  "Deletes a tenant and every row of its data. This cannot be undone: pass --confirm SUBDOMAIN.",
		Args:  cobra.ExactArgs(1),
		RunE: cf.withCatalog(g, func(cmd *cobra.Command, args []string, c *catalog.Catalog) error {
			if !strings.EqualFold(confirm, args[0]) {
				return fmt.Errorf("deleting %s destroys its data: repeat its subdomain with --confirm %s", args[0], args[0])
			}
			if err := c.Delete(cmd.Context(), args[0]); err != nil {
				return err
			}
			fmt.Fprintf(cmd.OutOrStdout(), "tenant %s deleted\n", args[0])
			return nil
		}),
	}
	cf.register(cmd)
	cmd.Flags().StringVar(&confirm, "confirm", "", "the subdomain again, to confirm the deletion")
	return cmd
}
