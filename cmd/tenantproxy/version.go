package main

import (
	"fmt"
	"runtime"
	"runtime/debug"

	"github.com/spf13/cobra"
)

// version and commit are stamped by scripts/build-release.sh through
// -ldflags -X; a plain go build leaves them empty and versionString falls
// back to what the toolchain embeds.
var (
	version string
	commit  string
)

func newVersionCommand() *cobra.Command {
	return &cobra.Command{
		Use:   "version",
		Short: "Print the version and the commit it was built from",
		Args:  cobra.NoArgs,
		Run: func(cmd *cobra.Command, _ []string) {
			fmt.Fprintln(cmd.OutOrStdout(), versionString())
		},
	}
}

// build is what identifies the running binary.
type build struct {
	// commit carries "+dirty" for a build from a modified tree.
	version, commit, goVersion string
}

// readBuild prefers the release stamp and otherwise reads the module
// version and VCS stamp that the Go toolchain embeds, so a developer's
// build still says where it came from. ok is false when the binary
// embeds no build information (then only the stamp and the runtime's Go
// version are known).
func readBuild() (b build, ok bool) {
	info, ok := debug.ReadBuildInfo()
	if !ok {
		return build{version: version, commit: commit, goVersion: runtime.Version()}, false
	}
	b = build{version: info.Main.Version, goVersion: info.GoVersion}
	modified := ""
	for _, s := range info.Settings {
		switch s.Key {
		case "vcs.revision":
			b.commit = s.Value
		case "vcs.modified":
			if s.Value == "true" {
				modified = "+dirty"
			}
		}
	}
	if len(b.commit) > 12 {
		b.commit = b.commit[:12]
	}
	b.commit += modified
	if version != "" {
		b.version = version
	}
	if commit != "" {
		b.commit = commit
	}
	return b, true
}

func versionString() string {
	b, ok := readBuild()
	if !ok {
		return "tenantproxy (unknown build)"
	}
	return fmt.Sprintf("tenantproxy %s %s %s", b.version, b.commit, b.goVersion)
}
