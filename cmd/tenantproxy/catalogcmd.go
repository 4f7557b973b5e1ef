package main

import (
	"context"
	"fmt"

	"github.com/spf13/cobra"
	"go.uber.org/zap"

	"github.com/tenantproxy/tenantproxy/catalog"
)

func newCatalogCommand(g *globals) *cobra.Command {
	cmd := &cobra.Command{
		Use:   "catalog",
		Short: "Maintain the catalog itself",
	}
	var cf catalogFlags
	rotate := &cobra.Command{
		Use:   "rotate-secrets",
		Short: "Seal every backend's admin DSN and serving password with the current secrets key",
		Long: "Re-encrypts, in one transaction, every backend secret the catalog keeps with the first (current)\n" +
			"key of --secrets-key / --secrets-key-file: plain-text values written before encryption was\n" +
			"configured and values sealed with a previous key alike. Configure the new key first and the old\n" +
			"one after it, rotate, then drop the old key. A value no configured key opens fails the rotation,\n" +
			"naming its backend, and nothing changes.",
		Args: cobra.NoArgs,
		RunE: cf.withCatalog(g, func(cmd *cobra.Command, _ []string, c *catalog.Catalog) error {
			names, err := c.RotateSecrets(cmd.Context())
			if err != nil {
				return err
			}
			keys, _ := cf.keyring() // withCatalog built it once already
			fmt.Fprintf(cmd.OutOrStdout(), "resealed the secrets of %d backends with key %s\n", len(names), keys.Current())
			return nil
		}),
	}
	cf.register(rotate)
	cmd.AddCommand(rotate)
	return cmd
}

// checkCatalogSecrets runs once when serve starts: it refuses a catalog
// whose secrets the configured keys cannot open (the error names the
// backend), and warns when secrets are stored in plain text.
func checkCatalogSecrets(ctx context.Context, g *globals, cf *catalogFlags, cat *catalog.Catalog) error {
	if _, err := cat.ListBackends(ctx); err != nil {
		return err
	}
	keys, err := cf.keyring()
	if err != nil {
		return err
	}
	if keys == nil {
		g.logger.Warn("catalog secrets are stored unencrypted; set --secrets-key-file")
		return nil
	}
	unsealed, err := cat.UnsealedBackends(ctx)
	if err != nil {
		return err
	}
	if len(unsealed) > 0 {
		g.logger.Warn("some backends' secrets are still plain text in the catalog; run tenantproxy catalog rotate-secrets",
			zap.Strings("backends", unsealed))
	}
	return nil
}
