package test

import (
	"context"
	"fmt"
	"sync"
	"testing"

	"github.com/tenantproxy/tenantproxy/proxy"
)

// TestIsolationTransactionMode: with server connections handed from
// tenant to tenant at every transaction boundary, nothing one tenant does
// in its transactions reaches the next tenant's, and every transaction
// runs in its own tenant's context.
func TestIsolationTransactionMode(t *testing.T) {
	e := newIsolationEnv(t)
	ctx := ctxT(t)
	const mode = proxy.PoolTransaction

	for _, p := range isolationPairs[:2] {
		t.Run("leftovers/"+string(p.tier), func(t *testing.T) {
			v := e.pgconnIn(t, mode, p.victim)
			defaults := queryText(t, v, "SHOW statement_timeout; SHOW work_mem; SHOW application_name")
			a := e.pgconnIn(t, mode, p.attacker)
			// Transaction-scoped settings are allowed and die with the
			// transaction; session settings are refused.
			queryText(t, a, "BEGIN; SET LOCAL statement_timeout = '4321s'; SET LOCAL work_mem = '1GB'; SELECT 1; COMMIT")
			// Session settings are the attacker's own: tracked for its
			// later transactions, never seen by the victim's (below).
			queryText(t, a, "SET statement_timeout = '4321s'; SET SESSION CHARACTERISTICS AS TRANSACTION READ ONLY")
			// So is a statement that is only a set_config (pg_dump's).
			queryText(t, a, "SELECT set_config('work_mem', '77kB', false)")
			if got := queryText(t, a, "SHOW statement_timeout; SHOW default_transaction_read_only; SHOW work_mem"); got != "4321s,on,77kB" {
				t.Errorf("the attacker's own settings are %q in its next transaction; want 4321s,on,77kB", got)
			}
			for _, sql := range []string{
				// What the proxy can neither track nor pin is refused.
				"SET seed = 0.5",
				"SELECT set_config('statement_timeout', '0', false) FROM messages",
				"SELECT set_config('statement_timeout', '0' || '', false)",
			} {
				if _, err := a.Exec(ctx, sql).ReadAll(); sqlstateOf(err) != "42501" {
					t.Errorf("%s in transaction mode: %v; want 42501", sql, err)
				}
				queryText(t, a, "ROLLBACK")
			}
			// Other session state pins the attacker to its server
			// connection (or the tier's rules refuse it): the victim's
			// transactions never see it.
			for _, sql := range []string{
				"PREPARE leak AS SELECT body FROM messages",
				"BEGIN; DECLARE held CURSOR WITH HOLD FOR SELECT body FROM messages; COMMIT",
				"SELECT pg_advisory_lock(42)",
				"LISTEN events",
			} {
				if _, err := a.Exec(ctx, sql).ReadAll(); err != nil && sqlstateOf(err) != "42501" {
					t.Errorf("%s in transaction mode: %v; want success (pinned) or the rules' 42501", sql, err)
				}
				queryText(t, a, "ROLLBACK")
			}
			const leftovers = `SELECT (SELECT count(*) FROM pg_prepared_statements WHERE from_sql) || '|' ||
				(SELECT count(*) FROM pg_cursors) || '|' || (SELECT count(*) FROM pg_listening_channels())`
			for range 5 {
				if got := queryText(t, v, leftovers); got != "0|0|0" {
					t.Errorf("victim's session has SQL prepared statements, cursors, listens %q; want none", got)
				}
				if got := queryText(t, v, "SHOW statement_timeout; SHOW work_mem; SHOW application_name"); got != defaults {
					t.Errorf("victim's settings %q after the attacker's transactions; want %q", got, defaults)
				}
				if got := queryText(t, v, "SHOW default_transaction_read_only"); got != "off" {
					t.Errorf("victim's default_transaction_read_only is %q; want off", got)
				}
			}
			e.assertVictimUntouched(t, p.victim)
		})
	}

	t.Run("interleaved transactions of every tenant see only their own rows", func(t *testing.T) {
		subs := []string{"acme", "globex", "initech", "wayne", "umbrella", "stark"}
		var wg sync.WaitGroup
		errs := make(chan error, len(subs)*4)
		for _, sub := range subs {
			for range 4 {
				conn := e.pgconnIn(t, mode, sub)
				wg.Add(1)
				go func() {
					defer wg.Done()
					for i := range 100 {
						sql := "SELECT string_agg(body, ',') FROM messages"
						if i%2 == 1 {
							sql = "BEGIN; SELECT count(*) FROM users; SELECT string_agg(body, ',') FROM messages; COMMIT"
						}
						res, err := conn.Exec(context.Background(), sql).ReadAll()
						if err != nil {
							errs <- fmt.Errorf("%s: %v", sub, err)
							return
						}
						if got := res[len(res)-1-i%2].Rows[0][0]; string(got) != "secret-of-"+sub {
							errs <- fmt.Errorf("%s saw %q in transaction %d", sub, got, i)
							return
						}
					}
				}()
			}
		}
		wg.Wait()
		close(errs)
		for err := range errs {
			t.Error(err)
		}
	})
}
