package migrations

import (
	"context"
	"crypto/sha256"
	"encoding/hex"
	"errors"
	"fmt"
	"io/fs"
	"os"
	"path/filepath"
	"sort"
	"strconv"
	"strings"

	"github.com/jackc/pgx/v5"

	"github.com/tenantproxy/tenantproxy/migrations/tierddl"
)

// AppMigration is one version of the adopter's migrations, as written:
// single-tenant DDL that each tier's targets get in their tier's form
// (tierddl.Transform). Checksum is the hex SHA-256 of Up; Down is empty
// when HasDown is false.
type AppMigration struct {
	Version  int    `json:"version"`
	Name     string `json:"name"`
	Up       string `json:"-"`
	Down     string `json:"-"`
	HasDown  bool   `json:"has_down"`
	Checksum string `json:"checksum"`
}

func (m AppMigration) label() string { return fmt.Sprintf("%04d_%s", m.Version, m.Name) }

// ReadAppDir reads a directory in the layout golang-migrate, goose and tern
// users have: NNNN_name.up.sql with an optional NNNN_name.down.sql, or
// NNNN_name.sql as an up file. Files not ending in .sql are ignored; a .sql
// file of another shape, two up files of one version, a down file without
// its up file and a single file carrying goose, sql-migrate or tern up/down
// markers (which would run the down half on the way up) are errors.
func ReadAppDir(dir string) ([]AppMigration, error) {
	return ReadAppFS(os.DirFS(dir), dir)
}

// ReadAppFS reads the root of fsys as ReadAppDir reads a directory, so
// that an app may ship its migrations embedded in its binary (the chat
// API does: chatapi.Schema); dir names the directory in errors.
func ReadAppFS(fsys fs.FS, dir string) ([]AppMigration, error) {
	entries, err := fs.ReadDir(fsys, ".")
	if err != nil {
		return nil, fmt.Errorf("migrations: %w", err)
	}
	byVersion := map[int]*AppMigration{}
	for _, e := range entries {
		base := e.Name()
		if e.IsDir() || !strings.HasSuffix(base, ".sql") {
			continue
		}
		stem := strings.TrimSuffix(base, ".sql")
		down := strings.HasSuffix(stem, ".down")
		stem = strings.TrimSuffix(strings.TrimSuffix(stem, ".down"), ".up")
		num, name, ok := strings.Cut(stem, "_")
		v, err := strconv.Atoi(num)
		if !ok || err != nil || v <= 0 || name == "" {
			return nil, fmt.Errorf("migrations: %s: want NNNN_name.up.sql, NNNN_name.down.sql or NNNN_name.sql", filepath.Join(dir, base))
		}
		raw, err := fs.ReadFile(fsys, base)
		if err != nil {
			return nil, fmt.Errorf("migrations: %w", err)
		}
		sql := string(raw)
		if marker := twoWayMarker(sql); marker != "" {
			return nil, fmt.Errorf("migrations: %s: holds %q, so it has up and down in one file: split it into %s.up.sql and %s.down.sql",
				filepath.Join(dir, base), marker, stem, stem)
		}
		m := byVersion[v]
		if m == nil {
			m = &AppMigration{Version: v, Name: name}
			byVersion[v] = m
		}
		if m.Name != name {
			return nil, fmt.Errorf("migrations: %s: version %d is named both %q and %q", dir, v, m.Name, name)
		}
		switch {
		case down && m.HasDown:
			return nil, fmt.Errorf("migrations: %s: version %d has two down files", dir, v)
		case down:
			m.Down, m.HasDown = sql, true
		case m.Checksum != "":
			return nil, fmt.Errorf("migrations: %s: version %d has two up files", dir, v)
		default:
			sum := sha256.Sum256(raw)
			m.Up, m.Checksum = sql, hex.EncodeToString(sum[:])
		}
	}
	out := make([]AppMigration, 0, len(byVersion))
	for v, m := range byVersion {
		if m.Checksum == "" {
			return nil, fmt.Errorf("migrations: %s: version %d has a down file and no up file", dir, v)
		}
		out = append(out, *m)
	}
	if len(out) == 0 {
		return nil, fmt.Errorf("migrations: %s holds no NNNN_name.up.sql or NNNN_name.sql file", dir)
	}
	sort.Slice(out, func(i, j int) bool { return out[i].Version < out[j].Version })
	return out, nil
}

// twoWayMarker returns the up/down separator of goose, sql-migrate or tern
// that sql holds, "" when none.
func twoWayMarker(sql string) string {
	for _, marker := range []string{"-- +goose Down", "-- +migrate Down", "---- create above / drop below ----"} {
		if strings.Contains(sql, marker) {
			return marker
		}
	}
	return ""
}

// AppChangedError reports a directory whose version differs from the one
// the catalog stores. Targets may have applied the stored SQL, and they
// would silently differ from a target applying the new one: ship a new
// version, or migrate down below this one first.
type AppChangedError struct {
	Version int
	Name    string
}

func (e *AppChangedError) Error() string {
	return fmt.Sprintf("migrations: app migration %04d_%s differs from the one stored in the catalog (checksum differs); "+
		"a stored version cannot change: add a new version, or migrate down --to %d first", e.Version, e.Name, e.Version-1)
}

// Querier is what loading the stored app migrations needs from a
// connection to the catalog: *pgx.Conn and *pgxpool.Pool qualify.
type Querier interface {
	Query(ctx context.Context, sql string, args ...any) (pgx.Rows, error)
	QueryRow(ctx context.Context, sql string, args ...any) pgx.Row
}

// StoreApp records ms in the catalog reached through control, where every
// proxy instance, tenant create and migrate up find them, and returns how
// many versions were new. A version already stored keeps its up SQL and
// may get a new down file; a different up SQL is an *AppChangedError and
// stores nothing.
func StoreApp(ctx context.Context, control DB, ms []AppMigration) (int, error) {
	added := 0
	err := pgx.BeginFunc(ctx, control, func(tx pgx.Tx) error {
		// Serializes concurrent stores, so two directories cannot both
		// decide a version is new.
		if _, err := tx.Exec(ctx, "LOCK TABLE app_migrations IN SHARE ROW EXCLUSIVE MODE"); err != nil {
			return err
		}
		for _, m := range ms {
			var sum string
			err := tx.QueryRow(ctx, "SELECT checksum FROM app_migrations WHERE version = $1", m.Version).Scan(&sum)
			switch {
			case errors.Is(err, pgx.ErrNoRows):
				added++
			case err != nil:
				return err
			case sum != m.Checksum:
				return &AppChangedError{Version: m.Version, Name: m.Name}
			}
			var down *string
			if m.HasDown {
				down = &m.Down
			}
			if _, err := tx.Exec(ctx, `INSERT INTO app_migrations (version, name, up_sql, down_sql, checksum)
				VALUES ($1, $2, $3, $4, $5)
				ON CONFLICT (version) DO UPDATE SET down_sql = coalesce(excluded.down_sql, app_migrations.down_sql)`,
				m.Version, m.Name, m.Up, down, m.Checksum); err != nil {
				return err
			}
		}
		return nil
	})
	var changed *AppChangedError
	if err != nil && !errors.As(err, &changed) {
		err = fmt.Errorf("migrations: storing app migrations: %w", err)
	}
	return added, err
}

// appSet is the stored app migrations, each with its form per tier.
type appSet struct {
	ms    []AppMigration
	forms map[Kind][]appForm
}

// appForm is one migration in one tier's form, or why tierddl refused it.
type appForm struct {
	up, down       Migration
	upErr, downErr error
}

// LoadApp reads the stored app migrations through control; a catalog
// without the table (not migrated yet) has none.
func loadApp(ctx context.Context, control Querier) (*appSet, error) {
	var exists bool
	if err := control.QueryRow(ctx, "SELECT to_regclass('app_migrations') IS NOT NULL").Scan(&exists); err != nil {
		return nil, fmt.Errorf("migrations: reading app migrations: %w", err)
	}
	var ms []AppMigration
	if exists {
		rows, err := control.Query(ctx, "SELECT version, name, up_sql, down_sql, checksum FROM app_migrations ORDER BY version")
		if err != nil {
			return nil, fmt.Errorf("migrations: reading app migrations: %w", err)
		}
		ms, err = pgx.CollectRows(rows, func(row pgx.CollectableRow) (AppMigration, error) {
			var m AppMigration
			var down *string
			err := row.Scan(&m.Version, &m.Name, &m.Up, &down, &m.Checksum)
			if down != nil {
				m.Down, m.HasDown = *down, true
			}
			return m, err
		})
		if err != nil {
			return nil, fmt.Errorf("migrations: reading app migrations: %w", err)
		}
	}
	return newAppSet(ms), nil
}

// newAppSet transforms every migration once per tier, so that a fan-out
// over a thousand schemas does not parse it a thousand times.
func newAppSet(ms []AppMigration) *appSet {
	s := &appSet{ms: ms, forms: map[Kind][]appForm{}}
	for _, k := range []Kind{KindShared, KindSchema, KindDatabase} {
		forms := make([]appForm, len(ms))
		for i, m := range ms {
			f := &forms[i]
			var up, down string
			up, f.upErr = tierddl.Transform(tierddl.Tier(k), m.Up)
			f.up = Migration{Version: m.Version, Name: m.Name, SQL: up, Checksum: m.Checksum}
			if m.HasDown {
				down, f.downErr = tierddl.Transform(tierddl.Tier(k), m.Down)
			} else {
				f.downErr = errors.New("it has no down file")
			}
			f.down = Migration{Version: m.Version, Name: m.Name, SQL: down, Checksum: m.Checksum}
		}
		s.forms[k] = forms
	}
	return s
}

func (s *appSet) latest() int {
	if len(s.ms) == 0 {
		return 0
	}
	return s.ms[len(s.ms)-1].Version
}

// index returns the position of version v, -1 when it is not stored.
func (s *appSet) index(v int) int {
	i := sort.Search(len(s.ms), func(i int) bool { return s.ms[i].Version >= v })
	if i < len(s.ms) && s.ms[i].Version == v {
		return i
	}
	return -1
}
