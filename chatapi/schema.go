package chatapi

import (
	"context"
	"embed"
	"io/fs"

	"github.com/tenantproxy/tenantproxy/migrations"
)

// schemaFiles is migrations/, the chat's schema as an app's migrations
// directory, embedded so that a binary without the source tree (the demo,
// the tests' harness) applies exactly what `tenantproxy migrate up --dir
// chatapi/migrations` would.
//
//go:embed migrations/*.sql
var schemaFiles embed.FS

// SchemaDir is where the chat's migrations live in the source tree, the
// directory an operator passes to `tenantproxy migrate up --dir`.
const SchemaDir = "chatapi/migrations"

// Schema returns the chat's migrations, read as any app's directory is
// (migrations.ReadAppFS).
func Schema() ([]migrations.AppMigration, error) {
	dir, err := fs.Sub(schemaFiles, "migrations")
	if err != nil {
		return nil, err
	}
	return migrations.ReadAppFS(dir, SchemaDir)
}

// MigrateUp is `tenantproxy migrate up --dir chatapi/migrations` from the
// embedded directory: it stores the chat's migrations in the catalog at
// controlDSN as its app and brings every target up to date (migrations.Up
// with opts.App set), so that tenants created afterwards get the chat's
// tables.
func MigrateUp(ctx context.Context, controlDSN string, opts migrations.Options) (*migrations.Report, error) {
	app, err := Schema()
	if err != nil {
		return nil, err
	}
	opts.App = app
	return migrations.Up(ctx, controlDSN, opts)
}
