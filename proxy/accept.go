package proxy

import (
	"container/list"
	"errors"
	"net"
	"net/netip"
	"sync"
	"syscall"
	"time"

	"go.uber.org/zap"

	"github.com/tenantproxy/tenantproxy/internal/pgerr"
)

// This file is what stands between a flood of connections and the
// proxy's descriptors: a connection that has not authenticated yet holds
// a slot of the start-up caps (startupGate), and an accept that fails
// because descriptors or memory ran out is retried after a pause
// (acceptBackoff) instead of ending Serve.
//
// Why caps on start-up and not on sessions: a stranger needs no password
// to open a TCP connection and say nothing for StartupTimeout, and 20,000
// of those used to exhaust the process's descriptors, after which accept
// failed with EMFILE and Serve returned: the proxy stopped serving
// everyone. Sessions past authentication belong to tenants and have
// their own cap (MaxConnsPerTenant).

// startupGate counts the connections in start-up (from accept to
// authentication), in all and per source address, oldest first.
//
// Over the per-address cap, a new connection is refused the way
// PostgreSQL refuses one over max_connections (FATAL 53300 "sorry, too
// many clients already") and closed at once. Over the total cap, the
// oldest connection still in start-up is closed to make room: a real
// login spends milliseconds in start-up, an idle stranger up to
// StartupTimeout, so the oldest is almost always a stranger's. Refusing
// the newcomer instead would let anyone who holds MaxStartupConns idle
// connections from enough addresses (cheap in IPv6) lock every client
// out; evicting makes them open connections faster than logins complete.
type startupGate struct {
	mu      sync.Mutex
	order   list.List // of *startupSlot, oldest first
	perAddr map[netip.Prefix]int
}

// startupSlot is one connection's place in the gate.
type startupSlot struct {
	conn net.Conn
	// addr is the source address's prefix (addrKey); invalid for a
	// connection without one (unix socket), which only the total cap
	// counts.
	addr netip.Prefix
	elem *list.Element // nil once the slot is left or evicted
}

// gateVerdict is what enter decided about a new connection.
type gateVerdict uint8

const (
	gateAdmitted gateVerdict = iota
	// gateEvicted: admitted, after closing the oldest connection(s) in
	// start-up to stay within the total cap.
	gateEvicted
	// gateAddressFull: refused, its address already holds
	// maxPerAddr connections in start-up.
	gateAddressFull
)

// addrKey groups source addresses the way one client holds them: an IPv4
// address, or the /64 an IPv6 address is in (one host or LAN gets a whole
// /64, so a cap per IPv6 address would cap nothing).
func addrKey(a net.Addr) netip.Prefix {
	ta, ok := a.(*net.TCPAddr)
	if !ok {
		return netip.Prefix{}
	}
	ip, ok := netip.AddrFromSlice(ta.IP)
	if !ok {
		return netip.Prefix{}
	}
	ip = ip.Unmap()
	bits := 32
	if ip.Is6() {
		bits = 64
	}
	p, _ := ip.Prefix(bits)
	return p
}

// enter admits conn into start-up under the caps (0 or less: none). An
// evicted connection's deadline is set in the past, which ends its
// handler's read; its handler then leaves (a no-op) and closes it.
func (g *startupGate) enter(conn net.Conn, max, maxPerAddr int) (*startupSlot, gateVerdict) {
	slot := &startupSlot{conn: conn, addr: addrKey(conn.RemoteAddr())}
	g.mu.Lock()
	defer g.mu.Unlock()
	if g.perAddr == nil {
		g.perAddr = make(map[netip.Prefix]int)
	}
	if slot.addr.IsValid() && maxPerAddr > 0 && g.perAddr[slot.addr] >= maxPerAddr {
		return nil, gateAddressFull
	}
	v := gateAdmitted
	for max > 0 && g.order.Len() >= max {
		oldest := g.order.Front().Value.(*startupSlot)
		g.remove(oldest)
		oldest.conn.SetDeadline(pastDeadline)
		v = gateEvicted
	}
	slot.elem = g.order.PushBack(slot)
	if slot.addr.IsValid() {
		g.perAddr[slot.addr]++
	}
	return slot, v
}

// leave gives slot's place back: at authentication, or when the
// connection ends. Idempotent; a nil slot is none.
func (g *startupGate) leave(slot *startupSlot) {
	if slot == nil {
		return
	}
	g.mu.Lock()
	defer g.mu.Unlock()
	g.remove(slot)
}

func (g *startupGate) remove(slot *startupSlot) {
	if slot.elem == nil {
		return
	}
	g.order.Remove(slot.elem)
	slot.elem = nil
	if slot.addr.IsValid() {
		if g.perAddr[slot.addr]--; g.perAddr[slot.addr] <= 0 {
			delete(g.perAddr, slot.addr)
		}
	}
}

// len is the number of connections in start-up.
func (g *startupGate) len() int {
	g.mu.Lock()
	defer g.mu.Unlock()
	return g.order.Len()
}

// tooManyClients is PostgreSQL's answer to a connection over
// max_connections, sent to one over the per-address start-up cap.
var tooManyClients = encodeError(pgerr.Errorf(pgerr.CodeTooManyConnections, "sorry, too many clients already"), fatal)

// refuseTooMany answers conn with tooManyClients and closes it, from the
// accept loop: the write of a few bytes to a new socket's empty buffer
// does not block, and the deadline makes sure. A client that has already
// sent its startup packet may see a reset instead (its unread bytes make
// the close a reset); either way it learns it was refused at once, and the
// proxy keeps no descriptor for it.
func refuseTooMany(conn net.Conn) {
	conn.SetWriteDeadline(time.Now().Add(100 * time.Millisecond))
	conn.Write(tooManyClients)
	conn.Close()
}

// Accept retry pauses, as net/http's Server does them.
const (
	acceptMinDelay = 5 * time.Millisecond
	acceptMaxDelay = time.Second
	// logInterval is the least time between two log lines about the same
	// kind of trouble at accept (failures, refusals, evictions).
	logInterval = time.Second
)

// acceptBackoff paces the accept loop after failures that the next
// accept may not repeat: out of descriptors (EMFILE, ENFILE), buffers or
// memory (ENOBUFS, ENOMEM), or a connection that failed while queued.
// Each failure in a row doubles the pause, up to acceptMaxDelay; a
// success resets it. It belongs to one Serve loop.
type acceptBackoff struct {
	delay time.Duration
	log   rateLog
}

// retryable reports whether an accept error may clear up by itself. The
// others (the listener closed or broken) end Serve.
func retryable(err error) bool {
	if errors.Is(err, net.ErrClosed) {
		return false
	}
	var ne net.Error
	if errors.As(err, &ne) && ne.Timeout() {
		return true
	}
	var errno syscall.Errno
	if !errors.As(err, &errno) {
		return false
	}
	switch errno {
	case syscall.EMFILE, syscall.ENFILE, syscall.ENOBUFS, syscall.ENOMEM,
		// accept(2): errors already pending on the new connection, and
		// firewall refusals, are the connection's, not the listener's.
		syscall.ECONNABORTED, syscall.EINTR, syscall.EAGAIN, syscall.EPROTO, syscall.ENOPROTOOPT,
		syscall.EHOSTDOWN, syscall.EHOSTUNREACH, syscall.ENETDOWN, syscall.ENETUNREACH,
		syscall.EOPNOTSUPP, syscall.EPERM:
		return true
	}
	return false
}

// failed returns how long to pause after err, logging it at most once per
// logInterval with the number of failures since the last line.
func (b *acceptBackoff) failed(log *zap.Logger, err error) time.Duration {
	if b.delay == 0 {
		b.delay = acceptMinDelay
	} else {
		b.delay = min(2*b.delay, acceptMaxDelay)
	}
	if n, ok := b.log.due(time.Now()); ok {
		log.Warn("accept failed; retrying", zap.Error(err), zap.Duration("delay", b.delay), zap.Int("failures", n))
	}
	return b.delay
}

func (b *acceptBackoff) succeeded() { b.delay = 0 }

// rateLog lets one log line through per logInterval and counts the
// events in between. Not safe for concurrent use.
type rateLog struct {
	last  time.Time
	count int
}

// due counts an event and reports whether to log it now, with the number
// of events the line stands for.
func (r *rateLog) due(now time.Time) (int, bool) {
	r.count++
	if now.Sub(r.last) < logInterval {
		return 0, false
	}
	n := r.count
	r.last, r.count = now, 0
	return n, true
}

// admitStartup puts a newly accepted connection under the start-up caps
// and its deadline: it returns the connection's slot, or nil when the
// connection was refused (and closed). Called from the accept loop,
// before the connection's handler starts, so that an eviction's deadline
// cannot be overwritten by the handler's.
func (s *Server) admitStartup(conn net.Conn, lv *live, logs *[2]rateLog) *startupSlot {
	conn.SetDeadline(time.Now().Add(lv.cfg.StartupTimeout))
	slot, v := s.gate.enter(conn, lv.cfg.MaxStartupConns, lv.cfg.MaxStartupConnsPerAddr)
	switch v {
	case gateAddressFull:
		s.metrics.startupClosed.WithLabelValues("address_cap").Inc()
		if n, ok := logs[0].due(time.Now()); ok {
			s.log.Warn("connection refused: its address is at the start-up cap",
				zap.Stringer("client", conn.RemoteAddr()), zap.Int("cap", lv.cfg.MaxStartupConnsPerAddr), zap.Int("refused", n))
		}
		refuseTooMany(conn)
		return nil
	case gateEvicted:
		s.metrics.startupClosed.WithLabelValues("evicted").Inc()
		if n, ok := logs[1].due(time.Now()); ok {
			s.log.Warn("start-up cap reached: closed the oldest connection still in start-up",
				zap.Int("cap", lv.cfg.MaxStartupConns), zap.Int("evicted", n))
		}
	}
	return slot
}
