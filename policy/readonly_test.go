package policy

import "testing"

func TestReadOnlyFacts(t *testing.T) {
	p := New()
	for _, tc := range []struct {
		sql    string
		write  bool
		escape bool
		frees  bool
		// deletes: only deletes, but not to run read-write (implied by
		// frees).
		deletes bool
	}{
		{sql: "SELECT * FROM t"},
		{sql: "SELECT f()"},
		{sql: "BEGIN"},
		{sql: "BEGIN READ ONLY"},
		{sql: "BEGIN; SELECT 1; COMMIT"},
		{sql: "SET default_transaction_read_only = on"},
		{sql: "SET statement_timeout = 5"},
		{sql: "SET TRANSACTION ISOLATION LEVEL SERIALIZABLE"},
		{sql: "INSERT INTO t VALUES (1)", write: true},
		{sql: "UPDATE t SET a = 1", write: true},
		{sql: "COPY t FROM STDIN", write: true},
		{sql: "CREATE TABLE u (a int)", write: true},
		{sql: "SELECT 1 INTO u", write: true},
		{sql: "SELECT 1; INSERT INTO t VALUES (1)", write: true},
		{sql: "SET transaction_read_only = off", escape: true},
		{sql: "SET LOCAL transaction_read_only TO false", escape: true},
		{sql: "SET default_transaction_read_only = 0", escape: true},
		{sql: "RESET default_transaction_read_only", escape: true},
		{sql: "SELECT set_config('default_transaction_read_only', 'off', false)", escape: true},
		{sql: "SET SESSION CHARACTERISTICS AS TRANSACTION READ WRITE", escape: true},
		{sql: "SET TRANSACTION READ WRITE", escape: true},
		{sql: "BEGIN READ WRITE", escape: true},
		{sql: "START TRANSACTION ISOLATION LEVEL SERIALIZABLE, READ WRITE", escape: true},
		{sql: "CALL p()", escape: true},
		{sql: "DO $$ BEGIN END $$", escape: true},
		{sql: "SELECT 1; COMMIT; SELECT f()", escape: true},
		{sql: "DELETE FROM t WHERE a < 10", frees: true},
		{sql: "DELETE FROM t WHERE a = $1 RETURNING a", frees: true},
		{sql: "DELETE FROM t; TRUNCATE u; DROP TABLE v", frees: true},
		{sql: "DELETE FROM t WHERE f(a)", deletes: true},
		{sql: "DELETE FROM t WHERE created_at < now()", deletes: true},
		{sql: "DELETE FROM t WHERE a IN (SELECT f())", deletes: true},
		{sql: "WITH x AS (INSERT INTO u VALUES (1)) DELETE FROM t", deletes: true},
		{sql: "DELETE FROM t; SELECT 1"},
		{sql: "BEGIN; DELETE FROM t; COMMIT"},
	} {
		got := p.ReadOnly([]byte(tc.sql))
		deletes := tc.deletes || tc.frees
		if (got.Write != "") != tc.write || (got.Escape != "") != tc.escape || got.Frees != tc.frees || got.Deletes != deletes {
			t.Errorf("%q: ReadOnly = %+v; want write %v, escape %v, frees %v, deletes %v", tc.sql, got, tc.write, tc.escape, tc.frees, deletes)
		}
	}
}

func TestFunctionChangingReadOnlyIsRefused(t *testing.T) {
	p := New()
	for _, sql := range []string{
		"CREATE FUNCTION f() RETURNS void LANGUAGE sql AS 'SET default_transaction_read_only = off'",
		"CREATE FUNCTION f() RETURNS text LANGUAGE sql AS $$SELECT set_config('default_transaction_read_only', 'off', false)$$",
	} {
		if r := p.Check([]byte(sql), Rules{DDL: true, Procedural: true}, SessionMode); r == "" {
			t.Errorf("%q was allowed; want it refused", sql)
		}
	}
}

func TestPreparedEscape(t *testing.T) {
	p := New()
	for _, tc := range []struct {
		sql     string
		refused bool
	}{
		{"SELECT * FROM t WHERE a = $1", false},
		{"SELECT 'read'", false},
		{"SET default_transaction_read_only = on", false},
		{"BEGIN READ ONLY", false},
		{"CALL p()", false},
		{"SET transaction_read_only = off", true},
		{"SET default_transaction_read_only TO false", true},
		{"RESET default_transaction_read_only", true},
		{"SET SESSION CHARACTERISTICS AS TRANSACTION READ WRITE", true},
		{"BEGIN READ WRITE", true},
		{"SELECT set_config('default_transaction_read_only', 'off', false)", true},
		{`SELECT set_config(E'default_transaction_\x72ead_only', 'off', false)`, true},
		{`SET U&"transaction_\0072ead_only" = off`, true},
	} {
		if got := p.PreparedEscape([]byte(tc.sql)); (got != "") != tc.refused {
			t.Errorf("PreparedEscape(%q) = %q; want refused %v", tc.sql, got, tc.refused)
		}
	}
}
