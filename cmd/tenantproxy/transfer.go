package main

import (
	"bufio"
	"fmt"
	"os"
	"text/tabwriter"

	"github.com/spf13/cobra"

	"github.com/tenantproxy/tenantproxy/catalog"
)

func newTenantImportCommand(g *globals) *cobra.Command {
	var cf catalogFlags
	var req catalog.ImportRequest
	var tier, fromExport string
	cmd := &cobra.Command{
		Use:   "import SUBDOMAIN (--from DSN | --from-export FILE) --plan PLAN",
		Short: "Create a tenant filled from a single-tenant database or an export, checked table by table",
		Long: `Creates the tenant as tenant create does, then copies every table of the
source into the tenant's table of the same name, in one transaction, and
checks each table's row count and checksum against the source's. The
tenant's tables are those the app's migrations made (migrate up --dir):
each source table must be among them, with its columns under the same
names and types. Id sequences continue past the highest id copied. On any
failure the tenant is deleted, so the same command can run again.`,
		Args: cobra.ExactArgs(1),
		RunE: cf.withCatalog(g, func(cmd *cobra.Command, args []string, c *catalog.Catalog) error {
			req.Subdomain, req.Tier, req.Progress = args[0], catalog.Tier(tier), cmd.ErrOrStderr()
			if fromExport != "" {
				f, err := os.Open(fromExport)
				if err != nil {
					return err
				}
				defer f.Close()
				req.FromExport = bufio.NewReader(f)
			}
			imported, err := c.Import(cmd.Context(), req)
			if err != nil {
				return err
			}
			out := cmd.OutOrStdout()
			return cf.emit(out, imported, func() error {
				var rows int64
				for _, tb := range imported.Tables {
					rows += tb.Rows
				}
				t := imported.Tenant
				fmt.Fprintf(out, "tenant %s imported: tier %s, %d tables, %d rows, counts and checksums equal to the source\n",
					t.ID, t.Tier, len(imported.Tables), rows)
				if imported.Password != "" {
					fmt.Fprintf(out, "admin user %s, password %s (shown once; only its SCRAM verifier is stored)\n", imported.AdminUser, imported.Password)
				}
				return nil
			})
		}),
	}
	cf.register(cmd)
	cf.registerOutput(cmd)
	f := cmd.Flags()
	f.StringVar(&req.FromDSN, "from", "", "DSN of the single-tenant database to import (its public tables)")
	f.StringVar(&fromExport, "from-export", "", "an export file written by tenant export")
	cmd.MarkFlagsMutuallyExclusive("from", "from-export")
	cmd.MarkFlagsOneRequired("from", "from-export")
	registerCreateFlags(f, &req.CreateRequest, &tier)
	return cmd
}

func newTenantExportCommand(g *globals) *cobra.Command {
	var cf catalogFlags
	var out string
	cmd := &cobra.Command{
		Use:   "export SUBDOMAIN --out FILE",
		Short: "Write all of a tenant's data to a tar of one CSV per table and a manifest (README: Import, export and delete)",
		Args:  cobra.ExactArgs(1),
		RunE: cf.withCatalog(g, func(cmd *cobra.Command, args []string, c *catalog.Catalog) (err error) {
			f, err := os.OpenFile(out, os.O_WRONLY|os.O_CREATE|os.O_EXCL, 0o600)
			if err != nil {
				return err
			}
			defer func() {
				if cerr := f.Close(); err == nil {
					err = cerr
				}
				if err != nil {
					os.Remove(out)
				}
			}()
			w := bufio.NewWriter(f)
			m, err := c.Export(cmd.Context(), args[0], w)
			if err != nil {
				return err
			}
			if err := w.Flush(); err != nil {
				return err
			}
			var rows int64
			for _, tb := range m.Tables {
				fmt.Fprintf(cmd.ErrOrStderr(), "table %s: %d rows, md5 %s\n", tb.Name, tb.Rows, tb.MD5)
				rows += tb.Rows
			}
			fmt.Fprintf(cmd.OutOrStdout(), "tenant %s exported to %s: %d tables, %d rows\n", m.Tenant, out, len(m.Tables), rows)
			return nil
		}),
	}
	cf.register(cmd)
	cmd.Flags().StringVar(&out, "out", "", "the file to write; must not exist")
	cmd.MarkFlagRequired("out")
	return cmd
}

func newAuditCommand(g *globals) *cobra.Command {
	var cf catalogFlags
	var tenant string
	cmd := &cobra.Command{
		Use:   "audit [--tenant SUBDOMAIN]",
		Short: "Show the audit log: what was done to tenants (deletions) and when",
		Args:  cobra.NoArgs,
		RunE: cf.withCatalog(g, func(cmd *cobra.Command, _ []string, c *catalog.Catalog) error {
			es, err := c.Audit(cmd.Context(), tenant)
			if err != nil {
				return err
			}
			out := cmd.OutOrStdout()
			return cf.emit(out, es, func() error {
				tw := tabwriter.NewWriter(out, 0, 4, 2, ' ', 0)
				fmt.Fprintln(tw, "AT\tACTION\tTENANT\tDETAIL")
				for _, e := range es {
					fmt.Fprintf(tw, "%s\t%s\t%s\t%s\n", e.At.UTC().Format("2006-01-02 15:04:05Z"), e.Action, e.Tenant, e.Detail)
				}
				return tw.Flush()
			})
		}),
	}
	cf.register(cmd)
	cf.registerOutput(cmd)
	cmd.Flags().StringVar(&tenant, "tenant", "", "only this tenant's entries")
	return cmd
}
