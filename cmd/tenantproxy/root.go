package main

import (
	"fmt"
	"io"
	"os"
	"time"

	"github.com/spf13/cobra"
	"go.uber.org/zap"
	"go.uber.org/zap/zapcore"
)

// globals are the settings every command has.
type globals struct {
	configPath string
	logLevel   string
	// level is logger's level, which a reload of serve changes.
	level  zap.AtomicLevel
	logger *zap.Logger
}

func newRootCommand() *cobra.Command {
	g := &globals{level: zap.NewAtomicLevel()}
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
			lvl, err := parseLogLevel(g.logLevel)
			if err != nil {
				return err
			}
			g.level.SetLevel(lvl)
			g.logger = newLogger(g.level, cmd.ErrOrStderr())
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
		newPlanCommand(g),
		newUsageCommand(g),
		newAuditCommand(g),
		newServeCommand(g),
		newDemoCommand(g),
		newChatCommand(g),
		newBenchCommand(g),
		newCheckCommand(g),
	)
	return root
}

func parseLogLevel(level string) (zapcore.Level, error) {
	lvl, err := zapcore.ParseLevel(level)
	if err != nil {
		return lvl, fmt.Errorf("--log-level: %w", err)
	}
	return lvl, nil
}

// newLogger logs for humans (console) on a terminal and for machines (JSON)
// everywhere else, to w (the command's stderr, so that stdout stays for
// command output and an in-process run's logs can be read), at level,
// which may change while it logs.
func newLogger(level zap.AtomicLevel, w io.Writer) *zap.Logger {
	f, ok := w.(*os.File)
	terminal := ok && isTerminal(f)
	var cfg zap.Config
	var enc zapcore.Encoder
	if terminal {
		cfg = zap.NewDevelopmentConfig()
		cfg.EncoderConfig.EncodeLevel = zapcore.CapitalColorLevelEncoder
		cfg.DisableStacktrace = true
		enc = zapcore.NewConsoleEncoder(cfg.EncoderConfig)
	} else {
		cfg = zap.NewProductionConfig()
		cfg.EncoderConfig.TimeKey = "ts"
		cfg.EncoderConfig.EncodeTime = zapcore.ISO8601TimeEncoder
		enc = zapcore.NewJSONEncoder(cfg.EncoderConfig)
	}
	// zap.Config.Build writes only to paths it opens itself; the core is
	// built here to write to w, with Build's sampling and options.
	core := zapcore.NewCore(enc, zapcore.Lock(zapcore.AddSync(w)), level)
	if s := cfg.Sampling; s != nil {
		core = zapcore.NewSamplerWithOptions(core, time.Second, s.Initial, s.Thereafter)
	}
	opts := []zap.Option{zap.AddCaller(), zap.ErrorOutput(zapcore.Lock(zapcore.AddSync(w)))}
	if !cfg.DisableStacktrace {
		opts = append(opts, zap.AddStacktrace(zapcore.ErrorLevel))
	}
	if cfg.Development {
		opts = append(opts, zap.Development())
	}
	return zap.New(core, opts...)
}

func isTerminal(f *os.File) bool {
	st, err := f.Stat()
	return err == nil && st.Mode()&os.ModeCharDevice != 0
}
