package main

import (
	"fmt"
	"os"
	"strings"

	"github.com/spf13/cobra"
	"github.com/spf13/pflag"
	"go.yaml.in/yaml/v3"
)

// envPrefix starts the environment variable of every flag: --catalog-dsn is
// TENANTPROXY_CATALOG_DSN.
const envPrefix = "TENANTPROXY_"

// envName is the environment variable that sets flag name.
func envName(name string) string {
	return envPrefix + strings.ToUpper(strings.ReplaceAll(name, "-", "_"))
}

// applyConfig fills every flag of cmd that was not given on the command
// line, first from its TENANTPROXY_* variable, then from the YAML file
// named by --config (a flat map of flag names to values). The command line
// wins over the environment, which wins over the file, which wins over the
// flag's default.
func applyConfig(cmd *cobra.Command, configPath string, lookupEnv func(string) (string, bool)) error {
	file := map[string]any{}
	if configPath != "" {
		raw, err := os.ReadFile(configPath)
		if err != nil {
			return fmt.Errorf("read config: %w", err)
		}
		if err := yaml.Unmarshal(raw, &file); err != nil {
			return fmt.Errorf("parse config %s: %w", configPath, err)
		}
	}
	var firstErr error
	cmd.Flags().VisitAll(func(f *pflag.Flag) {
		if f.Changed || firstErr != nil {
			return
		}
		if v, ok := lookupEnv(envName(f.Name)); ok {
			if err := f.Value.Set(v); err != nil {
				firstErr = fmt.Errorf("%s: %w", envName(f.Name), err)
			}
			return
		}
		if v, ok := file[f.Name]; ok {
			if err := setFromYAML(f, v); err != nil {
				firstErr = fmt.Errorf("config %s: %s: %w", configPath, f.Name, err)
			}
		}
	})
	if firstErr != nil {
		return firstErr
	}
	return checkUnknownKeys(cmd.Root(), file, configPath)
}

func setFromYAML(f *pflag.Flag, v any) error {
	if list, ok := v.([]any); ok {
		parts := make([]string, len(list))
		for i, item := range list {
			parts[i] = fmt.Sprint(item)
		}
		return f.Value.Set(strings.Join(parts, ","))
	}
	return f.Value.Set(fmt.Sprint(v))
}

// checkUnknownKeys rejects keys that no command of the tree knows, so a typo
// in a config file is an error instead of a silently ignored setting. One
// file serves every command, so a key only has to be known somewhere.
func checkUnknownKeys(root *cobra.Command, file map[string]any, path string) error {
	if len(file) == 0 {
		return nil
	}
	known := map[string]bool{}
	var walk func(*cobra.Command)
	walk = func(c *cobra.Command) {
		c.Flags().VisitAll(func(f *pflag.Flag) { known[f.Name] = true })
		c.PersistentFlags().VisitAll(func(f *pflag.Flag) { known[f.Name] = true })
		for _, sub := range c.Commands() {
			walk(sub)
		}
	}
	walk(root)
	for key := range file {
		if !known[key] {
			return fmt.Errorf("config %s: unknown setting %q", path, key)
		}
	}
	return nil
}
