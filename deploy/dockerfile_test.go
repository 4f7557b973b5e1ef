package deploy

import (
	"os"
	"regexp"
	"strconv"
	"strings"
	"testing"
)

// TestDockerfileBuildsWithTheReleaseScriptAsNonRoot: no docker here to
// build the image, so the test reads the Dockerfile for what the release
// needs: the binary comes from scripts/build-release.sh (static, stamped;
// CGO_ENABLED=0 cannot build the SQL parser) and the final stage runs as a
// numeric non-root user, which Kubernetes' runAsNonRoot can verify.
func TestDockerfileBuildsWithTheReleaseScriptAsNonRoot(t *testing.T) {
	raw, err := os.ReadFile("Dockerfile")
	if err != nil {
		t.Fatal(err)
	}
	text := string(raw)
	if !regexp.MustCompile(`(?m)^RUN .*scripts/build-release\.sh `).MatchString(text) {
		t.Error("Dockerfile does not build with scripts/build-release.sh")
	}
	if strings.Contains(text, "CGO_ENABLED=0") {
		t.Error("Dockerfile sets CGO_ENABLED=0; the SQL parser needs cgo")
	}
	stages := strings.Split(text, "\nFROM ")
	users := regexp.MustCompile(`(?m)^USER (\d+)(?::\d+)?\s*$`).FindAllStringSubmatch(stages[len(stages)-1], -1)
	if len(users) == 0 {
		t.Fatal("the final stage sets no numeric USER")
	}
	if uid, _ := strconv.Atoi(users[len(users)-1][1]); uid == 0 {
		t.Error("the final stage runs as root")
	}
}
