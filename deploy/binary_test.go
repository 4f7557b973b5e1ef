package deploy

import (
	"os/exec"
	"path/filepath"
	"testing"

	"github.com/tenantproxy/tenantproxy/internal/pgtest"
)

func TestMain(m *testing.M) { pgtest.RunMain(m) }

// repoRoot is the module root as seen from this package's directory, where
// go test runs the test binary.
const repoRoot = ".."

// binary builds cmd/tenantproxy into t's temporary directory and returns
// its path: the tests ask the real command line and the real metrics
// endpoint, not a copy of either. The build cache makes every build after
// the first a link.
func binary(t *testing.T) string {
	t.Helper()
	path := filepath.Join(t.TempDir(), "tenantproxy")
	cmd := exec.Command("go", "build", "-o", path, "./cmd/tenantproxy")
	cmd.Dir = repoRoot
	if out, err := cmd.CombinedOutput(); err != nil {
		t.Fatalf("go build ./cmd/tenantproxy: %v\n%s", err, out)
	}
	return path
}
