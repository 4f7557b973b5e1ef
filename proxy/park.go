package proxy

import (
	"errors"
	"os"
	"syscall"
	"time"
)

// parkAfter is how long an idle transaction-mode client keeps its
// goroutine, blocked reading, before it parks: a client that sends its
// next transaction sooner (an application between queries, a benchmark)
// pays no parking and resuming per transaction, and one idle longer
// holds no goroutine stack (8 KB after its start-up) while it waits.
// The wait's deadline, set and cleared around every idle read, is about
// 2% of the proxy's CPU per transaction (the CPU profile of
// BenchmarkProxyPgbenchSelectOnly/transaction/simple).
const parkAfter = 100 * time.Millisecond

// errIdle is the client loop's return when its client stayed idle for
// parkAfter with nothing bound or buffered: the session may park.
var errIdle = errors.New("client idle")

// serve runs the client loop on the calling goroutine until the session
// ends, then ends it; or until the session parks (Server.parked). A
// parked session has no goroutine: when its client sends or hangs up, or
// a waker (wakeClient) interrupts it, serve runs again on a fresh one,
// resumed, which reads the client at once as the blocked read would have.
func (tx *txSession) serve(resumed bool) {
	for {
		err := tx.clientLoop(resumed)
		if err != errIdle {
			tx.end(err)
			return
		}
		if tx.srv.parked.park(tx) {
			return
		}
		// Not parked: a reason to wake may have come after the read's
		// deadline was cleared, so it is given again.
		if tx.wakePending() {
			interruptRead(tx.client)
		}
		resumed = true
	}
}

// mayPark reports whether the client loop, about to wait for the client,
// may hand the wait over to the parking: the connection is plaintext
// (TLS's library may hold a decrypted record the socket does not show),
// parking is supported here, and nothing is bound.
func (tx *txSession) mayPark() bool {
	if _, plain := tx.meter.Conn.(syscall.Conn); !plain || !parkingSupported {
		return false
	}
	tx.mu.Lock()
	defer tx.mu.Unlock()
	return tx.state == unbound
}

// wakePending reports whether a waker has a reason for the client loop to
// look at its state: the session ended, was killed, or is draining with
// nothing bound.
func (tx *txSession) wakePending() bool {
	_, ended := tx.endReason()
	return ended || tx.killed.Load() || (tx.draining.Load() && !tx.isBound())
}

// wakeClient interrupts the client loop's read of the client, or resumes
// the session if it is parked, which then finds its read interrupted.
// Wakers set their reason first (wakePending), as for interruptRead.
func (tx *txSession) wakeClient() {
	interruptRead(tx.client)
	tx.srv.parked.unpark(tx)
}

// settle starts the wait of an idle client that may park: its read fails
// after parkAfter.
func (tx *txSession) settle() {
	tx.client.SetReadDeadline(time.Now().Add(parkAfter))
	// The deadline may have replaced a wake's.
	if tx.wakePending() {
		interruptRead(tx.client)
	}
}

// settled ends the wait settle began, after a read returned err: it
// reports whether the client stayed idle for all of it, with no wake,
// so that the session may park.
func (tx *txSession) settled(err error) bool {
	resumeRead(tx.client)
	if tx.wakePending() {
		interruptRead(tx.client)
		return false
	}
	return errors.Is(err, os.ErrDeadlineExceeded)
}
