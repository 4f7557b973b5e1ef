//go:build linux

package proxy

import (
	"encoding/binary"
	"sync"
	"syscall"

	"golang.org/x/sys/unix"
)

const parkingSupported = true

// parking is the Server's set of parked sessions: idle plaintext
// transaction-mode clients whose sockets one goroutine waits on in an
// epoll set of its own, instead of a goroutine each blocked in a read.
// Go's netpoller keeps the socket registered too (edge-triggered); that
// is harmless, since nobody waits on it while the session is parked and
// the resumed read finds the data at once.
//
// Each registration is one-shot and names the session by a token, never
// by its descriptor: whichever of the waiter (an event) and a waker
// (unpark) takes the token from parked first resumes the session, once;
// an event for a token already taken is stale and ignored, as is one for
// a descriptor number since closed and reused.
type parking struct {
	mu sync.Mutex
	// epfd is the epoll set; stopfd is an eventfd in it (token 0) that ends
	// the waiter. Set up at the first park.
	epfd, stopfd int
	started      bool
	// closed: Shutdown stopped the parking, or it could not be set up;
	// nothing parks any more.
	closed bool
	next   uint64
	parked map[uint64]*txSession
	// done is closed when the waiter has returned.
	done chan struct{}
}

// park hands tx's wait for its client over to the set; false leaves the
// caller to wait in a blocked read (a waker's reason is pending, or the
// set is closed or failed).
func (p *parking) park(tx *txSession) bool {
	rc, ok := rawConn(tx)
	if !ok {
		return false
	}
	p.mu.Lock()
	defer p.mu.Unlock()
	// Wakers set their reason before unpark takes mu: one looked at here
	// is either seen, or its unpark comes after the session is parked.
	if p.closed || tx.wakePending() || !p.startLocked() {
		return false
	}
	p.next++
	ev := unix.EpollEvent{Events: unix.EPOLLIN | unix.EPOLLRDHUP | unix.EPOLLONESHOT}
	setToken(&ev, p.next)
	err := control(rc, func(fd int) error { return unix.EpollCtl(p.epfd, unix.EPOLL_CTL_ADD, fd, &ev) })
	if err != nil {
		return false
	}
	tx.parkToken = p.next
	p.parked[p.next] = tx
	return true
}

// unpark resumes tx on a goroutine of its own if it is parked.
func (p *parking) unpark(tx *txSession) {
	p.mu.Lock()
	defer p.mu.Unlock()
	p.resumeLocked(tx.parkToken)
}

// resumeLocked takes the session named token out of the set and resumes
// it; nothing if no session is parked under token (0 never is).
func (p *parking) resumeLocked(token uint64) {
	tx := p.parked[token]
	if tx == nil {
		return
	}
	delete(p.parked, token)
	tx.parkToken = 0
	// Out of the set before anyone may close the socket: the session
	// owns it again once resumed.
	if rc, ok := rawConn(tx); ok {
		control(rc, func(fd int) error { return unix.EpollCtl(p.epfd, unix.EPOLL_CTL_DEL, fd, nil) })
	}
	go tx.serve(true)
}

// startLocked sets up the epoll set and starts its waiter, once; a set
// that cannot be made closes the parking (clients wait in blocked reads,
// as on other systems).
func (p *parking) startLocked() bool {
	if p.started {
		return true
	}
	p.started, p.closed = true, true
	epfd, err := unix.EpollCreate1(unix.EPOLL_CLOEXEC)
	if err != nil {
		return false
	}
	stop, err := unix.Eventfd(0, unix.EFD_CLOEXEC|unix.EFD_NONBLOCK)
	if err != nil {
		unix.Close(epfd)
		return false
	}
	ev := unix.EpollEvent{Events: unix.EPOLLIN}
	if err := unix.EpollCtl(epfd, unix.EPOLL_CTL_ADD, stop, &ev); err != nil {
		unix.Close(stop)
		unix.Close(epfd)
		return false
	}
	p.epfd, p.stopfd, p.closed = epfd, stop, false
	p.parked = make(map[uint64]*txSession)
	p.done = make(chan struct{})
	go p.wait()
	return true
}

// wait resumes the parked sessions whose clients send or hang up, until
// stop.
func (p *parking) wait() {
	defer close(p.done)
	defer unix.Close(p.epfd)
	defer unix.Close(p.stopfd)
	events := make([]unix.EpollEvent, 256)
	for {
		n, err := unix.EpollWait(p.epfd, events, -1)
		if err == unix.EINTR {
			continue
		}
		p.mu.Lock()
		if err != nil {
			// The set is unusable: no more parking, and none left parked.
			p.closeLocked()
			p.mu.Unlock()
			return
		}
		for i := range events[:n] {
			p.resumeLocked(token(&events[i]))
		}
		stopped := p.closed
		p.mu.Unlock()
		if stopped {
			return
		}
	}
}

// stop resumes every parked session (each then sees why it was woken, or
// waits in a blocked read), ends the waiter and waits for it. Shutdown
// calls it once every session was drained or killed.
func (p *parking) stop() {
	p.mu.Lock()
	running := p.started && !p.closed
	p.started = true
	p.closeLocked()
	if running {
		var one [8]byte
		binary.NativeEndian.PutUint64(one[:], 1)
		unix.Write(p.stopfd, one[:])
	}
	p.mu.Unlock()
	if running {
		<-p.done
	}
}

func (p *parking) closeLocked() {
	p.closed = true
	for token := range p.parked {
		p.resumeLocked(token)
	}
}

// rawConn is tx's client socket, under the meter.
func rawConn(tx *txSession) (syscall.RawConn, bool) {
	sc, ok := tx.meter.Conn.(syscall.Conn)
	if !ok {
		return nil, false
	}
	rc, err := sc.SyscallConn()
	return rc, err == nil
}

// control runs f on rc's descriptor, which stays open meanwhile.
func control(rc syscall.RawConn, f func(fd int) error) error {
	var ferr error
	if err := rc.Control(func(fd uintptr) { ferr = f(int(fd)) }); err != nil {
		return err
	}
	return ferr
}

// The token is the event's 64-bit data, which x/sys splits into Fd and
// Pad on every Linux architecture.
func setToken(ev *unix.EpollEvent, t uint64) {
	ev.Fd, ev.Pad = int32(uint32(t)), int32(uint32(t>>32))
}

func token(ev *unix.EpollEvent) uint64 {
	return uint64(uint32(ev.Fd)) | uint64(uint32(ev.Pad))<<32
}
