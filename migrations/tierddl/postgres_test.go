package tierddl_test

import (
	"context"
	"errors"
	"slices"
	"strings"
	"testing"
	"time"

	"github.com/jackc/pgx/v5"
	"github.com/jackc/pgx/v5/pgconn"

	"github.com/tenantproxy/tenantproxy/internal/pgtest"
	"github.com/tenantproxy/tenantproxy/migrations"
	"github.com/tenantproxy/tenantproxy/migrations/tierddl"
)

func TestMain(m *testing.M) { pgtest.RunMain(m) }

// todosApp is a small application's first migration, written as for a
// database of its own.
const todosApp = `
CREATE TABLE todos (
    id    bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    title text NOT NULL UNIQUE,
    done  boolean NOT NULL DEFAULT false
);
CREATE TABLE tags (
    id   serial PRIMARY KEY,
    name text NOT NULL UNIQUE
);
CREATE TABLE todo_tags (
    todo_id bigint NOT NULL REFERENCES todos ON DELETE CASCADE,
    tag_id  integer NOT NULL REFERENCES tags (id) ON DELETE CASCADE,
    PRIMARY KEY (todo_id, tag_id)
);
CREATE INDEX todos_open ON todos (done, id);
CREATE VIEW open_todos AS SELECT id, title FROM todos WHERE NOT done;
`

// TestTodosAppInTheSharedTier applies todosApp, transformed, to a shared
// database prepared by migrations.Up (which registers the backend and
// bootstraps the per-tenant id function), and uses it as two tenants the
// way the proxy does: as the serving role with the tenant setting set.
func TestTodosAppInTheSharedTier(t *testing.T) {
	ctx, cancel := context.WithTimeout(context.Background(), 3*time.Minute)
	defer cancel()
	c := pgtest.StartT(t)
	if _, err := migrations.Up(ctx, pgtest.NewDatabase(t, c), migrations.Options{}); err != nil {
		t.Fatalf("migrate up: %v", err)
	}
	ddl, err := tierddl.Transform(tierddl.Shared, todosApp)
	if err != nil {
		t.Fatal(err)
	}
	dsn := c.DSN(migrations.SharedDatabase)
	admin := connect(ctx, t, dsn)
	if _, err := admin.Exec(ctx, ddl); err != nil {
		t.Fatalf("applying the transformed migration: %v\n%s", err, ddl)
	}
	a, b := serving(ctx, t, dsn, "tenant-a"), serving(ctx, t, dsn, "tenant-b")

	t.Run("the same unique title in two tenants", func(t *testing.T) {
		if id := insertTodo(ctx, t, a, "buy milk"); id != 1 {
			t.Errorf("tenant a's first todo has id %d; want 1", id)
		}
		if id := insertTodo(ctx, t, b, "buy milk"); id != 1 {
			t.Errorf("tenant b's first todo has id %d; want 1", id)
		}
	})

	t.Run("a duplicate within one tenant fails without revealing the other's row", func(t *testing.T) {
		_, err := a.Exec(ctx, "INSERT INTO todos (title) VALUES ('buy milk')")
		pgErr := wantSQLState(t, err, "23505")
		if strings.Contains(pgErr.Detail+pgErr.Message, "tenant-b") {
			t.Errorf("the violation names the other tenant: %s: %s", pgErr.Message, pgErr.Detail)
		}
	})

	t.Run("ids of each tenant are contiguous whatever the other inserts", func(t *testing.T) {
		var gotA, gotB []int64
		for i, title := range []string{"x", "y", "z", "w"} {
			gotA = append(gotA, insertTodo(ctx, t, a, "a "+title))
			if i%2 == 0 {
				gotB = append(gotB, insertTodo(ctx, t, b, "b "+title))
			}
		}
		// Tenant a's failed duplicate above drew 2: a sequence never gives
		// a number back, but the gaps a tenant sees are its own.
		if want := []int64{3, 4, 5, 6}; !slices.Equal(gotA, want) {
			t.Errorf("tenant a's ids %v; want %v", gotA, want)
		}
		if want := []int64{2, 3}; !slices.Equal(gotB, want) {
			t.Errorf("tenant b's ids %v; want %v", gotB, want)
		}
	})

	t.Run("a reference to the other tenant's row fails", func(t *testing.T) {
		var tag int64
		if err := b.QueryRow(ctx, "INSERT INTO tags (name) VALUES ('home') RETURNING id").Scan(&tag); err != nil || tag != 1 {
			t.Fatalf("tag: %d, %v; want id 1", tag, err)
		}
		// Todo 5 exists, but only in tenant a.
		_, err := b.Exec(ctx, "INSERT INTO todo_tags (todo_id, tag_id) VALUES (5, $1)", tag)
		wantSQLState(t, err, "23503")
		if _, err := b.Exec(ctx, "INSERT INTO todo_tags (todo_id, tag_id) VALUES (3, $1)", tag); err != nil {
			t.Errorf("tenant b tagging its own todo: %v", err)
		}
	})

	t.Run("a session without a tenant sees and inserts nothing", func(t *testing.T) {
		unset := serving(ctx, t, dsn, "")
		// A custom setting once set and then reset reads as ''.
		reset := serving(ctx, t, dsn, "tenant-a")
		if _, err := reset.Exec(ctx, "SELECT set_config($1, '', false)", migrations.TenantGUC); err != nil {
			t.Fatal(err)
		}
		for _, none := range []*pgx.Conn{unset, reset} {
			var n int
			if err := none.QueryRow(ctx, "SELECT (SELECT count(*) FROM todos) + (SELECT count(*) FROM tags) + (SELECT count(*) FROM todo_tags)").Scan(&n); err != nil || n != 0 {
				t.Errorf("without a tenant: %d rows, %v; want 0", n, err)
			}
			_, err := none.Exec(ctx, "INSERT INTO todos (title) VALUES ('orphan')")
			wantSQLState(t, err, "42501")
			for _, ins := range []string{
				"INSERT INTO todos (id, title) OVERRIDING SYSTEM VALUE VALUES (99, 'orphan')",
				"INSERT INTO todos (tenant_id, id, title) VALUES ('tenant-a', 99, 'planted')",
			} {
				if _, err := none.Exec(ctx, ins); err == nil {
					t.Errorf("without a tenant, %s succeeded", ins)
				}
			}
		}
	})

	t.Run("a view shows the tenant's rows only", func(t *testing.T) {
		// Owned by the migration role, which row-level security does not
		// restrict, the view would show every tenant's rows were it not
		// made security_invoker.
		var inView, inTable int
		if err := b.QueryRow(ctx, "SELECT (SELECT count(*) FROM open_todos), (SELECT count(*) FROM todos)").Scan(&inView, &inTable); err != nil {
			t.Fatal(err)
		}
		if inView != 3 || inTable != 3 {
			t.Errorf("tenant b sees %d todos in the view and %d in the table; want 3 and 3", inView, inTable)
		}
	})

	t.Run("a tenant cannot plant a row in another tenant", func(t *testing.T) {
		_, err := a.Exec(ctx, "INSERT INTO todos (tenant_id, title) VALUES ('tenant-b', 'planted')")
		wantSQLState(t, err, "42501")
	})

	t.Run("two first inserts of a new tenant at once", func(t *testing.T) {
		c1, c2 := serving(ctx, t, dsn, "tenant-c"), serving(ctx, t, dsn, "tenant-c")
		tx, err := c1.Begin(ctx)
		if err != nil {
			t.Fatal(err)
		}
		first := insertTodo(ctx, t, tx, "first")
		second := make(chan int64, 1)
		go func() {
			var id int64
			c2.QueryRow(ctx, "INSERT INTO todos (title) VALUES ('second') RETURNING id").Scan(&id) //nolint:errcheck // a failure shows as id 0
			second <- id
		}()
		waitForLockWait(ctx, t, admin)
		if err := tx.Commit(ctx); err != nil {
			t.Fatal(err)
		}
		if got := <-second; first != 1 || got != 2 {
			t.Errorf("concurrent first inserts got ids %d and %d; want 1 and 2", first, got)
		}
	})

	t.Run("a deleted tenant's ids are forgotten", func(t *testing.T) {
		if _, err := admin.Exec(ctx, "DELETE FROM todos WHERE tenant_id = 'tenant-c'; SELECT "+tierddl.ForgetIDsFunction+"('tenant-c')"); err != nil {
			t.Fatal(err)
		}
		if id := insertTodo(ctx, t, serving(ctx, t, dsn, "tenant-c"), "again"); id != 1 {
			t.Errorf("a recreated tenant's first todo has id %d; want 1", id)
		}
		_, err := a.Exec(ctx, "SELECT "+tierddl.ForgetIDsFunction+"('tenant-b')")
		wantSQLState(t, err, "42501")
	})

	t.Run("the per-tenant sequences are out of the serving role's reach", func(t *testing.T) {
		_, err := a.Exec(ctx, "SELECT tenantproxy.next_id('made.up')")
		wantSQLState(t, err, "42704")
		_, err = a.Exec(ctx, "SELECT lastval()")
		if err == nil {
			t.Error("lastval() read a per-tenant sequence")
		}
		rows, _ := a.Query(ctx, "SELECT relname FROM pg_class WHERE relnamespace = $1::regnamespace", tierddl.SequenceSchema)
		names, err := pgx.CollectRows(rows, pgx.RowTo[string])
		if err != nil {
			t.Fatal(err)
		}
		for _, n := range names {
			if strings.Contains(n, "tenant") {
				t.Errorf("sequence name %q reveals a tenant", n)
			}
		}
		_, err = a.Exec(ctx, "SELECT last_value FROM "+tierddl.SequenceSchema+"."+names[0])
		wantSQLState(t, err, "42501")
	})
}

func connect(ctx context.Context, t *testing.T, dsn string) *pgx.Conn {
	t.Helper()
	conn, err := pgx.Connect(ctx, dsn)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { conn.Close(context.Background()) })
	return conn
}

// serving connects as the serving role with tenant (unless empty) set, as
// the proxy's shared-tier sessions are.
func serving(ctx context.Context, t *testing.T, dsn, tenant string) *pgx.Conn {
	t.Helper()
	conn := connect(ctx, t, dsn)
	if _, err := conn.Exec(ctx, "SET ROLE "+migrations.ServingRole); err != nil {
		t.Fatal(err)
	}
	if tenant != "" {
		if _, err := conn.Exec(ctx, "SELECT set_config($1, $2, false)", migrations.TenantGUC, tenant); err != nil {
			t.Fatal(err)
		}
	}
	return conn
}

// waitForLockWait returns once a session of the database waits for a lock:
// the second first insert, waiting for the first's new sequence.
func waitForLockWait(ctx context.Context, t *testing.T, admin *pgx.Conn) {
	t.Helper()
	for range 500 {
		var waiting bool
		if err := admin.QueryRow(ctx, `SELECT EXISTS (SELECT FROM pg_stat_activity
			WHERE datname = current_database() AND wait_event_type = 'Lock')`).Scan(&waiting); err != nil {
			t.Fatal(err)
		}
		if waiting {
			return
		}
		time.Sleep(10 * time.Millisecond)
	}
	t.Fatal("the second insert never waited for the first")
}

type querier interface {
	QueryRow(ctx context.Context, sql string, args ...any) pgx.Row
}

func insertTodo(ctx context.Context, t *testing.T, q querier, title string) int64 {
	t.Helper()
	var id int64
	if err := q.QueryRow(ctx, "INSERT INTO todos (title) VALUES ($1) RETURNING id", title).Scan(&id); err != nil {
		t.Fatalf("inserting todo %q: %v", title, err)
	}
	return id
}

func wantSQLState(t *testing.T, err error, code string) *pgconn.PgError {
	t.Helper()
	var pgErr *pgconn.PgError
	if !errors.As(err, &pgErr) || pgErr.Code != code {
		t.Fatalf("got %v; want SQLSTATE %s", err, code)
	}
	return pgErr
}
