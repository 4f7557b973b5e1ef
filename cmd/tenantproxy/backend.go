package main

import (
	"fmt"
	"text/tabwriter"

	"github.com/spf13/cobra"

	"github.com/tenantproxy/tenantproxy/catalog"
)

func newBackendCommand(g *globals) *cobra.Command {
	backend := &cobra.Command{
		Use:   "backend",
		Short: "Register and list the PostgreSQL servers that hold tenant data",
	}

	var addFlags catalogFlags
	var req catalog.AddBackendRequest
	add := &cobra.Command{
		Use:   "add NAME",
		Short: "Prepare a PostgreSQL server (serving role, shared and schema databases) and register it",
		Args:  cobra.ExactArgs(1),
		RunE: addFlags.withCatalog(g, func(cmd *cobra.Command, args []string, c *catalog.Catalog) error {
			req.Name = args[0]
			b, err := c.AddBackend(cmd.Context(), req)
			if err != nil {
				return err
			}
			fmt.Fprintf(cmd.OutOrStdout(), "backend %s registered in region %s (capacity %d)\n", b.Name, b.Region, b.Capacity)
			return nil
		}),
	}
	addFlags.register(add)
	add.Flags().StringVar(&req.DSN, "dsn", "", "DSN of the server's admin role (used for provisioning and migrations only)")
	add.Flags().StringVar(&req.Region, "region", "default", "data region the server serves")
	add.Flags().IntVar(&req.Capacity, "capacity", 0, "most database-tier tenants placed here; 0 means the default")

	var listFlags catalogFlags
	list := &cobra.Command{
		Use:   "list",
		Short: "List registered backends (secrets are never shown)",
		Args:  cobra.NoArgs,
		RunE: listFlags.withCatalog(g, func(cmd *cobra.Command, _ []string, c *catalog.Catalog) error {
			bs, err := c.ListBackends(cmd.Context())
			if err != nil {
				return err
			}
			out := cmd.OutOrStdout()
			return listFlags.emit(out, bs, func() error {
				tw := tabwriter.NewWriter(out, 0, 4, 2, ' ', 0)
				fmt.Fprintln(tw, "NAME\tREGION\tCAPACITY\tSERVING USER\tSHARED DB\tSCHEMA DB")
				for _, b := range bs {
					fmt.Fprintf(tw, "%s\t%s\t%d\t%s\t%s\t%s\n", b.Name, b.Region, b.Capacity, b.ServingUser, b.SharedDatabase, b.SchemaDatabase)
				}
				return tw.Flush()
			})
		}),
	}
	listFlags.register(list)
	listFlags.registerOutput(list)

	backend.AddCommand(add, list)
	return backend
}
