package main

import (
	"context"
	"errors"
	"net"
	"time"

	"github.com/jackc/pgx/v5/pgconn"
	"github.com/prometheus/client_golang/prometheus"
	"go.uber.org/zap"

	"github.com/tenantproxy/tenantproxy/catalog"
)

// openCatalogRetrying opens the catalog for serve, retrying with back-off
// while it cannot be reached (or is not migrated yet), so that a proxy
// started before its control database waits for it instead of exiting
// into a restart loop. A configuration error (no or a malformed DSN, a
// key that cannot open the catalog's secrets) ends it at once; so does
// ctx.
func openCatalogRetrying(ctx context.Context, g *globals, cf *catalogFlags, reg prometheus.Registerer) (*catalog.Catalog, error) {
	const maxBackoff = 10 * time.Second
	backoff := 250 * time.Millisecond
	for {
		cat, err := cf.open(ctx, g, reg)
		if err == nil {
			if err = checkCatalogSecrets(ctx, g, cf, cat); err == nil {
				return cat, nil
			}
			cat.Close()
		}
		if !catalogUnreachable(err) {
			return nil, err
		}
		g.logger.Warn("tenant catalog unreachable; retrying", zap.Error(err), zap.Duration("retry_in", backoff))
		select {
		case <-ctx.Done():
			return nil, ctx.Err()
		case <-time.After(backoff):
		}
		backoff = min(2*backoff, maxBackoff)
	}
}

// catalogUnreachable reports whether err is one a later attempt may not
// meet: the server could not be reached or is starting or stopping, or
// its catalog tables do not exist yet (migrate up still to run).
func catalogUnreachable(err error) bool {
	var ce *pgconn.ConnectError
	var ne net.Error
	if errors.As(err, &ce) || errors.As(err, &ne) {
		return true
	}
	var pe *pgconn.PgError
	if errors.As(err, &pe) {
		switch pe.Code {
		case "57P01", "57P02", "57P03", "42P01", "3D000":
			return true
		}
		return pe.Code[:2] == "08"
	}
	return false
}
