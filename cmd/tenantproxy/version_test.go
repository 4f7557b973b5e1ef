package main

import (
	"strings"
	"testing"
)

// TestVersionPrefersTheReleaseStamp: scripts/build-release.sh sets version
// and commit with -ldflags -X, and those, not the toolchain's guess, are
// what `version` prints.
func TestVersionPrefersTheReleaseStamp(t *testing.T) {
	defer func(v, c string) { version, commit = v, c }(version, commit)
	version, commit = "v1.2.3", "0123456789ab"
	out := mustCLI(t, "version")
	if !strings.HasPrefix(out, "tenantproxy v1.2.3 0123456789ab ") {
		t.Fatalf("version = %q; want the stamped version and commit", out)
	}
}
