package main

import (
	"os"
	"slices"

	"github.com/spf13/cobra"
	"github.com/spf13/pflag"
	"go.uber.org/zap"

	"github.com/tenantproxy/tenantproxy/pool"
	"github.com/tenantproxy/tenantproxy/proxy"
)

// settings are a serve's flag values by name, as text.
type settings map[string]string

func settingsOf(fs *pflag.FlagSet) settings {
	s := settings{}
	fs.VisitAll(func(fl *pflag.Flag) { s[fl.Name] = fl.Value.String() })
	return s
}

// needsRestart reports the settings a running serve cannot change: what
// was built once at start (the catalog and its keys, the admin listener,
// the console's SCRAM verifier, the unix socket, the canary bound to the
// first listen address and its metrics, the storage measuring schedule,
// the peering that cancel keys already handed out name, the bound on
// tenant labels) or names the file being read.
func needsRestart(name string) bool {
	switch name {
	case "catalog-dsn", "catalog-cache-ttl", "secrets-key", "secrets-key-file",
		"admin-listen", "unix-socket", "console-user", "console-password",
		"isolation-check-interval", "storage-interval", "config", "peer-id", "peer", "metrics-tenants", "metrics-rank-interval":
		return true
	}
	return false
}

// secretSetting reports the settings whose values never reach a log.
func secretSetting(name string) bool {
	switch name {
	case "catalog-dsn", "console-password", "secrets-key":
		return true
	}
	return false
}

// reloaded is a serve configuration read again on SIGHUP.
type reloaded struct {
	flags *serveFlags
	level string
	all   settings
}

// reloader re-reads the configuration of a running serve: the command-line
// flags as given, and the environment and config file as they are now.
// The fresh command hangs under a fresh root, so its global flags are its
// own (a refused reload leaves the running ones alone) and a config key
// of another command is known, as at start.
func reloader(cmd *cobra.Command, g *globals) func() (*reloaded, error) {
	return func() (*reloaded, error) {
		var args []string
		cmd.Flags().Visit(func(fl *pflag.Flag) {
			if sv, ok := fl.Value.(pflag.SliceValue); ok {
				for _, v := range sv.GetSlice() {
					args = append(args, "--"+fl.Name+"="+v)
				}
				return
			}
			args = append(args, "--"+fl.Name+"="+fl.Value.String())
		})
		fresh, f := buildServeCommand(&globals{})
		newRootCommand().AddCommand(fresh)
		if err := fresh.ParseFlags(args); err != nil {
			return nil, err
		}
		if err := applyConfig(fresh, g.configPath, os.LookupEnv); err != nil {
			return nil, err
		}
		all := settingsOf(fresh.Flags())
		return &reloaded{flags: f, level: all["log-level"], all: all}, nil
	}
}

// liveConfig is what a reload of serve changes, and what it runs with.
type liveConfig struct {
	g   *globals
	srv *proxy.Server
	mgr *pool.Manager
	// applied are the settings in force; those that need a restart keep
	// their values from the start.
	applied settings
	read    func() (*reloaded, error)
}

// reload reads the configuration again and applies it whole, or, when any
// part of it is invalid, nothing; either way it logs what it did.
func (lc *liveConfig) reload() {
	next, err := lc.read()
	if err == nil {
		err = lc.apply(next)
	}
	if err != nil {
		lc.g.logger.Error("reload refused; the running configuration stays", zap.Error(err))
	}
}

// apply checks every part before changing any: the log level and the
// pool's settings here, the proxy's in its Reload, which goes first
// because it can still fail (a certificate file, a new listen address).
func (lc *liveConfig) apply(next *reloaded) error {
	lvl, err := parseLogLevel(next.level)
	if err != nil {
		return err
	}
	poolCfg := next.flags.poolConfig(nil)
	if err := poolCfg.Validate(); err != nil {
		return err
	}
	if err := lc.srv.Reload(next.flags.proxyConfig(lc.g.logger, nil)); err != nil {
		return err
	}
	if err := lc.mgr.Reconfigure(poolCfg); err != nil {
		return err
	}
	// The changes are logged at the more verbose of the two levels, so a
	// change of level is seen whichever way it goes.
	quieter := lvl > lc.g.level.Level()
	if !quieter {
		lc.g.level.SetLevel(lvl)
	}
	lc.logChanges(next.all)
	lc.g.logger.Info("configuration reloaded")
	if quieter {
		lc.g.level.SetLevel(lvl)
	}
	return nil
}

// logChanges logs every setting whose value differs from the one in force:
// "setting changed" for those now applied, "setting needs a restart" for
// the others, which stay as they were (so every reload says so again).
func (lc *liveConfig) logChanges(next settings) {
	names := make([]string, 0, len(next))
	for name := range next {
		names = append(names, name)
	}
	slices.Sort(names)
	for _, name := range names {
		was, known := lc.applied[name]
		is := next[name]
		if !known || was == is {
			continue
		}
		fields := []zap.Field{zap.String("setting", name)}
		if !secretSetting(name) {
			fields = append(fields, zap.String("old", was), zap.String("new", is))
		}
		if needsRestart(name) {
			lc.g.logger.Warn("setting needs a restart", fields...)
			continue
		}
		lc.g.logger.Info("setting changed", fields...)
		lc.applied[name] = is
	}
}
