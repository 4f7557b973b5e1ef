package policy

import (
	_ "embed"
	"fmt"
	"strings"

	"github.com/tenantproxy/tenantproxy/internal/pgerr"
	"github.com/tenantproxy/tenantproxy/router"
)

// startupSettings are the settings a client may pass in its startup
// packet (as parameters or "-c" options). They are applied with SET after
// the tenant's setup; nothing else is, because a pooled server connection
// outlives the client and other settings could widen the tenant's context.
var startupSettings = map[string]bool{
	"application_name": true, "client_encoding": true, "datestyle": true, "timezone": true,
	"intervalstyle": true, "extra_float_digits": true, "search_path": true,
	// Not idle_in_transaction_session_timeout: the proxy sets it after
	// these (the statement policy lets only the database tier change it).
	"statement_timeout": true, "lock_timeout": true,
	"bytea_output": true, "client_min_messages": true,
	"default_transaction_isolation": true, "default_transaction_read_only": true,
	"work_mem": true, "jit": true,
}

//go:embed pgsettings15.txt
var pgSettingsList string

// pgSettings are the names, lower-case, of PostgreSQL 15's settings
// (pg_settings, plus the few it does not list), so that a name the server
// would not know is answered as the server would answer it, not as a
// refusal. A dotted name is a placeholder PostgreSQL accepts for any
// extension, so it is never unknown.
var pgSettings = func() map[string]bool {
	m := map[string]bool{}
	for _, name := range strings.Fields(pgSettingsList) {
		m[name] = true
	}
	return m
}()

// SessionSettings turns startup settings into statements, answering a
// name PostgreSQL does not have with its 42704 and refusing
// (pgerr.CodeStatementRefused) any other the proxy does not pass on. set_config
// parses the value as PostgreSQL parses a startup parameter (so
// search_path "a,b" is a list), which SET with a quoted literal would not.
func SessionSettings(settings []router.Setting) ([]string, error) {
	out := make([]string, 0, len(settings))
	for _, s := range settings {
		name := strings.ToLower(s.Name)
		if !pgSettings[name] && !strings.Contains(name, ".") {
			return nil, pgerr.Errorf(pgerr.CodeUnrecognizedSetting, "unrecognized configuration parameter \"%s\"", s.Name)
		}
		if !startupSettings[name] {
			return nil, pgerr.Errorf(pgerr.CodeStatementRefused, "setting %q cannot be set at connection start through the proxy", s.Name)
		}
		// The statement policy reads SQL as UTF-8; see SafeClientEncoding.
		if strings.EqualFold(s.Name, "client_encoding") && !SafeClientEncoding(s.Value) {
			return nil, pgerr.Errorf(pgerr.CodeStatementRefused, "client_encoding %q is refused: the proxy reads SQL as UTF-8, and in this encoding a string could hide a statement from it", s.Value)
		}
		out = append(out, fmt.Sprintf("SELECT pg_catalog.set_config(%s, %s, false)", router.QuoteLiteral(strings.ToLower(s.Name)), router.QuoteLiteral(s.Value)))
	}
	return out, nil
}

// SafeClientEncoding reports whether a client_encoding value leaves every
// byte below 0x80 meaning ASCII, so that the proxy, reading UTF-8, splits
// SQL where the server does.
func SafeClientEncoding(v string) bool {
	switch strings.ToLower(strings.NewReplacer("-", "", "_", "").Replace(v)) {
	case "utf8", "unicode", "sqlascii":
		return true
	}
	return false
}
