package proxy

import (
	"context"
	"crypto/sha256"
	"net"
	"sync"
	"time"

	"github.com/hashicorp/golang-lru/v2/simplelru"
)

// Login throttling slows password guessing down without ever locking an
// account: nothing a stranger does keeps the right password from its
// owner. Failed logins are counted per (tenant, user, source address) and
// per source address; once a count passes its free allowance, that
// source's attempts are held:
//
//   - before the password is checked, for at most maxCheckDelay, so that a
//     correct password is answered within that bound however hard its
//     source is attacked, and a guesser that gives up early on a
//     connection instead of waiting for its answer still pays this much
//     per guess;
//   - if it fails, until the whole delay has passed: firstDelay, doubling
//     with each further failure, capped at Config.MaxLoginDelay.
//
// A source is an IPv4 address, an IPv6 /64 (one host commonly holds a
// whole /64), or "local" for every client of the unix socket. Another
// source's failures never delay a client; a correct password clears its
// own (tenant, user, source) count but not its source's, so that one
// account's password cannot buy guesses at another's.
const (
	firstDelay    = 250 * time.Millisecond
	maxCheckDelay = time.Second
	// sourceFreeFactor: a source may fail this many times the per-user
	// allowance over all the users it tries before its attempts slow
	// down, so that spraying one guess over many users is throttled too.
	sourceFreeFactor = 4
	// throttleEntries bounds each of the two tables; the least recently
	// failing are forgotten first, so a flood of made-up names cannot
	// grow memory, and cannot push a source out of the table of sources.
	throttleEntries = 100_000
)

// throttlePolicy is the live configuration of the throttle.
type throttlePolicy struct {
	// free is the failures of one user from one source answered without
	// delay (sourceFreeFactor times as many for a source over all users);
	// negative disables throttling.
	free int
	// window: a count is forgotten this long after its last failure.
	window time.Duration
	// max caps the delay of a failed attempt's answer.
	max time.Duration
}

// loginThrottle counts failed logins. Its methods take the time, so tests
// drive it with a fake clock. It is safe for concurrent use.
type loginThrottle struct {
	mu      sync.Mutex
	users   *simplelru.LRU[string, failures]
	sources *simplelru.LRU[string, failures]
}

type failures struct {
	count int
	last  time.Time
}

func newLoginThrottle() *loginThrottle {
	users, err := simplelru.NewLRU[string, failures](throttleEntries, nil)
	if err != nil {
		panic(err) // only for a non-positive size
	}
	sources, err := simplelru.NewLRU[string, failures](throttleEntries, nil)
	if err != nil {
		panic(err)
	}
	return &loginThrottle{users: users, sources: sources}
}

// throttleKey names a user of a tenant (known or not, by subdomain) as
// seen from a source. It is a hash: user names come from strangers and may
// be kilobytes long, and the table holds throttleEntries of them.
func throttleKey(subdomain, user, source string) string {
	sum := sha256.Sum256([]byte(subdomain + "\x00" + user + "\x00" + source))
	return string(sum[:])
}

// sourceOf is the source address a client's failures count against.
func sourceOf(addr net.Addr) string {
	a, ok := addr.(*net.TCPAddr)
	if !ok {
		return "local"
	}
	if ip4 := a.IP.To4(); ip4 != nil {
		return ip4.String()
	}
	return a.IP.Mask(net.CIDRMask(64, 128)).String() + "/64"
}

// delays returns how long to hold the next attempt of user from source:
// before checking its password (check, at most maxCheckDelay), and in all
// from its start before answering it if it fails (fail >= check).
func (l *loginThrottle) delays(user, source string, p throttlePolicy, now time.Time) (check, fail time.Duration) {
	if p.free < 0 {
		return 0, 0
	}
	l.mu.Lock()
	u := recent(l.users, user, p.window, now)
	s := recent(l.sources, source, p.window, now)
	l.mu.Unlock()
	fail = max(backoff(u, p.free, p.max), backoff(s, p.free*sourceFreeFactor, p.max))
	return min(fail, maxCheckDelay), fail
}

// fail records a failed attempt of user from source.
func (l *loginThrottle) fail(user, source string, p throttlePolicy, now time.Time) {
	if p.free < 0 {
		return
	}
	l.mu.Lock()
	defer l.mu.Unlock()
	count(l.users, user, p.window, now)
	count(l.sources, source, p.window, now)
}

// succeed forgets user's failures from this source: its owner logged in.
func (l *loginThrottle) succeed(user string) {
	l.mu.Lock()
	l.users.Remove(user)
	l.mu.Unlock()
}

// recent is key's failure count, zero once window has passed since its
// last failure.
func recent(t *simplelru.LRU[string, failures], key string, window time.Duration, now time.Time) int {
	f, ok := t.Peek(key)
	if !ok || now.Sub(f.last) >= window {
		return 0
	}
	return f.count
}

func count(t *simplelru.LRU[string, failures], key string, window time.Duration, now time.Time) {
	f := failures{count: recent(t, key, window, now) + 1, last: now}
	t.Add(key, f)
}

// backoff is the delay after n failures with free of them allowed:
// firstDelay for the first beyond the allowance, doubling, at most ceiling.
func backoff(n, free int, ceiling time.Duration) time.Duration {
	if n < free {
		return 0
	}
	if n-free >= 30 {
		return ceiling
	}
	return min(firstDelay<<(n-free), ceiling)
}

// hold waits d, or until ctx ends.
func hold(ctx context.Context, d time.Duration) error {
	if d <= 0 {
		return nil
	}
	t := time.NewTimer(d)
	defer t.Stop()
	select {
	case <-t.C:
		return nil
	case <-ctx.Done():
		return ctx.Err()
	}
}
