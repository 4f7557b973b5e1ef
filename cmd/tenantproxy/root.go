package main

import (
	"fmt"
	"os"

	"github.com/spf13/cobra"
	"go.uber.org/zap"
	"go.uber.org/zap/zapcore"
)

// globals are the settings every command has.
type globals struct {
	configPath string
	logLevel   string
	logger     *zap.Logger
}

func newRootCommand() *cobra.Command {
	g := &globals{}
	root := &cobra.Command{
		Use:           "tenantproxy",
		Short:         "Tenant-aware PostgreSQL proxy: isolation per tenant, pooling, tenant operations",
		SilenceUsage:  true,
		SilenceErrors: true,
		PersistentPreRunE: func(cmd *cobra.Command, _ []string) error {
			if g.configPath == "" {
				g.configPath = os.Getenv(envName("config"))
			}
			if err := applyConfig(cmd, g.configPath, os.LookupEnv); err != nil {
				return err
			}
			logger, err := newLogger(g.logLevel, isTerminal(os.Stderr))
			if err != nil {
				return err
			}
			g.logger = logger
			return nil
		},
		PersistentPostRun: func(*cobra.Command, []string) {
			if g.logger != nil {
				g.logger.Sync()
			}
		},
	}
	root.PersistentFlags().StringVar(&g.configPath, "config", "", "YAML file of settings (flag names as keys); also TENANTPROXY_CONFIG")
	root.PersistentFlags().StringVar(&g.logLevel, "log-level", "info", "debug, info, warn or error")
	root.AddCommand(
		newVersionCommand(),
		newMigrateCommand(g),
		newBackendCommand(g),
		newCatalogCommand(g),
		newTenantCommand(g),
		newServeCommand(g),
		newDemoCommand(g),
		newChatCommand(g),
		newBenchCommand(g),
		newCheckCommand(g),
	)
	return root
}

// newLogger logs for humans (console) on a terminal and for machines (JSON)
// everywhere else, to stderr so that stdout stays for command output.
func newLogger(level string, terminal bool) (*zap.Logger, error) {
	lvl, err := zapcore.ParseLevel(level)
	if err != nil {
		return nil, fmt.Errorf("--log-level: %w", err)
	}
	var cfg zap.Config
	if terminal {
		cfg = zap.NewDevelopmentConfig()
		cfg.EncoderConfig.EncodeLevel = zapcore.CapitalColorLevelEncoder
		cfg.DisableStacktrace = true
	} else {
		cfg = zap.NewProductionConfig()
		cfg.EncoderConfig.TimeKey = "ts"
		cfg.EncoderConfig.EncodeTime = zapcore.ISO8601TimeEncoder
	}
	cfg.Level = zap.NewAtomicLevelAt(lvl)
	cfg.OutputPaths = []string{"stderr"}
	return cfg.Build()
}

func isTerminal(f *os.File) bool {
	st, err := f.Stat()
	return err == nil && st.Mode()&os.ModeCharDevice != 0
}
