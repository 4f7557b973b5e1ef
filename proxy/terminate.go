package proxy

import (
	"go.uber.org/zap"

	"github.com/tenantproxy/tenantproxy/internal/pgerr"
	"github.com/tenantproxy/tenantproxy/internal/pgwire"
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

// reasonLateTermination refuses the session's termination of itself
// behind other messages of one write, whose replies would be owed still.
const reasonLateTermination = "pg_terminate_backend(pg_backend_pid()) ends the session in transaction pooling mode only as a request of its own, not pipelined behind others"

// terminates reports that the Query or Parse of type typ just judged is
// the client's termination of its own session (policy
// TxVerdict.Terminates). In transaction mode its server connection is
// the pool's: the proxy answers it itself, as PostgreSQL would (FATAL
// 57P01, the connection closed), and whatever transaction the client had
// open is rolled back on the server connection, which the pool keeps.
func (tx *txSession) terminates(typ byte) bool {
	return (typ == pgwire.Query || typ == pgwire.Parse) && tx.pin.judged.Terminates
}

// terminateSelf ends the session for terminates.
func (tx *txSession) terminateSelf() error {
	tx.client.Write(encodeError(errTerminated, fatal))
	return errTerminated
}
