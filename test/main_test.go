package test

import (
	"os"
	"testing"

	"github.com/tenantproxy/tenantproxy/internal/pgtest"
)

// TestMain stops the shared cluster, which pgtest starts only when a test
// first asks for it. A test binary started as a flood helper (see
// TestIdleStrangersDoNotLockOutLogins) runs no tests and starts no
// cluster: it only holds idle connections.
func TestMain(m *testing.M) {
	if job := os.Getenv(floodHelperEnv); job != "" {
		os.Exit(runFloodHelper(job))
	}
	pgtest.RunMain(m)
}
