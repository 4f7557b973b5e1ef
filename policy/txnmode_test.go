package policy

import (
	"strings"
	"testing"
)

func TestTxnModeCheckRefusesSessionStateAndPassesTransactionScopedForms(t *testing.T) {
	refused := []string{
		"CREATE TEMP TABLE t (a int)",
		"CREATE TEMPORARY TABLE t (a int) ON COMMIT DELETE ROWS",
		"create table pg_temp.t (a int)",
		"SELECT 1 INTO TEMP t",
		"CREATE TEMP TABLE t AS SELECT 1",
		"CREATE TEMP VIEW v AS SELECT 1",
		"CREATE TEMP SEQUENCE s",
		"DECLARE c CURSOR WITH HOLD FOR SELECT 1",
		"SET statement_timeout = 0",
		"set session work_mem = '1MB'",
		"RESET work_mem",
		"BEGIN; SET lock_timeout = 5; COMMIT",
		"/* hi */ SET work_mem = '1MB'",
		"SELECT set_config('work_mem', '1MB', false)",
		"LISTEN ch",
		"SELECT pg_advisory_lock(1)",
		"SELECT pg_try_advisory_lock_shared(1, 2)",
		"PREPARE p AS SELECT 1",
		"DEALLOCATE ALL",
		"EXPLAIN SELECT 1 INTO TEMP t",
		`SELECT U&"pg_advisory\005flock"(1)`,
	}
	allowed := []string{
		"SELECT 1",
		"UPDATE users SET display_name = 'x' WHERE id = 1",
		"SET LOCAL statement_timeout = 0",
		"SET TRANSACTION ISOLATION LEVEL SERIALIZABLE",
		"CREATE TEMP TABLE t (a int) ON COMMIT DROP",
		"DECLARE c CURSOR FOR SELECT 1",
		"DECLARE c NO SCROLL CURSOR WITHOUT HOLD FOR SELECT 1",
		"SELECT pg_advisory_xact_lock(1)",
		"SELECT pg_advisory_unlock_all()",
		"UNLISTEN *",
		"EXECUTE p",
		"SELECT 'SET work_mem = 1'",
	}
	c := NewTxnModeCheck()
	for _, sql := range refused {
		if r := c.Check([]byte(sql)); r == "" || !strings.Contains(r, "session mode") {
			t.Errorf("%q: got %q; want a refusal that suggests session mode", sql, r)
		}
	}
	for _, sql := range allowed {
		if r := c.Check([]byte(sql)); r != "" {
			t.Errorf("%q: refused (%s); want it allowed", sql, r)
		}
	}
}

// BenchmarkTxnModeCheck shows that DML costs a scan and no allocation:
// ~550 ns/op, 0 B/op, 0 allocs/op on the 2-core development VM.
func BenchmarkTxnModeCheck(b *testing.B) {
	c := NewTxnModeCheck()
	sql := []byte("UPDATE pgbench_accounts SET abalance = abalance + 4242 WHERE aid = 123456")
	b.ReportAllocs()
	for b.Loop() {
		if c.Check(sql) != "" {
			b.Fatal("refused")
		}
	}
}
