package catalog

import (
	"context"
	"encoding/json"
	"fmt"
	"strconv"
	"strings"

	"github.com/jackc/pgx/v5"
)

// Change capture on a move's source (README "Moving tenants"): a row
// trigger on each of the tenant's tables records the primary key of every
// row of the tenant's that a transaction inserts, updates or deletes, in
// a table of the proxy's own schema, in the writer's transaction; the
// mover copies those rows again (catch-up). The same trigger is the
// fence: once the move's switch sets it, a write of the tenant's to the
// source fails (40001) rather than land in a copy nobody reads.

// captureSchema holds the capture's tables and function in a source
// database; no tenant role may use it.
const captureSchema = "tenantproxy_move"

// moveLockClass is the first key of the advisory locks of moves: in the
// control database one per tenant (lockMove), in a source database one
// per move, which every capturing writer holds shared until it ends, so
// that the fence waits for the tenant's writers in flight.
const moveLockClass = 1953525110

var captureDDL = `CREATE SCHEMA IF NOT EXISTS ` + captureSchema + `;
REVOKE ALL ON SCHEMA ` + captureSchema + ` FROM PUBLIC;
CREATE TABLE IF NOT EXISTS ` + captureSchema + `.moves (id bigint PRIMARY KEY, fenced boolean NOT NULL DEFAULT false);
CREATE TABLE IF NOT EXISTS ` + captureSchema + `.changes (
	id bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY, move bigint NOT NULL, tbl text NOT NULL, pk jsonb NOT NULL);
CREATE INDEX IF NOT EXISTS changes_move ON ` + captureSchema + `.changes (move, tbl);
CREATE OR REPLACE FUNCTION ` + captureSchema + `.capture() RETURNS trigger
LANGUAGE plpgsql SECURITY DEFINER SET search_path = pg_catalog, pg_temp AS $f$
DECLARE
	move bigint := TG_ARGV[0]::bigint;
	r jsonb;
BEGIN
	IF TG_OP = 'TRUNCATE' THEN
		RAISE EXCEPTION 'TRUNCATE is not available while the tenant is being moved' USING ERRCODE = '55000';
	END IF;
	FOREACH r IN ARRAY ARRAY[CASE WHEN TG_OP <> 'INSERT' THEN to_jsonb(OLD) END, CASE WHEN TG_OP <> 'DELETE' THEN to_jsonb(NEW) END] LOOP
		CONTINUE WHEN r IS NULL OR (TG_ARGV[1] <> '' AND r->>'tenant_id' IS DISTINCT FROM TG_ARGV[1]);
		PERFORM pg_advisory_xact_lock_shared(` + strconv.Itoa(moveLockClass) + `, move::integer);
		IF (SELECT fenced FROM ` + captureSchema + `.moves WHERE id = move) THEN
			RAISE EXCEPTION 'the tenant is switching to its new place: retry the transaction' USING ERRCODE = '40001';
		END IF;
		INSERT INTO ` + captureSchema + `.changes (move, tbl, pk)
			SELECT move, TG_TABLE_NAME, jsonb_object_agg(k, r->k) FROM jsonb_array_elements_text(TG_ARGV[2]::jsonb) k;
	END LOOP;
	RETURN NULL;
END
$f$;`

// triggerName is move id's capture trigger on every table.
func triggerName(id int64) string { return "tenantproxy_move_" + strconv.FormatInt(id, 10) }

// quoteLiteral quotes s as an SQL string literal (standard_conforming_strings).
func quoteLiteral(s string) string { return "'" + strings.ReplaceAll(s, "'", "''") + "'" }

// connectSource connects to t's database on its backend as the admin
// role, with no tenant context: the mover reads every table, the
// capture's included.
func (c *Catalog) connectSource(ctx context.Context, t Tenant) (*pgx.Conn, dataPlace, error) {
	conn, err := c.connectAdmin(ctx, t)
	if err != nil {
		return nil, dataPlace{}, err
	}
	if _, err := conn.Exec(ctx, sessionSettings); err != nil {
		conn.Close(context.WithoutCancel(ctx))
		return nil, dataPlace{}, err
	}
	return conn, dataPlaceOf(t), nil
}

// primaryKeys maps each of p's tables to its primary key's columns
// (without tenant_id in the shared tier).
func (p dataPlace) primaryKeys(ctx context.Context, q pgx.Tx) (map[string][]string, error) {
	rows, err := q.Query(ctx, `SELECT c.relname, a.attname FROM pg_constraint x
		JOIN pg_class c ON c.oid = x.conrelid JOIN pg_namespace n ON n.oid = c.relnamespace
		CROSS JOIN LATERAL unnest(x.conkey) WITH ORDINALITY k(attnum, ord)
		JOIN pg_attribute a ON a.attrelid = c.oid AND a.attnum = k.attnum
		WHERE x.contype = 'p' AND n.nspname = $1 AND NOT ($2 <> '' AND a.attname = 'tenant_id')
		ORDER BY c.relname, k.ord`, p.schema, p.tenant)
	if err != nil {
		return nil, fmt.Errorf("reading primary keys: %w", err)
	}
	keys := map[string][]string{}
	var table, col string
	_, err = pgx.ForEachRow(rows, []any{&table, &col}, func() error {
		keys[table] = append(keys[table], col)
		return nil
	})
	return keys, err
}

// installCapture creates the capture on every table of the source in one
// transaction: CREATE TRIGGER waits for the table's writers in flight, so
// every write committed after it is captured.
func installCapture(ctx context.Context, conn *pgx.Conn, place dataPlace, id int64) error {
	return pgx.BeginFunc(ctx, conn, func(tx pgx.Tx) error {
		if _, err := tx.Exec(ctx, "SET LOCAL lock_timeout = '10s'; "+captureDDL); err != nil {
			return fmt.Errorf("creating the change capture: %w", err)
		}
		tables, err := place.tables(ctx, tx)
		if err != nil {
			return err
		}
		keys, err := place.primaryKeys(ctx, tx)
		if err != nil {
			return err
		}
		for _, tb := range tables {
			if len(keys[tb.Name]) == 0 {
				return fmt.Errorf("table %s has no primary key: a move catches up changes by key", tb.Name)
			}
			k, err := json.Marshal(keys[tb.Name])
			if err != nil {
				return err
			}
			args := strconv.FormatInt(id, 10) + ", " + quoteLiteral(place.tenant) + ", " + quoteLiteral(string(k))
			name := pgx.Identifier{triggerName(id)}.Sanitize()
			truncate := pgx.Identifier{triggerName(id) + "_truncate"}.Sanitize()
			if _, err := tx.Exec(ctx, "CREATE TRIGGER "+name+" AFTER INSERT OR UPDATE OR DELETE ON "+place.qualified(tb.Name)+
				" FOR EACH ROW EXECUTE FUNCTION "+captureSchema+".capture("+args+"); "+
				"CREATE TRIGGER "+truncate+" BEFORE TRUNCATE ON "+place.qualified(tb.Name)+
				" FOR EACH STATEMENT EXECUTE FUNCTION "+captureSchema+".capture("+args+")"); err != nil {
				return fmt.Errorf("capturing the changes of %s: %w", tb.Name, err)
			}
		}
		_, err = tx.Exec(ctx, "INSERT INTO "+captureSchema+".moves (id) VALUES ($1) ON CONFLICT (id) DO NOTHING", id)
		return err
	})
}

// dropCapture removes m's triggers, fence and captured changes from the
// source t, if any exist.
func (c *Catalog) dropCapture(ctx context.Context, m *moveRecord, t Tenant) error {
	conn, _, err := c.connectSource(ctx, t)
	if err != nil {
		return err
	}
	defer conn.Close(context.WithoutCancel(ctx))
	return pgx.BeginFunc(ctx, conn, func(tx pgx.Tx) error {
		var exists bool
		if err := tx.QueryRow(ctx, "SELECT to_regnamespace($1) IS NOT NULL", captureSchema).Scan(&exists); err != nil || !exists {
			return err
		}
		rows, err := tx.Query(ctx, `SELECT format('DROP TRIGGER %I ON %s', tgname, tgrelid::regclass) FROM pg_trigger
			WHERE tgname::text IN ($1::text, $1::text || '_truncate')`, triggerName(m.id))
		if err != nil {
			return err
		}
		drops, err := pgx.CollectRows(rows, pgx.RowTo[string])
		if err != nil {
			return err
		}
		drops = append(drops, "DELETE FROM "+captureSchema+".changes WHERE move = "+strconv.FormatInt(m.id, 10),
			"DELETE FROM "+captureSchema+".moves WHERE id = "+strconv.FormatInt(m.id, 10))
		_, err = tx.Exec(ctx, strings.Join(drops, "; "))
		return err
	})
}

// fence makes the source refuse the tenant's writes (on) and waits for
// the writers in flight to end, or lets it take them again (off).
func fence(ctx context.Context, conn *pgx.Conn, id int64, on bool) error {
	if _, err := conn.Exec(ctx, "UPDATE "+captureSchema+".moves SET fenced = $2 WHERE id = $1", id, on); err != nil {
		return fmt.Errorf("fencing the source: %w", err)
	}
	if !on {
		return nil
	}
	// A writer that wrote before the fence holds the lock shared until it
	// ends; one that writes after it fails in the trigger.
	err := pgx.BeginFunc(ctx, conn, func(tx pgx.Tx) error {
		_, err := tx.Exec(ctx, "SET LOCAL lock_timeout = '5s'")
		if err == nil {
			_, err = tx.Exec(ctx, "SELECT pg_advisory_xact_lock($1, $2::integer)", moveLockClass, id)
		}
		return err
	})
	if err != nil {
		return fmt.Errorf("waiting for the tenant's writers on the source: %w", err)
	}
	return nil
}
