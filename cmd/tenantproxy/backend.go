package main

import (
	"fmt"

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
		Short: "List registered backends with their tenants per tier and free capacity, per server and region (secrets are never shown)",
		Args:  cobra.NoArgs,
		RunE: listFlags.withCatalog(g, func(cmd *cobra.Command, _ []string, c *catalog.Catalog) error {
			bs, err := c.BackendLoads(cmd.Context())
			if err != nil {
				return err
			}
			out := cmd.OutOrStdout()
			return listFlags.emit(out, bs, func() error { return writeBackendLoads(out, bs) })
		}),
	}
	listFlags.register(list)
	listFlags.registerOutput(list)

	backend.AddCommand(add, list, newBackendDrainCommand(g))
	return backend
}
