package policy

import (
	"slices"
	"strings"
	"testing"

	"github.com/tenantproxy/tenantproxy/catalog"
)

// everything allows every class, so that what transaction mode refuses is
// not refused by the rules first.
var everything = Rules{DDL: true, Procedural: true, DatabaseWide: true, SharedTables: true, Explain: true}

// Transaction mode's verdicts in txnModeCases.
const (
	allowed = iota
	refused // a reason that suggests session mode
	pins    // allowed, pinning the client to its server connection
)

// txnModeCases are transaction mode's verdicts, whether the text
// deallocates, and how many times checking each text, in both modes and
// several times, parses it: once at most, none when the lexical pass
// decides.
var txnModeCases = []struct {
	sql     string
	verdict int
	dealloc bool
	parses  uint64
}{
	{"CREATE TEMP TABLE t (a int)", pins, false, 1},
	{"CREATE TEMPORARY TABLE t (a int) ON COMMIT DELETE ROWS", pins, false, 1},
	{"create table pg_temp.t (a int)", pins, false, 1},
	{"SELECT * FROM pg_temp.t", pins, false, 1},
	{"SELECT 1 INTO TEMP t", pins, false, 1},
	{"CREATE TEMP TABLE t AS SELECT 1", pins, false, 1},
	{"CREATE TEMP VIEW v AS SELECT 1", pins, false, 1},
	{"CREATE TEMP SEQUENCE s", pins, false, 1},
	{"DECLARE c CURSOR WITH HOLD FOR SELECT 1", pins, false, 1},
	{"SET statement_timeout = 0", allowed, false, 1},
	{"set session work_mem = '1MB'", allowed, false, 1},
	{"RESET work_mem", allowed, false, 1},
	{"BEGIN; SET lock_timeout = 5; COMMIT", allowed, false, 1},
	{"RESET SESSION", allowed, false, 1},
	{"reset local; SELECT 1", allowed, false, 1},
	{"/* hi */ SET work_mem = '1MB'", allowed, false, 1},
	{"SELECT set_config('work_mem', '1MB', false)", allowed, false, 1},
	{"SELECT set_config('work_mem', current_user, false)", refused, false, 1},
	{"SELECT set_config('work_mem', '1MB', true), 1", allowed, false, 1},
	{"SELECT set_config('work_mem', '1MB', false), 1", refused, false, 1},
	{"SELECT set_config('work_mem', '1MB', false) FROM users", refused, false, 1},
	{"SELECT set_config('work_mem', current_setting('work_mem'), false)", refused, false, 1},
	{"SELECT set_config('seed', '0.5', false)", refused, false, 1},
	{"SELECT set_config('work_mem', '1MB', $1)", refused, false, 1},
	{"SET SESSION CHARACTERISTICS AS TRANSACTION ISOLATION LEVEL SERIALIZABLE, READ ONLY", allowed, false, 1},
	{"SET seed = 0.5", refused, false, 1},
	{"SET work_mem FROM CURRENT", refused, false, 1},
	{"LISTEN ch", pins, false, 1},
	{"SELECT pg_advisory_lock(1)", pins, false, 1},
	{"SELECT pg_terminate_backend(pg_backend_pid())", allowed, false, 1},
	{"SELECT pg_terminate_backend(pg_backend_pid()), 1", refused, false, 1},
	{"SELECT 1; SELECT pg_terminate_backend(pg_backend_pid())", refused, false, 1},
	{"SELECT pg_try_advisory_lock_shared(1, 2)", pins, false, 1},
	{"PREPARE p AS SELECT 1", pins, false, 1},
	{"DEALLOCATE ALL", allowed, true, 0},
	{"SELECT 1; deallocate p", allowed, true, 0},
	{"EXPLAIN SELECT 1 INTO TEMP t", pins, false, 1},
	{`SELECT U&"pg_advisory\005flock"(1)`, pins, false, 1},
	{"INSERT INTO t SELECT 1 INTO TEMP x", pins, false, 1},
	{"PREPARE p AS SELECT 1; DEALLOCATE p", pins, true, 1},

	{"CREATE FUNCTION f() RETURNS int LANGUAGE sql SET work_mem = '1MB' AS 'select 1'", allowed, false, 1},
	{"ALTER FUNCTION f() SET work_mem = '1MB'", allowed, false, 1},
	{"ALTER FUNCTION f() RESET ALL", allowed, false, 1},
	{"SELECT 1", allowed, false, 0},
	{"UPDATE users SET display_name = 'x' WHERE id = 1", allowed, false, 0},
	{"INSERT INTO temp (hold) VALUES ('prepare listen deallocate')", allowed, false, 0},
	{"SET LOCAL statement_timeout = 0", allowed, false, 1},
	{"SET TRANSACTION ISOLATION LEVEL SERIALIZABLE", allowed, false, 1},
	{"CREATE TEMP TABLE t (a int) ON COMMIT DROP", allowed, false, 1},
	{"DECLARE c CURSOR FOR SELECT 1", allowed, false, 1},
	{"DECLARE c NO SCROLL CURSOR WITHOUT HOLD FOR SELECT 1", allowed, false, 1},
	{"SELECT pg_advisory_xact_lock(1)", allowed, false, 1},
	{"SELECT pg_advisory_unlock_all()", allowed, false, 1},
	{"UNLISTEN *", allowed, false, 1},
	{"EXECUTE p", allowed, false, 0},
	{"SELECT 'SET work_mem = 1'", allowed, false, 0},
	{"SELECT t.oid, t.typname FROM pg_catalog.pg_type t WHERE t.typname = $1", allowed, false, 1},
}

// txnVerdict is transaction mode's verdict alone, the way CheckTx reaches
// it: from the lexical pass when that decides, else from the facts.
func txnVerdict(sql string) TxVerdict {
	if v, _, deallocates := fast([]byte(sql)); v == fastSafe {
		return TxVerdict{Deallocates: deallocates}
	}
	f := analyze(sql)
	return TxVerdict{Refusal: f.txn, Pin: f.pin, Deallocates: f.dealloc}
}

func TestTxnModePinsSessionStateRefusesSessionChangesAndPassesTransactionScopedForms(t *testing.T) {
	for _, tt := range txnModeCases {
		v := txnVerdict(tt.sql)
		switch {
		case tt.verdict == refused && (v.Refusal == "" || !strings.Contains(v.Refusal, "session mode")):
			t.Errorf("%q: got refusal %q; want one that suggests session mode", tt.sql, v.Refusal)
		case tt.verdict != refused && v.Refusal != "":
			t.Errorf("%q: refused (%s); want it allowed", tt.sql, v.Refusal)
		case tt.verdict == pins && v.Pin == "":
			t.Errorf("%q: does not pin; want it to", tt.sql)
		case tt.verdict == allowed && v.Pin != "":
			t.Errorf("%q: pins (%s); want it not to", tt.sql, v.Pin)
		}
		if v.Deallocates != tt.dealloc {
			t.Errorf("%q: deallocates %v; want %v", tt.sql, v.Deallocates, tt.dealloc)
		}
	}
}

// TestOneParsePerStatementForBothChecks: checking a text in transaction
// mode, which asks the policy's rules and then transaction mode, and in
// session mode too, under several rules, parses it once, or not at all
// when the lexical pass decides. Before the two checks shared their facts,
// transaction mode parsed such text twice.
func TestOneParsePerStatementForBothChecks(t *testing.T) {
	p := New()
	for _, tt := range txnModeCases {
		before := p.parses.Load()
		b := []byte(tt.sql)
		for range 3 {
			for _, r := range []Rules{{}, DefaultRules(catalog.TierSchema), everything} {
				p.Check(b, r, TransactionMode)
				p.Check(b, r, SessionMode)
			}
		}
		if got := p.parses.Load() - before; got != tt.parses {
			t.Errorf("%q parsed %d times; want %d", tt.sql, got, tt.parses)
		}
	}
}

// TestTransactionModeAsksTheRulesFirst: where the policy's rules refuse a
// statement, transaction mode gives their reason, not its session-mode
// hint, which would be false; where they allow it, transaction mode's own.
func TestTransactionModeAsksTheRulesFirst(t *testing.T) {
	p := New()
	for _, tt := range []struct {
		sql      string
		rules    Rules
		session  string // reason in session mode, "" for allowed
		txn      string // reason in transaction mode, "" for allowed
		txnHints bool   // the transaction-mode reason suggests session mode
	}{
		{"SET ROLE x", everything, reasonRole, reasonRole, false},
		{"RESET ALL", everything, reasonResetAll, reasonResetAll, false},
		{"SELECT set_config('role', 'x', false)", everything,
			"set_config('role', …): " + reasonRole,
			"set_config('role', …): " + reasonRole, false},
		{"SELECT set_config('work_mem', '1MB', false), 1", everything, "",
			"set_config() can change the session outside the transaction in transaction pooling mode" + sessionModeHint, true},
		{"SELECT pg_catalog.pg_advisory_lock(1)", Rules{},
			"pg_advisory_lock" + reasonQualified, "pg_advisory_lock" + reasonQualified, false},
		{"LISTEN ch", Rules{}, "", "", false},
		{"LISTEN ch", everything, "", "", false},
		{"CREATE TEMP TABLE t (a int)", Rules{},
			"Create is refused: schema changes are not allowed for this tenant",
			"Create is refused: schema changes are not allowed for this tenant", false},
		{"SET statement_timeout = 0", Rules{}, "", "", false},
		{"SET search_path = a", Rules{}, "", "", false},
		{"DEALLOCATE p", Rules{}, "", "", false},
		{"SELECT 1", Rules{}, "", "", false},
	} {
		b := []byte(tt.sql)
		if got := p.Check(b, tt.rules, SessionMode); got != tt.session {
			t.Errorf("%q in session mode: %q; want %q", tt.sql, got, tt.session)
		}
		got := p.Check(b, tt.rules, TransactionMode)
		if got != tt.txn {
			t.Errorf("%q in transaction mode: %q; want %q", tt.sql, got, tt.txn)
		}
		if strings.Contains(got, "session mode") != tt.txnHints {
			t.Errorf("%q in transaction mode: %q; want a session-mode hint: %v", tt.sql, got, tt.txnHints)
		}
	}
}

// TestSessionSettingsAreTrackedAsDeparsedStatements: the session-level
// SETs and RESETs of a text come out one per statement, named as
// PostgreSQL names the setting, in text that stays one statement when
// joined to others (the client's comment cannot swallow what follows).
func TestSessionSettingsAreTrackedAsDeparsedStatements(t *testing.T) {
	p := New()
	for _, tt := range []struct {
		sql  string
		want []SessionSet
	}{
		{"SET client_min_messages TO 'warning'; SET TIME ZONE 'UTC'", []SessionSet{
			{"client_min_messages", "SET client_min_messages TO warning"},
			{"timezone", `SET timezone TO "UTC"`}}},
		{"SET TIME ZONE INTERVAL '+00:00' HOUR TO MINUTE; SELECT 1", []SessionSet{
			{"timezone", "SET TIME ZONE interval '+00:00' hour to minute"}}},
		{"reset statement_timeout -- done", []SessionSet{{"statement_timeout", "RESET statement_timeout"}}},
		{"SET LOCAL work_mem = '1MB'", nil},
		{"SET transaction_read_only = on; SET TRANSACTION READ ONLY", nil},
		// Only the per-transaction names are left untracked.
		{"SET transactions.x = '1'", []SessionSet{{"transactions.x", `SET "transactions.x" TO "1"`}}},
		{"SELECT 1", nil},
		// pg_dump's: the statement itself, replayed.
		{"SELECT pg_catalog.set_config('search_path', '', false);", []SessionSet{
			{"search_path", "SELECT pg_catalog.set_config('search_path', '', false)"}}},
		{"SELECT set_config(name, 'view, foreign-table', false) FROM pg_settings WHERE name = 'restrict_nonsystem_relation_kind'", []SessionSet{
			{"restrict_nonsystem_relation_kind", "SELECT set_config(name, 'view, foreign-table', false) FROM pg_settings WHERE name = 'restrict_nonsystem_relation_kind'"}}},
		// Django's time zone, the statement itself; as is_local it
		// ends with the transaction, as does a per-transaction name.
		{"SELECT set_config('TimeZone', 'UTC', false)", []SessionSet{{"timezone", "SELECT set_config('TimeZone', 'UTC', false)"}}},
		{"select SET_CONFIG('a.b', 'x''; SELECT 1', false)", []SessionSet{{"a.b", "SELECT set_config('a.b', 'x''; SELECT 1', false)"}}},
		{"SELECT set_config('TimeZone', 'UTC', true)", nil},
		{"SELECT set_config('transaction_isolation', 'serializable', false)", nil},
		// Each characteristic is a setting of its own, so that a later
		// one does not replace the others.
		{"SET SESSION CHARACTERISTICS AS TRANSACTION ISOLATION LEVEL REPEATABLE READ, READ ONLY", []SessionSet{
			{"default_transaction_isolation", `SET default_transaction_isolation TO "repeatable read"`},
			{"default_transaction_read_only", "SET default_transaction_read_only TO 1"}}},
		{"SET SESSION CHARACTERISTICS AS TRANSACTION NOT DEFERRABLE", []SessionSet{
			{"default_transaction_deferrable", "SET default_transaction_deferrable TO 0"}}},
	} {
		v := p.CheckTx([]byte(tt.sql), everything)
		if v.Refusal != "" {
			t.Errorf("%q refused: %s", tt.sql, v.Refusal)
		}
		if got := v.Sets; !slices.Equal(got, tt.want) {
			t.Errorf("%q: tracked %q; want %q", tt.sql, got, tt.want)
		}
	}
	if v := p.CheckTx([]byte("SET ROLE x"), everything); v.Refusal != reasonRole || v.Sets != nil {
		t.Errorf("SET ROLE: %q, %q; want the rules' refusal and nothing tracked", v.Refusal, v.Sets)
	}
}

// TestSelfTerminationIsAnsweredOnlyAsAStatementOfItsOwn: CheckTx marks
// SELECT pg_terminate_backend(pg_backend_pid()) alone for the proxy to
// answer; any other text with the call stays refused, unmarked.
func TestSelfTerminationIsAnsweredOnlyAsAStatementOfItsOwn(t *testing.T) {
	p := New()
	for _, tt := range []struct {
		sql        string
		terminates bool
	}{
		{"SELECT pg_terminate_backend(pg_backend_pid())", true},
		{"select PG_TERMINATE_BACKEND(pg_backend_pid()) -- bye", true},
		{"SELECT pg_terminate_backend(pg_backend_pid()) WHERE false", false},
		{"SELECT 1; SELECT pg_terminate_backend(pg_backend_pid())", false},
		{"SELECT pg_terminate_backend(pg_backend_pid()) AS x, 2", false},
	} {
		v := p.CheckTx([]byte(tt.sql), Rules{OwnBackend: true})
		if v.Terminates != tt.terminates || (v.Refusal == "") != tt.terminates {
			t.Errorf("%q: terminates %v, refusal %q; want terminates %v and refused %v", tt.sql, v.Terminates, v.Refusal, tt.terminates, !tt.terminates)
		}
	}
}
