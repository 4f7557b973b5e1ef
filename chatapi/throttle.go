package chatapi

import (
	"net"
	"net/http"
	"strconv"
	"sync"
	"time"

	"github.com/hashicorp/golang-lru/v2/simplelru"
)

// POST /login checks passwords, so it is a guessing oracle that the proxy's
// login throttle never sees. Failed logins are counted per source address
// (an IPv4 address or an IPv6 /64, as the proxy counts them); a source
// that failed loginFreeFailures times within loginWindow gets 429 with
// Retry-After, without its password being checked, until the window of its
// first counted failure has passed. Counting per source rather than per
// account means a stranger can never lock an account's owner out. Behind
// a load balancer every client shares its address: put the limit there.
const (
	loginFreeFailures = 20
	loginWindow       = time.Minute
	// loginSources bounds the table; the least recently failing source is
	// forgotten first, so a flood of addresses cannot grow memory.
	loginSources = 100_000
)

type failures struct {
	since time.Time
	n     int
}

// loginThrottle is safe for concurrent use; its methods take the time.
type loginThrottle struct {
	mu  sync.Mutex
	lru *simplelru.LRU[string, failures]
}

func newLoginThrottle() *loginThrottle {
	lru, _ := simplelru.NewLRU[string, failures](loginSources, nil)
	return &loginThrottle{lru: lru}
}

// wait is how long source must wait before its next attempt; zero means
// it may try now.
func (l *loginThrottle) wait(source string, now time.Time) time.Duration {
	l.mu.Lock()
	defer l.mu.Unlock()
	f, ok := l.lru.Peek(source)
	if !ok || now.Sub(f.since) >= loginWindow || f.n < loginFreeFailures {
		return 0
	}
	return f.since.Add(loginWindow).Sub(now)
}

// fail counts a failed attempt of source.
func (l *loginThrottle) fail(source string, now time.Time) {
	l.mu.Lock()
	defer l.mu.Unlock()
	f, ok := l.lru.Get(source)
	if !ok || now.Sub(f.since) >= loginWindow {
		f = failures{since: now}
	}
	f.n++
	l.lru.Add(source, f)
}

// loginSource is the counted source of r: its IPv4 address or IPv6 /64.
func loginSource(r *http.Request) string {
	host, _, err := net.SplitHostPort(r.RemoteAddr)
	if err != nil {
		host = r.RemoteAddr
	}
	ip := net.ParseIP(host)
	switch {
	case ip == nil:
		return host
	case ip.To4() != nil:
		return ip.To4().String()
	}
	return ip.Mask(net.CIDRMask(64, 128)).String() + "/64"
}

func tooManyLogins(wait time.Duration) *problem {
	p := newProblem(http.StatusTooManyRequests, "too-many-logins", "Too many failed logins",
		"this address failed to log in too often; retry after "+strconv.Itoa(int(wait.Seconds())+1)+" s")
	p.retryAfter = int(wait.Seconds()) + 1
	return p
}
