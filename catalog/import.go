package catalog

import (
	"archive/tar"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"slices"
	"strings"

	"github.com/jackc/pgx/v5"
	"go.uber.org/zap"
)

// ImportRequest is what `tenant import` asks for: the tenant to create
// and exactly one source of its data.
type ImportRequest struct {
	CreateRequest
	// FromDSN connects to a single-tenant database whose public tables
	// are the data.
	FromDSN string
	// FromExport reads an export (ExportFormat).
	FromExport io.Reader
	// Progress, when set, gets one line per table.
	Progress io.Writer
}

// Imported is the outcome of Import: the tenant and each table copied,
// with the row count and checksum found equal on both sides.
type Imported struct {
	*Created
	Tables []Table `json:"tables"`
}

// ChecksumError reports a table whose copy differs from its source.
type ChecksumError struct {
	Table              string
	SourceRows, Rows   int64
	SourceMD5, LoadMD5 string
}

func (e *ChecksumError) Error() string {
	return fmt.Sprintf("table %s: the source has %d rows (md5 %s), the copy %d (md5 %s)", e.Table, e.SourceRows, e.SourceMD5, e.Rows, e.LoadMD5)
}

// importSource yields a source's tables, in load order with their rows'
// count and checksum, and each one's rows as CSV with a header line.
type importSource interface {
	tables() []Table
	rows(ctx context.Context, tb Table) (io.ReadCloser, error)
	close(ctx context.Context)
}

// Import creates the tenant as Create does and fills it from the source:
// every source table into the tenant's table of that name, which must
// exist (the app's migrations made it) with each source column under the
// same name and type; the target may have more columns, with defaults
// (tenant_id in the shared tier). Each table is then checked: rows and
// checksum equal to the source's. Id sequences continue past the highest
// id copied. The tenant stays suspended while it fills, and one
// transaction holds every table, so clients never see part of it; any
// failure deletes the tenant, as a failed create does, so a retry starts
// clean.
func (c *Catalog) Import(ctx context.Context, req ImportRequest) (*Imported, error) {
	if (req.FromDSN == "") == (req.FromExport == nil) {
		return nil, &ValidationError{Field: "source", Value: "", Reason: "give exactly one of a DSN and an export"}
	}
	src, err := openSource(ctx, req)
	if err != nil {
		return nil, fmt.Errorf("catalog: import %q: %w", req.Subdomain, err)
	}
	defer src.close(ctx)
	created, err := c.Create(ctx, req.CreateRequest)
	if err != nil {
		return nil, err
	}
	t := *created.Tenant
	err = c.Suspend(ctx, t.ID)
	if err == nil {
		err = c.load(ctx, t, src, req.Progress)
	}
	if err == nil {
		err = c.Resume(ctx, t.ID)
	}
	if err != nil {
		b, berr := c.backend(ctx, c.db, t.Backend)
		if berr != nil {
			return nil, fmt.Errorf("catalog: import %q failed (%w); run tenant delete to clean up: %v", t.ID, err, berr)
		}
		return nil, c.rollBack(ctx, t, b, "import", err)
	}
	c.log.Info("tenant imported", zap.String("tenant", t.ID), zap.String("tier", string(t.Tier)), zap.Int("tables", len(src.tables())))
	return &Imported{Created: created, Tables: src.tables()}, nil
}

// load copies every table of src into t in one transaction and checks it.
func (c *Catalog) load(ctx context.Context, t Tenant, src importSource, progress io.Writer) error {
	conn, place, err := c.openData(ctx, t)
	if err != nil {
		return err
	}
	defer conn.Close(context.WithoutCancel(ctx))
	return pgx.BeginFunc(ctx, conn, func(tx pgx.Tx) error {
		target, err := place.tables(ctx, tx)
		if err != nil {
			return err
		}
		for _, tb := range src.tables() {
			if err := matchTable(target, tb); err != nil {
				return err
			}
			if err := place.loadTable(ctx, tx, src, tb); err != nil {
				return err
			}
			if progress != nil {
				fmt.Fprintf(progress, "table %s: %d rows, md5 %s: equal to the source\n", tb.Name, tb.Rows, tb.MD5)
			}
		}
		return nil
	})
}

// loadTable copies tb's rows from src, compares the result with the
// source's count and checksum, and continues the id sequences.
func (p dataPlace) loadTable(ctx context.Context, tx pgx.Tx, src importSource, tb Table) error {
	r, err := src.rows(ctx, tb)
	if err != nil {
		return err
	}
	if err := p.copyIn(ctx, tx, tb, r); err != nil {
		return err
	}
	n, sum, err := p.checksum(ctx, tx, tb)
	if err != nil {
		return err
	}
	if n != tb.Rows || sum != tb.MD5 {
		return &ChecksumError{Table: tb.Name, SourceRows: tb.Rows, SourceMD5: tb.MD5, Rows: n, LoadMD5: sum}
	}
	return p.continueIDs(ctx, tx, tb)
}

// copyIn copies r's rows (CSV with a header line) into tb at p, and
// closes r.
func (p dataPlace) copyIn(ctx context.Context, tx pgx.Tx, tb Table, r io.ReadCloser) error {
	cols := make([]string, len(tb.Columns))
	for i, c := range tb.Columns {
		cols[i] = pgx.Identifier{c.Name}.Sanitize()
	}
	_, err := tx.Conn().PgConn().CopyFrom(ctx, r,
		"COPY "+p.qualified(tb.Name)+" ("+strings.Join(cols, ", ")+") FROM STDIN WITH (FORMAT csv, HEADER true)")
	if cerr := r.Close(); err == nil {
		err = cerr
	}
	if err != nil {
		return fmt.Errorf("copying %s: %w", tb.Name, err)
	}
	return nil
}

// matchTable checks that the tenant has a table like tb: each of tb's
// columns under its name and type.
func matchTable(target []Table, tb Table) error {
	i := slices.IndexFunc(target, func(t Table) bool { return t.Name == tb.Name })
	if i < 0 {
		return fmt.Errorf("the source's table %s is not among the tenant's tables: store the app's migrations (migrate up --dir) first", tb.Name)
	}
	for _, col := range tb.Columns {
		j := slices.IndexFunc(target[i].Columns, func(c Column) bool { return c.Name == col.Name })
		if j < 0 {
			return fmt.Errorf("the source's column %s.%s is not in the tenant's table", tb.Name, col.Name)
		}
		if got := target[i].Columns[j].Type; got != col.Type {
			return fmt.Errorf("column %s.%s is %s in the source, %s in the tenant's table", tb.Name, col.Name, col.Type, got)
		}
	}
	return nil
}

func openSource(ctx context.Context, req ImportRequest) (importSource, error) {
	if req.FromExport != nil {
		return openExport(req.FromExport)
	}
	return openDatabase(ctx, req.FromDSN)
}

// exportSource reads an export's tar in order: the manifest, then the
// tables' CSV files in the manifest's order.
type exportSource struct {
	tr *tar.Reader
	m  Manifest
}

func openExport(r io.Reader) (*exportSource, error) {
	s := &exportSource{tr: tar.NewReader(r)}
	h, err := s.tr.Next()
	if err != nil || h.Name != manifestName {
		return nil, fmt.Errorf("not an export: its first entry should be %s (%v)", manifestName, err)
	}
	if err := json.NewDecoder(s.tr).Decode(&s.m); err != nil {
		return nil, fmt.Errorf("reading %s: %w", manifestName, err)
	}
	if s.m.Format != ExportFormat {
		return nil, fmt.Errorf("export format %q: this version reads %q", s.m.Format, ExportFormat)
	}
	return s, nil
}

func (s *exportSource) tables() []Table { return s.m.Tables }

func (s *exportSource) rows(_ context.Context, tb Table) (io.ReadCloser, error) {
	h, err := s.tr.Next()
	if err != nil || h.Name != tableFile(tb.Name) {
		return nil, fmt.Errorf("export: expected %s next (%v)", tableFile(tb.Name), err)
	}
	return io.NopCloser(s.tr), nil
}

func (s *exportSource) close(context.Context) {}

// databaseSource reads a single-tenant database's public tables in one
// repeatable-read snapshot, so that what is copied is what was checksummed.
type databaseSource struct {
	conn  *pgx.Conn
	tx    pgx.Tx
	place dataPlace
	ts    []Table
}

func openDatabase(ctx context.Context, dsn string) (_ *databaseSource, err error) {
	cfg, err := pgx.ParseConfig(dsn)
	if err != nil {
		// The parse error may echo the DSN, password included.
		return nil, &ValidationError{Field: "source DSN", Value: "…", Reason: "is not a valid PostgreSQL connection string"}
	}
	conn, err := pgx.ConnectConfig(ctx, cfg)
	if err != nil {
		return nil, fmt.Errorf("connecting to the source: %w", err)
	}
	s := &databaseSource{conn: conn, place: dataPlace{schema: "public"}}
	defer func() {
		if err != nil {
			s.close(ctx)
		}
	}()
	if _, err := conn.Exec(ctx, sessionSettings); err != nil {
		return nil, err
	}
	if s.tx, err = conn.BeginTx(ctx, pgx.TxOptions{IsoLevel: pgx.RepeatableRead, AccessMode: pgx.ReadOnly}); err != nil {
		return nil, err
	}
	if s.ts, err = s.place.tables(ctx, s.tx); err != nil {
		return nil, fmt.Errorf("source: %w", err)
	}
	for i := range s.ts {
		if s.ts[i].Rows, s.ts[i].MD5, err = s.place.checksum(ctx, s.tx, s.ts[i]); err != nil {
			return nil, fmt.Errorf("source: %w", err)
		}
	}
	return s, nil
}

func (s *databaseSource) tables() []Table { return s.ts }

// rows streams tb out of the source while the caller copies it in; Close
// reports the source's error, after ending the stream if the reader
// stopped early.
func (s *databaseSource) rows(ctx context.Context, tb Table) (io.ReadCloser, error) {
	return copyOut(ctx, s.conn, s.place.selectRows(tb)), nil
}

// copyOut streams query's rows, as CSV with a header line, out of conn
// while the caller reads them.
func copyOut(ctx context.Context, conn *pgx.Conn, query string) io.ReadCloser {
	pr, pw := io.Pipe()
	done := make(chan error, 1)
	go func() {
		_, err := conn.PgConn().CopyTo(ctx, pw, "COPY ("+query+") TO STDOUT WITH (FORMAT csv, HEADER true)")
		pw.CloseWithError(err)
		done <- err
	}()
	return &pipeReader{PipeReader: pr, done: done}
}

type pipeReader struct {
	*io.PipeReader
	done <-chan error
}

func (p *pipeReader) Close() error {
	p.PipeReader.CloseWithError(errors.New("the copy into the tenant stopped"))
	return <-p.done
}

func (s *databaseSource) close(ctx context.Context) {
	s.conn.Close(context.WithoutCancel(ctx))
}
