package proxy

import (
	"go.uber.org/zap"

	"github.com/tenantproxy/tenantproxy/internal/pgerr"
)

// errTerminated is what PostgreSQL tells the victim of
// pg_terminate_backend, byte for byte.
var errTerminated = pgerr.Errorf(pgerr.CodeShuttingDown, "terminating connection due to administrator command")

// removalWatcher is the optional capability of a Directory to report
// logins that stopped existing; *catalog.Catalog has it.
type removalWatcher interface {
	WatchRemovedUsers(fn func(tenantID, username string)) (stop func())
}

// watchRemovals makes the sessions of a login the directory reports
// removed end at once, when it can report removals. A login that
// authenticated just before its removal and has not started relaying yet
// is not caught: it lives until it disconnects.
func (s *Server) watchRemovals(dir any) {
	w, ok := dir.(removalWatcher)
	if !ok {
		s.unwatch = func() {}
		return
	}
	// Tenant ids equal subdomains, which is what sessions hold.
	s.unwatch = w.WatchRemovedUsers(func(tenant, user string) {
		n := s.endSessions(func(t, u string) bool { return t == tenant && u == user })
		s.log.Info("sessions of a removed login ended", zap.String("tenant", tenant), zap.String("user", user), zap.Int("sessions", n))
	})
}

// endSessions ends now, with FATAL 57P01 "terminating connection due to
// administrator command" as pg_terminate_backend does, every relaying
// session whose tenant (subdomain) and user match. An open transaction is
// rolled back. It returns how many sessions it ended.
func (s *Server) endSessions(match func(tenant, user string) bool) int {
	s.mu.Lock()
	defer s.mu.Unlock()
	n := 0
	for t := range s.conns {
		ts, ok := t.sess.(tenantSession)
		if !ok {
			continue
		}
		b := ts.base()
		if !match(b.tenant, b.user) {
			continue
		}
		b.killedBy.CompareAndSwap(nil, errTerminated)
		ts.kill()
		n++
	}
	return n
}
