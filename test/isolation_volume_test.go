package test

import (
	"strconv"
	"testing"

	"github.com/tenantproxy/tenantproxy/proxy"
)

// TestIsolationIDsCountNoOtherTenant: in every tier, through both pool
// modes, the ids a tenant gets go on from its own last one whatever its
// neighbour inserted meanwhile. In the shared tier the ids came from one
// sequence for every tenant, so their gaps counted the neighbour's
// inserts (issue 12 item 4).
func TestIsolationIDsCountNoOtherTenant(t *testing.T) {
	e := newIsolationEnv(t)
	ctx := ctxT(t)
	for _, p := range isolationPairs {
		for _, mode := range []string{proxy.PoolSession, proxy.PoolTransaction} {
			t.Run(string(p.tier)+"/"+mode, func(t *testing.T) {
				own := e.pgconnIn(t, mode, p.attacker)
				other := e.pgconnIn(t, mode, p.victim)
				insert := func(sql string) int {
					t.Helper()
					res, err := own.Exec(ctx, sql).ReadAll()
					if err != nil || len(res) != 1 || len(res[0].Rows) != 1 {
						t.Fatalf("%s: %v", sql, err)
					}
					id, err := strconv.Atoi(string(res[0].Rows[0][0]))
					if err != nil {
						t.Fatal(err)
					}
					return id
				}
				const add = "INSERT INTO users (username) VALUES (gen_random_uuid()::text) RETURNING id"
				before := insert(add)
				for range 5 {
					if _, err := other.Exec(ctx, add).ReadAll(); err != nil {
						t.Fatal(err)
					}
				}
				if after := insert(add); after != before+1 {
					t.Errorf("ids %d then %d around 5 inserts of %s; want consecutive", before, after, p.victim)
				}
			})
		}
	}
}
