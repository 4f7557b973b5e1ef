// Package test holds tenantproxy's end-to-end suites: the real proxy on
// 127.0.0.1:0 in front of real PostgreSQL clusters from internal/pgtest,
// driven by real clients (pgx, psql, pgbench).
package test

import (
	"testing"

	"github.com/tenantproxy/tenantproxy/internal/pgtest"
)

func TestMain(m *testing.M) { pgtest.RunMain(m) }
