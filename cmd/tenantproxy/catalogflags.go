package main

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"time"

	"github.com/spf13/cobra"

	"github.com/tenantproxy/tenantproxy/catalog"
)

// catalogFlags are the settings of every command that opens the catalog.
type catalogFlags struct {
	dsn      string
	cacheTTL time.Duration
	output   string
}

func (f *catalogFlags) register(cmd *cobra.Command) {
	cmd.Flags().StringVar(&f.dsn, "catalog-dsn", "", "DSN of the control database (an admin role); required")
	cmd.Flags().DurationVar(&f.cacheTTL, "catalog-cache-ttl", time.Minute, "how long a cached tenant look-up is trusted without a change notification")
}

func (f *catalogFlags) registerOutput(cmd *cobra.Command) {
	cmd.Flags().StringVarP(&f.output, "output", "o", "table", "table for people, json for scripts")
}

func (f *catalogFlags) open(ctx context.Context, g *globals) (*catalog.Catalog, error) {
	if f.dsn == "" {
		return nil, errors.New("--catalog-dsn (or TENANTPROXY_CATALOG_DSN) is required")
	}
	return catalog.Open(ctx, f.dsn, catalog.Options{CacheTTL: f.cacheTTL, Logger: g.logger})
}

// withCatalog makes a RunE that calls fn with an open catalog and closes it
// afterwards.
func (f *catalogFlags) withCatalog(g *globals, fn func(*cobra.Command, []string, *catalog.Catalog) error) func(*cobra.Command, []string) error {
	return func(cmd *cobra.Command, args []string) error {
		c, err := f.open(cmd.Context(), g)
		if err != nil {
			return err
		}
		defer c.Close()
		return fn(cmd, args, c)
	}
}

// emit writes v as indented JSON when --output json, else calls table.
func (f *catalogFlags) emit(w io.Writer, v any, table func() error) error {
	switch f.output {
	case "json":
		enc := json.NewEncoder(w)
		enc.SetIndent("", "  ")
		return enc.Encode(v)
	case "table", "":
		return table()
	default:
		return fmt.Errorf("--output %q: want table or json", f.output)
	}
}
