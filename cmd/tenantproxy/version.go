package main

import (
	"fmt"
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

// versionString prefers the release stamp and otherwise reads the module
// version and VCS stamp that the Go toolchain embeds, so a developer's
// build still says where it came from.
func versionString() string {
	info, ok := debug.ReadBuildInfo()
	if !ok {
		return "tenantproxy (unknown build)"
	}
	v, revision, modified := info.Main.Version, "", ""
	for _, s := range info.Settings {
		switch s.Key {
		case "vcs.revision":
			revision = s.Value
		case "vcs.modified":
			if s.Value == "true" {
				modified = "+dirty"
			}
		}
	}
	if len(revision) > 12 {
		revision = revision[:12]
	}
	if version != "" {
		v = version
	}
	if commit != "" {
		revision, modified = commit, ""
	}
	return fmt.Sprintf("tenantproxy %s %s%s %s", v, revision, modified, info.GoVersion)
}
