package console

import (
	"context"
	"regexp"
	"strings"

	"github.com/jackc/pgx/v5/pgproto3"
	"go.uber.org/zap"

	"github.com/tenantproxy/tenantproxy/catalog"
)

// commandRE is PgBouncer's console grammar: a word, an optional argument
// (a word or a double-quoted name), an optional semicolon. Tenant names
// may hold '-', which PgBouncer's words do not.
var commandRE = regexp.MustCompile(`^\s*([A-Za-z_]+)(?:\s+("(?:[^"]|"")+"|[A-Za-z0-9_-]+))?\s*(?:;\s*)?$`)

// parseCommand splits a query into its upper-cased command and its
// argument (unquoted; lower-cased unless it was quoted, as SQL names are).
func parseCommand(q string) (cmd, arg string, ok bool) {
	m := commandRE.FindStringSubmatch(q)
	if m == nil {
		return "", "", false
	}
	cmd, arg = strings.ToUpper(m[1]), m[2]
	if strings.HasPrefix(arg, `"`) {
		arg = strings.ReplaceAll(arg[1:len(arg)-1], `""`, `"`)
	} else {
		arg = strings.ToLower(arg)
	}
	return cmd, arg, true
}

// query answers one simple Query message.
func (s *session) query(ctx context.Context, q string) {
	if strings.TrimSpace(strings.TrimRight(strings.TrimSpace(q), ";")) == "" {
		s.be.Send(&pgproto3.EmptyQueryResponse{})
		return
	}
	cmd, arg, ok := parseCommand(q)
	if !ok {
		s.fail("invalid command '%s', use SHOW HELP;", q)
		return
	}
	if cmd == "SHOW" {
		s.show(ctx, q, strings.ToUpper(arg))
		return
	}
	log := s.console.cfg.Logger.With(zap.String("command", cmd), zap.String("tenant", arg))
	switch cmd {
	case "PAUSE", "RESUME", "RECONNECT":
		s.control(ctx, cmd, arg, false, log)
	case "DISABLE", "ENABLE", "KILL":
		s.control(ctx, cmd, arg, true, log)
	case "RELOAD":
		s.reload(arg, q, log)
	case "SHUTDOWN":
		if arg != "" || s.console.cfg.Shutdown == nil {
			s.fail("invalid command '%s', use SHOW HELP;", q)
			return
		}
		log.Info("console: shutdown requested")
		s.done("SHUTDOWN")
		s.closing = true
		go s.console.cfg.Shutdown()
	default:
		s.fail("invalid command '%s', use SHOW HELP;", q)
	}
}

// control runs a command that acts on one tenant (needTenant) or on one
// tenant or all of them.
func (s *session) control(ctx context.Context, cmd, arg string, needTenant bool, log *zap.Logger) {
	if needTenant && arg == "" {
		s.fail("%s requires a tenant", cmd)
		return
	}
	var t *catalog.Tenant
	if arg != "" {
		var err error
		if t, err = s.tenant(ctx, arg); err != nil {
			s.fail("%v", err)
			return
		}
		if t == nil {
			s.fail("no such database: %s", arg)
			return
		}
	}
	switch cmd {
	case "PAUSE":
		if arg != "" && s.proxy.TenantStates()[arg].IsPaused {
			s.fail("database %s is already paused", arg)
			return
		}
		s.proxy.Pause(arg)
	case "RESUME":
		s.proxy.Resume(arg)
	case "RECONNECT":
		database := ""
		if t != nil {
			database = t.Database
		}
		s.console.cfg.Pools.Reconnect(database)
	case "DISABLE":
		s.proxy.Disable(arg)
	case "ENABLE":
		s.proxy.Enable(arg)
	case "KILL":
		log = log.With(zap.Int("sessions", s.proxy.Kill(arg)))
	}
	log.Info("console: command run")
	s.done(cmd)
}

// reload runs RELOAD.
func (s *session) reload(arg, q string, log *zap.Logger) {
	if arg != "" || s.console.cfg.Reload == nil {
		s.fail("invalid command '%s', use SHOW HELP;", q)
		return
	}
	if err := s.console.cfg.Reload(); err != nil {
		s.fail("reload failed: %v", err)
		return
	}
	log.Info("console: reload requested")
	s.done("RELOAD")
}

// tenant looks the subdomain up in the catalog; nil when there is none.
func (s *session) tenant(ctx context.Context, sub string) (*catalog.Tenant, error) {
	ts, err := s.console.cfg.Tenants.List(ctx)
	if err != nil {
		return nil, err
	}
	for i := range ts {
		if ts[i].Subdomain == sub {
			return &ts[i], nil
		}
	}
	return nil, nil
}

// helpText is SHOW HELP's notice detail: the commands this console has.
const helpText = `
	SHOW HELP|CONFIG|DATABASES|POOLS|CLIENTS|SERVERS|VERSION|LISTS
	SHOW STATS|STATS_TOTALS
	RELOAD
	PAUSE [<tenant>]
	RESUME [<tenant>]
	DISABLE <tenant>
	ENABLE <tenant>
	RECONNECT [<tenant>]
	KILL <tenant>
	SHUTDOWN`
