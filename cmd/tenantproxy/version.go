package main

import (
	"fmt"
	"runtime/debug"

	"github.com/spf13/cobra"
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

// versionString reads the module version and VCS stamp that the Go
// toolchain embeds, so no build flag has to be remembered.
func versionString() string {
	info, ok := debug.ReadBuildInfo()
	if !ok {
		return "tenantproxy (unknown build)"
	}
	version, revision, modified := info.Main.Version, "", ""
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
	return fmt.Sprintf("tenantproxy %s %s%s %s", version, revision, modified, info.GoVersion)
}
