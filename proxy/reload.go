package proxy

import (
	"crypto/sha256"
	"crypto/tls"
	"encoding/hex"
	"errors"
	"fmt"
	"net"
	"os"
	"slices"
	"sync"

	"go.uber.org/zap"
)

// listenerSet is what ListenAndServe serves: its listeners, which Reload
// changes, and the first error of one that broke.
type listenerSet struct {
	// mu orders ListenAndServe's opening and ending against Reload.
	mu sync.Mutex
	// tcp are the TCP listeners by address; nil until ListenAndServe.
	tcp map[string]net.Listener
	// own are the listeners whose end is an error: Reload removes the
	// ones it closes, ListenAndServe all when it stops.
	own     map[net.Listener]bool
	stopped bool
	// serving counts the Serve goroutines of own's listeners.
	serving sync.WaitGroup
	// broke gets the first error of a listener that ended on its own.
	broke chan error
	// shutdown is closed by Shutdown.
	shutdown  chan struct{}
	closeOnce sync.Once
}

func (ls *listenerSet) init() {
	ls.own = make(map[net.Listener]bool)
	ls.broke = make(chan error, 1)
	ls.shutdown = make(chan struct{})
}

// Reload applies the live fields of cfg (see Config) to new connections;
// sessions already running keep what they started with. Listen addresses
// added are opened before anything changes and removed ones are closed
// after (sessions they accepted stay); UnixSocket, SaltSecret, Console,
// Logger and Registerer are not reloaded. On error nothing changes.
func (s *Server) Reload(cfg Config) error {
	cfg, err := cfg.withDefaults()
	if err != nil {
		return err
	}
	s.lsn.mu.Lock()
	defer s.lsn.mu.Unlock()
	old := s.live.Load().cfg
	cfg.UnixSocket, cfg.SaltSecret, cfg.Console = old.UnixSocket, old.SaltSecret, old.Console
	cfg.Logger, cfg.Registerer = old.Logger, old.Registerer
	cfg.PeerID, cfg.Peers = old.PeerID, old.Peers
	var added []net.Listener
	if s.lsn.tcp != nil && !s.lsn.stopped {
		if added, err = listenAll(newAddrs(old.Listen, cfg.Listen)); err != nil {
			return err
		}
	}
	s.live.Store(&live{cfg: cfg})
	s.buffers.setMax(int64(cfg.MaxBufferedBytes))
	logCertChange(s.log, old.TLS, cfg.TLS)
	if s.lsn.tcp == nil || s.lsn.stopped {
		return nil
	}
	for _, l := range added {
		s.lsn.tcp[l.Addr().String()] = l
		s.serveLocked(l)
	}
	for _, addr := range newAddrs(cfg.Listen, old.Listen) {
		if l := s.lsn.tcp[addr]; l != nil {
			delete(s.lsn.tcp, addr)
			delete(s.lsn.own, l)
			l.Close()
		}
	}
	return nil
}

// newAddrs are the addresses of next that are not in prev.
func newAddrs(prev, next []string) []string {
	var out []string
	for _, a := range next {
		if !slices.Contains(prev, a) && !slices.Contains(out, a) {
			out = append(out, a)
		}
	}
	return out
}

// listenAll opens a TCP listener on every address, or none.
func listenAll(addrs []string) ([]net.Listener, error) {
	var ls []net.Listener
	for _, addr := range addrs {
		l, err := net.Listen("tcp", addr)
		if err != nil {
			for _, l := range ls {
				l.Close()
			}
			return nil, fmt.Errorf("proxy: listen %s: %w", addr, err)
		}
		ls = append(ls, l)
	}
	return ls, nil
}

// ListenAndServe listens on Config.Listen (as Reload changes it) and
// Config.UnixSocket and serves until Shutdown, when it returns
// ErrServerClosed; a listener that cannot be opened, or that breaks, is
// returned as an error after closing the others.
func (s *Server) ListenAndServe() error {
	s.lsn.mu.Lock()
	addrs := newAddrs(nil, s.live.Load().cfg.Listen)
	ls, err := listenAll(addrs)
	if err == nil && s.unix != "" {
		var l net.Listener
		if l, err = listenUnix(s.unix); err == nil {
			ls = append(ls, l)
		} else {
			for _, l := range ls {
				l.Close()
			}
		}
	}
	if err != nil {
		s.lsn.mu.Unlock()
		return err
	}
	s.lsn.tcp = make(map[string]net.Listener)
	for i, l := range ls {
		if i < len(addrs) {
			s.lsn.tcp[addrs[i]] = l
		}
		s.serveLocked(l)
	}
	s.lsn.mu.Unlock()
	select {
	case err = <-s.lsn.broke:
	case <-s.lsn.shutdown:
	}
	s.lsn.mu.Lock()
	s.lsn.stopped = true
	for l := range s.lsn.own {
		l.Close()
	}
	clear(s.lsn.own)
	s.lsn.mu.Unlock()
	s.lsn.serving.Wait()
	if err != nil {
		return err
	}
	return ErrServerClosed
}

func listenUnix(path string) (net.Listener, error) {
	// A socket file left by a crashed process would make Listen fail.
	if fi, err := os.Stat(path); err == nil && fi.Mode()&os.ModeSocket != 0 {
		os.Remove(path)
	}
	l, err := net.Listen("unix", path)
	if err != nil {
		return nil, fmt.Errorf("proxy: listen %s: %w", path, err)
	}
	return l, nil
}

// serveLocked serves l in a goroutine of the set; an error it ends with
// while still owned stops ListenAndServe. The caller holds s.lsn.mu.
func (s *Server) serveLocked(l net.Listener) {
	s.lsn.own[l] = true
	s.lsn.serving.Add(1)
	go func() {
		defer s.lsn.serving.Done()
		err := s.Serve(l)
		s.lsn.mu.Lock()
		owned := s.lsn.own[l]
		s.lsn.mu.Unlock()
		if owned && !errors.Is(err, ErrServerClosed) {
			select {
			case s.lsn.broke <- err:
			default:
			}
		}
	}()
}

// logCertChange logs the served certificate's change by fingerprint, so
// an operator sees a renewed certificate taken up (or not).
func logCertChange(log *zap.Logger, old, next *tls.Config) {
	was, is := certFingerprint(old), certFingerprint(next)
	if was != is {
		log.Info("setting changed", zap.String("setting", "tls-certificate"), zap.String("old", was), zap.String("new", is))
	}
}

// certFingerprint is the SHA-256 of the first certificate's leaf, hex; ""
// for none.
func certFingerprint(c *tls.Config) string {
	if c == nil || len(c.Certificates) == 0 || len(c.Certificates[0].Certificate) == 0 {
		return ""
	}
	sum := sha256.Sum256(c.Certificates[0].Certificate[0])
	return hex.EncodeToString(sum[:])
}
