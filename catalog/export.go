package catalog

import (
	"archive/tar"
	"context"
	"encoding/json"
	"fmt"
	"io"
	"os"
	"time"

	"github.com/jackc/pgx/v5"
)

// ExportFormat names the layout Export writes (README "Import, export and
// delete"): a tar of manifest.json first, then one CSV per table.
const ExportFormat = "tenantproxy-export/1"

// manifestName is the export's first entry.
const manifestName = "manifest.json"

// Manifest describes an export: whose data, when, and per table its
// columns, row count and checksum, in an order in which the tables can be
// loaded (referenced tables first).
type Manifest struct {
	Format     string    `json:"format"`
	Tenant     string    `json:"tenant"`
	Tier       Tier      `json:"isolation_level"`
	Plan       string    `json:"plan"`
	ExportedAt time.Time `json:"exported_at"`
	Tables     []Table   `json:"tables"`
}

// tableFile is where a table's rows are in the tar.
func tableFile(name string) string { return "tables/" + name + ".csv" }

// Export writes every table of tenant subdomain's data to w (ExportFormat):
// whatever the migrations created, chat's tables and the app's alike; in
// the shared tier only the tenant's rows, without the tenant_id column.
// One repeatable-read snapshot covers all tables, so rows and checksums
// agree across foreign keys even while the tenant writes.
func (c *Catalog) Export(ctx context.Context, subdomain string, w io.Writer) (*Manifest, error) {
	t, err := c.tenant(ctx, c.db, subdomain)
	if err != nil {
		return nil, err
	}
	conn, place, err := c.openData(ctx, t)
	if err != nil {
		return nil, err
	}
	defer conn.Close(context.WithoutCancel(ctx))
	m := &Manifest{Format: ExportFormat, Tenant: t.ID, Tier: t.Tier, Plan: t.Plan, ExportedAt: time.Now().UTC()}
	var files []*os.File
	defer func() {
		for _, f := range files {
			f.Close()
			os.Remove(f.Name())
		}
	}()
	err = pgx.BeginTxFunc(ctx, conn, pgx.TxOptions{IsoLevel: pgx.RepeatableRead, AccessMode: pgx.ReadOnly}, func(tx pgx.Tx) error {
		if m.Tables, err = place.tables(ctx, tx); err != nil {
			return err
		}
		for i := range m.Tables {
			f, err := place.exportTable(ctx, tx, &m.Tables[i])
			if f != nil {
				files = append(files, f)
			}
			if err != nil {
				return err
			}
		}
		return nil
	})
	if err != nil {
		return nil, fmt.Errorf("catalog: export %q: %w", subdomain, err)
	}
	if err := writeExport(w, m, files); err != nil {
		return nil, fmt.Errorf("catalog: export %q: %w", subdomain, err)
	}
	return m, nil
}

// exportTable fills tb's count and checksum and copies its rows, as CSV
// with a header line, into a temporary file, rewound, which the caller
// removes: a tar entry's size comes before its bytes.
func (p dataPlace) exportTable(ctx context.Context, tx pgx.Tx, tb *Table) (*os.File, error) {
	var err error
	if tb.Rows, tb.MD5, err = p.checksum(ctx, tx, *tb); err != nil {
		return nil, err
	}
	f, err := os.CreateTemp("", "tenantproxy-export-*.csv")
	if err != nil {
		return nil, err
	}
	if _, err := tx.Conn().PgConn().CopyTo(ctx, f, "COPY ("+p.selectRows(*tb)+") TO STDOUT WITH (FORMAT csv, HEADER true)"); err != nil {
		return f, fmt.Errorf("copying %s: %w", tb.Name, err)
	}
	_, err = f.Seek(0, io.SeekStart)
	return f, err
}

// writeExport writes the tar: the manifest, then files in m.Tables' order.
func writeExport(w io.Writer, m *Manifest, files []*os.File) error {
	manifest, err := json.MarshalIndent(m, "", "  ")
	if err != nil {
		return err
	}
	tw := tar.NewWriter(w)
	header := func(name string, size int64) error {
		return tw.WriteHeader(&tar.Header{Name: name, Mode: 0o600, Size: size, ModTime: m.ExportedAt, Typeflag: tar.TypeReg})
	}
	if err := header(manifestName, int64(len(manifest))); err != nil {
		return err
	}
	if _, err := tw.Write(manifest); err != nil {
		return err
	}
	for i, f := range files {
		st, err := f.Stat()
		if err != nil {
			return err
		}
		if err := header(tableFile(m.Tables[i].Name), st.Size()); err != nil {
			return err
		}
		if _, err := io.Copy(tw, f); err != nil {
			return err
		}
	}
	return tw.Close()
}
