package main

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	"github.com/spf13/cobra"

	"github.com/tenantproxy/tenantproxy/catalog"
	"github.com/tenantproxy/tenantproxy/catalog/secrets"
)

// catalogFlags are the settings of every command that opens the catalog.
type catalogFlags struct {
	dsn      string
	cacheTTL time.Duration
	output   string
	// keys and keyFiles hold the keys that seal the backends' admin DSNs
	// and serving passwords in the catalog (package catalog/secrets): keys
	// first, then the files' lines, in order; the first is current, the
	// others only open values sealed before a rotation. None means the
	// secrets stay plain text. Read at start-up; a reload does not change
	// them.
	keys     []string
	keyFiles []string
}

func (f *catalogFlags) register(cmd *cobra.Command) {
	cmd.Flags().StringVar(&f.dsn, "catalog-dsn", "", "DSN of the control database (an admin role); required")
	cmd.Flags().DurationVar(&f.cacheTTL, "catalog-cache-ttl", time.Minute, "how long a cached tenant look-up is trusted without a change notification")
	cmd.Flags().StringSliceVar(&f.keyFiles, "secrets-key-file", nil,
		"file of keys sealing the catalog's backend secrets: lines [id=]<base64 32 bytes>, the first current, others previous (repeatable)")
	cmd.Flags().StringSliceVar(&f.keys, "secrets-key", nil,
		"[id=]<base64 32 bytes> key sealing the catalog's backend secrets; prefer TENANTPROXY_SECRETS_KEY or --secrets-key-file, a command line is visible to other local users")
}

// keyring builds the secrets keyring from --secrets-key and
// --secrets-key-file; nil when neither is set (secrets stay plain text).
func (f *catalogFlags) keyring() (*secrets.Keyring, error) {
	var k *secrets.Keyring
	var err error
	for i, key := range f.keys {
		if k, err = k.Parse(fmt.Sprintf("--secrets-key #%d", i+1), key); err != nil {
			return nil, err
		}
	}
	for _, path := range f.keyFiles {
		if k, err = k.ParseFile(path); err != nil {
			return nil, err
		}
	}
	return k, nil
}

func (f *catalogFlags) registerOutput(cmd *cobra.Command) {
	cmd.Flags().StringVarP(&f.output, "output", "o", "table", "table for people, json for scripts")
}

// open opens the catalog; reg, when not nil, receives its cache metrics.
func (f *catalogFlags) open(ctx context.Context, g *globals, reg prometheus.Registerer) (*catalog.Catalog, error) {
	if f.dsn == "" {
		return nil, errors.New("--catalog-dsn (or TENANTPROXY_CATALOG_DSN) is required")
	}
	keys, err := f.keyring()
	if err != nil {
		return nil, err
	}
	return catalog.Open(ctx, f.dsn, catalog.Options{CacheTTL: f.cacheTTL, Logger: g.logger, Secrets: keys, Registerer: reg})
}

// withCatalog makes a RunE that calls fn with an open catalog and closes it
// afterwards.
func (f *catalogFlags) withCatalog(g *globals, fn func(*cobra.Command, []string, *catalog.Catalog) error) func(*cobra.Command, []string) error {
	return func(cmd *cobra.Command, args []string) error {
		c, err := f.open(cmd.Context(), g, nil)
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
