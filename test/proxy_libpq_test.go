package test

import (
	"context"
	"database/sql"
	"errors"
	"fmt"
	"strings"
	"testing"
	"time"

	"github.com/lib/pq"

	"github.com/tenantproxy/tenantproxy/proxy"
)

// TestLibPQThroughProxy drives every tier with lib/pq, a driver with its
// own protocol code (no pgx underneath): query, prepared statement, COPY
// and context cancellation, which lib/pq implements with a CancelRequest on
// a new connection and so exercises the proxy's cancel-key map.
func TestLibPQThroughProxy(t *testing.T) {
	e := newProxyEnv(t)
	_, addr := e.startProxy(t, proxy.Config{})
	for _, tt := range tierTenants {
		t.Run(string(tt.tier)+"/"+tt.sub, func(t *testing.T) {
			ctx := ctxT(t)
			db, err := sql.Open("postgres", dsn(addr, "alice."+tt.sub, tenantPassword))
			if err != nil {
				t.Fatal(err)
			}
			defer db.Close()
			db.SetMaxOpenConns(2)

			var uid, cid int64
			if err := db.QueryRowContext(ctx, "INSERT INTO users (username) VALUES ($1) RETURNING id", "pq-"+tt.sub).Scan(&uid); err != nil {
				t.Fatal(err)
			}
			if err := db.QueryRowContext(ctx, "INSERT INTO channels (name, created_by) VALUES ('pq', $1) RETURNING id", uid).Scan(&cid); err != nil {
				t.Fatal(err)
			}

			stmt, err := db.PrepareContext(ctx, "INSERT INTO messages (channel_id, author_id, body) VALUES ($1, $2, $3)")
			if err != nil {
				t.Fatal(err)
			}
			for i := range 3 {
				if _, err := stmt.ExecContext(ctx, cid, uid, fmt.Sprintf("%s pq %d", tt.sub, i)); err != nil {
					t.Fatal(err)
				}
			}
			stmt.Close()

			// In the shared tier too: the proxy loads the rows through a
			// staging table (PostgreSQL has no COPY FROM under row-level
			// security).
			if err := copyMessages(ctx, db, cid, uid, tt.sub); err != nil {
				t.Fatalf("COPY FROM: %v", err)
			}
			want := 5

			rows, err := db.QueryContext(ctx, "SELECT body FROM messages WHERE channel_id = $1 ORDER BY id", cid)
			if err != nil {
				t.Fatal(err)
			}
			var bodies []string
			for rows.Next() {
				var b string
				if err := rows.Scan(&b); err != nil {
					t.Fatal(err)
				}
				if !strings.HasPrefix(b, tt.sub+" ") {
					t.Fatalf("tenant %s reads another tenant's message %q", tt.sub, b)
				}
				bodies = append(bodies, b)
			}
			if err := rows.Err(); err != nil {
				t.Fatal(err)
			}
			if len(bodies) != want {
				t.Fatalf("read back %d messages %q; want %d", len(bodies), bodies, want)
			}

			cctx, cancel := context.WithTimeout(ctx, 300*time.Millisecond)
			defer cancel()
			started := time.Now()
			_, err = db.ExecContext(cctx, "SELECT pg_sleep(30)")
			var pqErr *pq.Error
			if !errors.As(err, &pqErr) || pqErr.Code != "57014" {
				t.Fatalf("cancelled pg_sleep: %v; want 57014 from the server", err)
			}
			if took := time.Since(started); took > 10*time.Second {
				t.Fatalf("cancel took %s: the server did not get the CancelRequest", took)
			}
			var one int
			if err := db.QueryRowContext(ctx, "SELECT 1").Scan(&one); err != nil {
				t.Fatalf("query after a cancel: %v", err)
			}
		})
	}
}

func copyMessages(ctx context.Context, db *sql.DB, cid, uid int64, sub string) error {
	tx, err := db.BeginTx(ctx, nil)
	if err != nil {
		return err
	}
	defer tx.Rollback()
	stmt, err := tx.PrepareContext(ctx, "COPY messages (channel_id, author_id, body) FROM STDIN")
	if err != nil {
		return err
	}
	for i := range 2 {
		if _, err := stmt.ExecContext(ctx, cid, uid, fmt.Sprintf("%s copied %d", sub, i)); err != nil {
			return err
		}
	}
	if _, err := stmt.ExecContext(ctx); err != nil {
		return err
	}
	if err := stmt.Close(); err != nil {
		return err
	}
	return tx.Commit()
}
