package test

import (
	"testing"

	"github.com/tenantproxy/tenantproxy/internal/pgtest"
)

// TestMain stops the shared cluster, which pgtest starts only when a test
// first asks for it.
func TestMain(m *testing.M) { pgtest.RunMain(m) }
