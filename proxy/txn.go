package proxy

import (
	"bufio"
	"context"
	"crypto/sha256"
	"encoding/binary"
	"encoding/hex"
	"encoding/json"
	"errors"
	"io"
	"os"
	"sync"
	"sync/atomic"
	"time"

	"github.com/jackc/pgx/v5/pgproto3"
	"go.uber.org/zap"

	"github.com/tenantproxy/tenantproxy/catalog"
	"github.com/tenantproxy/tenantproxy/internal/pgerr"
	"github.com/tenantproxy/tenantproxy/policy"
	"github.com/tenantproxy/tenantproxy/pool"
	"github.com/tenantproxy/tenantproxy/router"
)

// Pool modes, for Config.PoolMode and a tenant's catalog setting
// {"pool_mode": "..."}.
const (
	// PoolSession binds one server connection to a client for its whole
	// session (relay.go).
	PoolSession = "session"
	// PoolTransaction binds a server connection from a client's first
	// message of a transaction to the ReadyForQuery that ends it (status
	// 'I'), so many clients share few server connections (this file).
	PoolTransaction = "transaction"
)

// poolModeOf returns the tenant's pool mode setting, or def when it names
// none. A malformed or unknown setting falls back to def rather than
// locking the tenant out; both modes isolate tenants.
func poolModeOf(t *catalog.Tenant, def string) string {
	if len(t.Settings) == 0 {
		return def
	}
	var s struct {
		PoolMode string `json:"pool_mode"`
	}
	if json.Unmarshal(t.Settings, &s) != nil {
		return def
	}
	switch s.PoolMode {
	case PoolSession, PoolTransaction:
		return s.PoolMode
	}
	return def
}

// txBackends is what transaction mode needs beyond Backends;
// *pool.Manager has it.
type txBackends interface {
	AcquireTx(ctx context.Context, tt *pool.TxTarget) (*pool.Conn, []byte, int, error)
	AcquireTxReady(ctx context.Context, tt *pool.TxTarget) (*pool.Conn, error)
	ReleaseTx(c *pool.Conn, clean bool)
	Release(c *pool.Conn, reusable bool)
}

var _ txBackends = (*pool.Manager)(nil)

// connectTx completes a transaction-mode client's startup. A server
// connection is bound only long enough to establish the tenant's context
// and read the settings the client must be told, then goes back to the
// pool still in that context, ready for the client's first transaction.
func (s *Server) connectTx(ctx context.Context, c *clientConn, lv *live, t *catalog.Tenant, id router.Identity, target pool.Target) (*session, error) {
	txb, ok := s.backends.(txBackends)
	if !ok {
		return nil, pgerr.Errorf(pgerr.CodeFeatureNotSupported, "transaction pooling is not available in this proxy")
	}
	// The startup's connection is not the tenant's: a tenant at its cap
	// of held connections can still connect clients.
	bc, err := txb.AcquireTxReady(ctx, pool.NewTxTarget(target))
	if err != nil {
		var setupErr *pool.SetupError
		if errors.Is(err, pool.ErrWaitTimeout) || errors.Is(err, pool.ErrClosed) || errors.As(err, &setupErr) {
			return nil, err
		}
		return nil, &pgerr.Error{Code: pgerr.CodeBackendUnavailable, Msg: "could not connect to the tenant's server", Err: err}
	}
	msgs := []pgproto3.BackendMessage{&pgproto3.AuthenticationOk{}}
	for name, value := range bc.ParameterStatuses() {
		msgs = append(msgs, &pgproto3.ParameterStatus{Name: name, Value: value})
	}
	txb.ReleaseTx(bc, true)
	// The key maps to no server until a transaction binds one (rebind).
	pid, secret := s.cancels.add(target, 0, 0)
	msgs = append(msgs, &pgproto3.BackendKeyData{ProcessID: pid, SecretKey: secret[:]}, &pgproto3.ReadyForQuery{TxStatus: 'I'})
	if err := c.send(msgs...); err != nil {
		s.cancels.remove(pid)
		return nil, err
	}
	rules, err := policy.RulesFor(t)
	if err != nil {
		// The strictest rules apply; see connect.
		s.log.Warn("tenant policy settings ignored", zap.String("tenant", t.Subdomain), zap.Error(err))
	}
	ss := &session{
		srv: s, client: c.conn, rules: rules,
		tenant: t.Subdomain, user: id.User, started: time.Now(), cancelPID: pid,
		maxMsg:       lv.cfg.MaxMessageSize,
		queries:      s.metrics.queries.WithLabelValues(t.Subdomain),
		transactions: s.metrics.transactions.WithLabelValues(t.Subdomain),
	}
	target.Tenant = t.Subdomain
	tt := pool.NewTxTarget(target)
	ss.tx = &txSession{
		ss: ss, backends: txb, target: tt,
		stmts: make(map[string]*clientStmt),
	}
	return ss, nil
}

// txSession is a transaction-mode client. The client loop (the
// connection's handler goroutine) reads client messages, binds a server
// connection when a transaction starts and writes to it, then relays the
// replies itself (relay, inline) until it has every reply it is owed:
// request and reply need no second goroutine, and no wake-up of one, per
// transaction. Only when the client must go on sending while the server
// answers (COPY FROM STDIN, a batch without Sync) does a relay goroutine
// take over the binding until it ends.
//
// Writes to the client belong to the relayer while one runs and to the
// client loop otherwise: the relayer writes the last reply of a
// transaction before it unbinds.
type txSession struct {
	ss       *session
	backends txBackends
	target   *pool.TxTarget

	mu sync.Mutex
	// server is the bound connection, nil between transactions. Only the
	// client loop binds; the relayer unbinds (or the client loop when
	// none runs), under mu.
	server *pool.Conn
	// relaying: a relayer reads server; a background one while the client
	// loop goes on (async). Cleared with server by unbind, so that the
	// next binding never finds a stale relayer.
	relaying, async bool
	// wg waits for the background relayer.
	wg sync.WaitGroup
	// partial: extended-protocol messages were sent since the last Sync,
	// so the server is mid-batch even when idle.
	partial bool
	// replies are the messages sent whose replies the relayer must
	// tell apart (Parse, Close, and everything answered by ReadyForQuery),
	// in order; q[head:] are pending.
	replies []reply
	head    int
	// sent counts messages answered by one ReadyForQuery (Query, Sync);
	// recv, the relayer's own, counts ReadyForQuery relayed.
	sent atomic.Uint64
	recv uint64
	// The relayer's own too, kept across the relays of one binding:
	// swallow counts setup replies (ReadyForQuery-terminated) still to
	// come before the client's; status is the last transaction status.
	swallow int
	status  byte
	// epoch counts bindings, so that the client's unnamed statement is
	// known to be on the bound connection only in the binding that parsed
	// it.
	epoch uint64

	clientGone, draining, killed, ended atomic.Bool
	// endErr is why the relayer ended the session; written before ended
	// is set.
	endErr error

	// Client loop only.
	stmts        map[string]*clientStmt
	unnamed      []byte // the client's last unnamed Parse, as sent
	unnamedEpoch uint64 // binding in which it was sent; 0: none
	skipping     bool   // dropping messages up to the next Sync
	skipErr      error  // what that Sync is answered with
	skipReason   string // the refusal, when skipErr is one
	in, out, w   []byte
	// first is what an idle client sent first, read without a pooled
	// reader (idleRead).
	first idlePrefix
}

type replyKind uint8

const (
	replyParse replyKind = iota + 1
	replyClose
	replyReady
)

// reply is one expected reply: injected ones are the proxy's and are not
// relayed; a Parse's name is forgotten on the connection if the Parse
// never completes; a ReadyForQuery with a refusal gets its ErrorResponse
// in front.
type reply struct {
	kind    replyKind
	inject  bool
	name    string
	refusal string
}

// clientStmt is one of the client's named prepared statements.
type clientStmt struct {
	server string // the name on server connections
	parse  []byte // the Parse message under that name
}

// unknownStatement is what a client's reference to a statement it never
// prepared is sent as: no statement has that name, so the server answers
// as it would have, and a client cannot reach a statement the proxy
// prepared for someone else.
const unknownStatement = "tenantproxy_unknown_statement"

// run relays until the session ends, then logs it.
func (tx *txSession) run() {
	ss := tx.ss
	s := ss.srv
	gauge := s.metrics.clients.WithLabelValues(ss.tenant)
	gauge.Inc()
	defer gauge.Dec()
	cerr := tx.clientLoop()
	tx.clientGone.Store(true)
	tx.mu.Lock()
	c, async := tx.server, tx.async
	if c != nil && async {
		c.NetConn().SetReadDeadline(time.Unix(1, 0))
	}
	tx.mu.Unlock()
	if async {
		tx.wg.Wait()
	} else if c != nil {
		// Left with a transaction open and no relayer: all replies owed
		// were relayed, nothing is buffered.
		tx.serverStopped(c, os.ErrDeadlineExceeded, true)
	}
	s.cancels.remove(ss.cancelPID)
	s.giveSlot(ss.tenant)
	reason := tx.endErr
	if !tx.ended.Load() {
		reason = cerr
	}
	s.log.Info("session ended", zap.String("tenant", ss.tenant), zap.String("user", ss.user),
		zap.String("pool_mode", PoolTransaction), zap.Stringer("client", ss.client.RemoteAddr()),
		zap.Duration("duration", time.Since(ss.started)), zap.NamedError("reason", reason))
}

// drain ends the session when no transaction is open: now if none is
// bound, else when the relayer unbinds.
func (tx *txSession) drain() {
	tx.draining.Store(true)
	tx.ss.client.SetReadDeadline(time.Unix(1, 0))
}

// kill ends the session now with 57P01.
func (tx *txSession) kill() {
	tx.killed.Store(true)
	tx.ss.client.SetWriteDeadline(time.Now().Add(time.Second))
	tx.ss.client.SetReadDeadline(time.Unix(1, 0))
	tx.mu.Lock()
	if tx.server != nil {
		tx.server.NetConn().SetDeadline(time.Unix(1, 0))
	}
	tx.mu.Unlock()
}

// txReaders holds the read buffers (relayBufSize) of transaction-mode
// clients and bindings while a message is in flight: an idle client holds
// none, only its idlePrefix. BenchmarkIdleSessionMemory's loop run in
// transaction mode with 1,000 clients: proxy heap per idle client ~19.2
// kB with a reader per client and per binding, ~3.3 kB pooled.
var txReaders = sync.Pool{New: func() any { return bufio.NewReaderSize(nil, relayBufSize) }}

func putTxReader(r *bufio.Reader) {
	r.Reset(nil)
	txReaders.Put(r)
}

// idlePrefixSize is what an idle client's first read takes: enough for a
// typical transaction's first write (a simple Query, or Parse to Sync),
// so that it needs no second read.
const idlePrefixSize = 512

// idlePrefix is an io.Reader that returns the bytes already read into
// buf, then reads conn.
type idlePrefix struct {
	buf  [idlePrefixSize]byte
	r, w int
	conn io.Reader
}

func (f *idlePrefix) Read(p []byte) (int, error) {
	if f.r < f.w {
		n := copy(p, f.buf[f.r:f.w])
		f.r += n
		return n, nil
	}
	return f.conn.Read(p)
}

// idleRead waits for a client with nothing buffered to send something and
// returns a pooled reader that yields what came, then the rest of the
// client's stream.
func (tx *txSession) idleRead() (*bufio.Reader, error) {
	f := &tx.first
	f.conn = tx.ss.client
	for {
		n, err := f.conn.Read(f.buf[:])
		if n > 0 {
			f.r, f.w = 0, n
			src := txReaders.Get().(*bufio.Reader)
			src.Reset(f)
			return src, nil
		}
		if err != nil {
			return nil, err
		}
	}
}

// clientLoop reads the client until it leaves or the session ends. It
// holds a pooled reader only while the client has bytes buffered.
func (tx *txSession) clientLoop() error {
	ss := tx.ss
	var src *bufio.Reader
	defer func() {
		if src != nil {
			putTxReader(src)
		}
	}()
	for {
		var typ byte
		var err error
		if src == nil {
			src, err = tx.idleRead()
		}
		if err == nil {
			typ, err = tx.read(src)
		}
		if err != nil {
			if !errors.Is(err, os.ErrDeadlineExceeded) || tx.ended.Load() {
				return err
			}
			if tx.killed.Load() || tx.draining.Load() {
				if !tx.bound() {
					tx.sendClient(errorResponse(errShuttingDown, true))
					return errShuttingDown
				}
				if tx.killed.Load() {
					return errShuttingDown
				}
			}
			// Woken while a transaction is open; the relayer wakes this
			// loop again when it unbinds.
			ss.client.SetReadDeadline(time.Time{})
			if tx.draining.Load() && !tx.bound() {
				ss.client.SetReadDeadline(time.Unix(1, 0))
			}
			continue
		}
		if typ == 'X' {
			return nil
		}
		if err := tx.handle(typ, src); err != nil {
			return err
		}
		if src.Buffered() == 0 && tx.first.r == tx.first.w {
			putTxReader(src)
			src = nil
		}
	}
}

func (tx *txSession) bound() bool {
	tx.mu.Lock()
	defer tx.mu.Unlock()
	return tx.server != nil
}

// read reads one whole client message into tx.in.
func (tx *txSession) read(src *bufio.Reader) (byte, error) {
	hdr, err := src.Peek(5)
	if err != nil {
		return 0, err
	}
	size := 1 + int(binary.BigEndian.Uint32(hdr[1:]))
	if size < 5 {
		return 0, pgerr.Errorf(pgerr.CodeProtocolViolation, "invalid message length")
	}
	if size-5 > tx.ss.maxMsg {
		return 0, pgerr.Errorf(pgerr.CodeMessageTooLarge, "message of %d bytes exceeds the limit of %d", size-5, tx.ss.maxMsg)
	}
	if cap(tx.in) < size {
		tx.in = make([]byte, size)
	}
	tx.in = tx.in[:size]
	if _, err := io.ReadFull(src, tx.in); err != nil {
		return 0, err
	}
	return tx.in[0], nil
}

// refusal is why a Query or Parse in tx.in must not run, or "". One check
// gives the tenant's rules' reason first and then transaction mode's: what
// the rules refuse (SET ROLE, set_config, RESET ALL) is refused in session
// mode too, so transaction mode's hint to connect in session mode would be
// false for it.
func (tx *txSession) refusal() string {
	return tx.ss.srv.policy.Check(statementOf(tx.in), tx.ss.rules, policy.TransactionMode)
}

// verdict is refusal for the statements it applies to (Query, Parse),
// "" for every other message type.
func (tx *txSession) verdict(typ byte) string {
	if typ != 'Q' && typ != 'P' {
		return ""
	}
	return tx.refusal()
}

// handle acts on the client message in tx.in and on every further whole
// message already buffered, writing them to the bound server connection
// in one write, binding one first if needed.
func (tx *txSession) handle(typ byte, src *bufio.Reader) error {
	if tx.ended.Load() {
		return tx.endErr
	}
	if tx.skipping && typ != 'S' {
		return nil
	}
	// Checked once: the unbound branch answers a refusal without a
	// server, message sends it as a Sync when bound.
	r := tx.verdict(typ)
	tx.mu.Lock()
	if tx.server == nil {
		tx.mu.Unlock()
		// Between transactions: answer what needs no server here.
		switch {
		case tx.skipping: // at its Sync
			tx.skipping = false
			return tx.answer(tx.skipErr)
		case typ == 'Q':
			if r != "" {
				return tx.answer(pgerr.Errorf(pgerr.CodeStatementRefused, "%s", r))
			}
		case typ == 'P':
			if r != "" {
				tx.skip(r)
				return nil
			}
		case typ == 'F':
			return tx.answer(pgerr.Errorf(pgerr.CodeStatementRefused, "fast-path function calls are not allowed through the proxy"))
		}
		if tx.draining.Load() || tx.killed.Load() {
			tx.sendClient(errorResponse(errShuttingDown, true))
			return errShuttingDown
		}
		c, setup, queries, err := tx.backends.AcquireTx(tx.ss.srv.ctx, tx.target)
		if err != nil {
			return tx.acquireFailed(typ, err)
		}
		tx.mu.Lock()
		tx.server = c
		tx.epoch++
		tx.swallow, tx.status = queries, 'I'
		tx.out = append(tx.out[:0], setup...)
		tx.ss.srv.cancels.rebind(tx.ss.cancelPID, c.PID(), c.SecretKey())
	} else {
		tx.out = tx.out[:0]
	}
	c := tx.server
	tx.message(c, typ, r)
	for !tx.skipping {
		// Pipelined messages already here go in the same write; Peek
		// would wait for more.
		if src.Buffered() < 5 {
			break
		}
		hdr, _ := src.Peek(5)
		if hdr[0] == 'X' {
			break
		}
		if size := 1 + int(binary.BigEndian.Uint32(hdr[1:])); size < 5 || size > src.Buffered() || size-5 > tx.ss.maxMsg {
			break
		}
		typ, _ = tx.read(src)
		tx.message(c, typ, tx.verdict(typ))
	}
	// Written without the lock, so a background relayer can relay (and
	// take the lock for replies it must match) while a big write waits
	// for the server to read: every message above left the server owing
	// a ReadyForQuery (sent) or mid-batch (partial), so it cannot unbind
	// c until the server has read this write. A failed write needs no
	// handling here: the relayer's read finds the same failure.
	tx.mu.Unlock()
	c.NetConn().Write(tx.out)
	return tx.awaitReplies(c, src)
}

// awaitReplies relays what the client is owed after a write to c: here,
// when the client has sent a whole request (nothing buffered, no batch
// open) and so waits for the answer; else in the background, since the
// client may go on sending while the server answers.
func (tx *txSession) awaitReplies(c *pool.Conn, client *bufio.Reader) error {
	tx.mu.Lock()
	if tx.server != c || tx.relaying {
		tx.mu.Unlock()
		return nil
	}
	if !tx.partial && tx.recv == tx.sent.Load() {
		// Nothing to answer (the server ignores COPY messages outside a
		// COPY): an idle connection goes back now, an open transaction
		// keeps it.
		idle := tx.status == 'I'
		tx.mu.Unlock()
		if idle {
			tx.giveBack(c)
		}
		return nil
	}
	tx.relaying = true
	inline := !tx.partial && client.Buffered() == 0 && tx.first.r == tx.first.w
	tx.async = !inline
	tx.mu.Unlock()
	src := txReaders.Get().(*bufio.Reader)
	src.Reset(c.NetConn())
	if !inline {
		tx.background(src)
		return nil
	}
	switch tx.relay(src, true) {
	case relayFailed:
		putTxReader(src)
		return tx.endErr
	case relayCopy:
		tx.mu.Lock()
		tx.async = true
		tx.mu.Unlock()
		tx.background(src)
		return nil
	case relayPaused:
		tx.mu.Lock()
		tx.relaying = false
		tx.mu.Unlock()
	}
	putTxReader(src)
	return nil
}

// background relays the rest of the binding in a goroutine of its own,
// from src (the binding's reader, which it puts back).
func (tx *txSession) background(src *bufio.Reader) {
	tx.wg.Add(1)
	go func() {
		defer tx.wg.Done()
		tx.relay(src, false)
		putTxReader(src)
	}()
}

// answer ends a client request that never reached a server: err as an
// ErrorResponse, then ReadyForQuery.
func (tx *txSession) answer(err error) error {
	tx.w = tx.w[:0]
	resp := errorResponse(err, false)
	var nf nonFatal
	if errors.As(err, &nf) {
		resp.Severity, resp.SeverityUnlocalized = "ERROR", "ERROR"
	}
	tx.w, _ = resp.Encode(tx.w)
	tx.w, _ = (&pgproto3.ReadyForQuery{TxStatus: 'I'}).Encode(tx.w)
	_, werr := tx.ss.client.Write(tx.w)
	return werr
}

// acquireFailed answers a request that could not get a server connection:
// 53400 after the wait timeout, 08006 when the server cannot be reached.
// The session goes on: a later transaction may find one.
func (tx *txSession) acquireFailed(typ byte, err error) error {
	if errors.Is(err, pool.ErrClosed) {
		tx.sendClient(errorResponse(errShuttingDown, true))
		return errShuttingDown
	}
	if !errors.Is(err, pool.ErrWaitTimeout) {
		var setupErr *pool.SetupError
		if !errors.As(err, &setupErr) {
			err = &pgerr.Error{Code: pgerr.CodeBackendUnavailable, Msg: "could not connect to the tenant's server", Err: err}
		}
		tx.ss.srv.log.Warn("transaction could not get a server connection", zap.String("tenant", tx.ss.tenant), zap.Error(err))
	}
	err = nonFatal{err}
	if typ == 'Q' || typ == 'S' {
		return tx.answer(err)
	}
	tx.skipping, tx.skipErr = true, err
	return nil
}

// skip drops messages up to the next Sync, which is answered with the
// refusal (like PostgreSQL after an error in the extended protocol).
func (tx *txSession) skip(reason string) {
	tx.skipping, tx.skipReason = true, reason
	tx.skipErr = pgerr.Errorf(pgerr.CodeStatementRefused, "%s", reason)
}

// nonFatal reports an error at ERROR severity: the session survives a
// transaction that could not start.
type nonFatal struct{ error }

func (e nonFatal) Unwrap() error { return e.error }

// message appends the client message in tx.in to tx.out for server
// connection c, rewriting prepared statement names and preparing on
// demand; refused statements become a Sync whose ReadyForQuery carries
// the refusal. refusal is tx.verdict(typ), computed by the caller. Called
// with tx.mu held.
func (tx *txSession) message(c *pool.Conn, typ byte, refusal string) {
	ss := tx.ss
	m := tx.in
	switch typ {
	case 'Q':
		if refusal != "" {
			tx.sync(refusal)
			return
		}
		ss.queries.Inc()
		tx.push(reply{kind: replyReady})
		tx.sent.Add(1)
		tx.out = append(tx.out, m...)
		return
	case 'S':
		if tx.skipping {
			tx.skipping = false
			tx.sync(tx.skipReason)
			return
		}
		tx.partial = false
		tx.push(reply{kind: replyReady})
		tx.sent.Add(1)
		tx.out = append(tx.out, m...)
		return
	case 'F':
		tx.sync("fast-path function calls are not allowed through the proxy")
		return
	case 'P':
		tx.partial = true
		if refusal != "" {
			tx.skip(refusal)
			return
		}
		tx.parse(c)
		return
	case 'B':
		tx.partial = true
		portal, rest, ok := cstring(m[5:])
		name, rest2, ok2 := cstring(rest)
		if !ok || !ok2 {
			break
		}
		if len(name) == 0 {
			tx.ensureUnnamed()
			break
		}
		server := tx.ensure(c, name)
		tx.out = appendHeader(tx.out, 'B', len(portal)+1+len(server)+1+len(rest2))
		tx.out = append(append(tx.out, portal...), 0)
		tx.out = append(append(tx.out, server...), 0)
		tx.out = append(tx.out, rest2...)
		return
	case 'D', 'C':
		tx.partial = true
		if typ == 'C' {
			tx.push(reply{kind: replyClose})
		}
		if len(m) < 7 || m[5] != 'S' {
			break
		}
		name, _, ok := cstring(m[6:])
		if !ok {
			break
		}
		if len(name) == 0 {
			if typ == 'D' {
				tx.ensureUnnamed()
			}
			break
		}
		// A closed statement stays on server connections for other
		// clients of the context; closing a name that does not exist is
		// not an error, so the client gets its CloseComplete.
		server := unknownStatement
		if typ == 'C' {
			delete(tx.stmts, string(name))
		} else {
			server = tx.ensure(c, name)
		}
		tx.out = appendHeader(tx.out, typ, 1+len(server)+1)
		tx.out = append(tx.out, 'S')
		tx.out = append(append(tx.out, server...), 0)
		return
	case 'E':
		tx.partial = true
		ss.queries.Inc()
	case 'd', 'c', 'f':
		// COPY data, done, fail: the Query that started the COPY is still
		// owed its ReadyForQuery.
	default:
		// Flush and whatever else: mid-batch until a Sync says otherwise.
		tx.partial = true
	}
	tx.out = append(tx.out, m...)
}

// sync sends a Sync in place of a refused message; its ReadyForQuery will
// carry the refusal.
func (tx *txSession) sync(refusal string) {
	tx.partial = false
	tx.push(reply{kind: replyReady, refusal: refusal})
	tx.sent.Add(1)
	tx.out = append(tx.out, syncMessage...)
}

// parse forwards the client's Parse in tx.in: an unnamed one as is
// (remembered, to be sent again if a later binding uses it); a named one
// under its server name, derived from the tenant context and the
// statement, so clients of one context share it on a connection and no
// two contexts ever do.
func (tx *txSession) parse(c *pool.Conn) {
	m := tx.in
	name, rest, ok := cstring(m[5:])
	if !ok || len(name) == 0 {
		tx.unnamed = append(tx.unnamed[:0], m...)
		tx.unnamedEpoch = tx.epoch
		tx.push(reply{kind: replyParse})
		tx.out = append(tx.out, m...)
		return
	}
	server := statementName(tx.target.Key(), rest)
	st := &clientStmt{server: server}
	st.parse = appendHeader(nil, 'P', len(server)+1+len(rest))
	st.parse = append(append(st.parse, server...), 0)
	st.parse = append(st.parse, rest...)
	tx.stmts[string(name)] = st
	if c.HasStatement(server) {
		// Prepared before, maybe by another client of the context: close
		// it so the client's own Parse gets its own answer in order.
		tx.push(reply{kind: replyClose, inject: true})
		tx.out = appendHeader(tx.out, 'C', 1+len(server)+1)
		tx.out = append(append(append(tx.out, 'S'), server...), 0)
	}
	c.AddStatement(server)
	tx.push(reply{kind: replyParse, name: server})
	tx.out = append(tx.out, st.parse...)
}

// ensure returns the server name of the client's statement name, first
// preparing it on c if c lacks it. A name the client never prepared maps
// to unknownStatement.
func (tx *txSession) ensure(c *pool.Conn, name []byte) string {
	st := tx.stmts[string(name)]
	if st == nil {
		return unknownStatement
	}
	if !c.HasStatement(st.server) {
		c.AddStatement(st.server)
		tx.push(reply{kind: replyParse, inject: true, name: st.server})
		tx.out = append(tx.out, st.parse...)
	}
	return st.server
}

// ensureUnnamed sends the client's unnamed statement again when this
// binding did not parse it: the connection's unnamed statement may be
// another client's.
func (tx *txSession) ensureUnnamed() {
	if tx.unnamedEpoch == tx.epoch || len(tx.unnamed) == 0 {
		return
	}
	tx.unnamedEpoch = tx.epoch
	tx.push(reply{kind: replyParse, inject: true})
	tx.out = append(tx.out, tx.unnamed...)
}

func (tx *txSession) push(r reply) { tx.replies = append(tx.replies, r) }

// pop returns the next expected reply. Called with tx.mu held.
func (tx *txSession) pop() (reply, bool) {
	if tx.head == len(tx.replies) {
		return reply{}, false
	}
	r := tx.replies[tx.head]
	tx.replies[tx.head] = reply{}
	tx.head++
	if tx.head == len(tx.replies) {
		tx.replies, tx.head = tx.replies[:0], 0
	}
	return r, true
}

// endSession records why the relayer ends the session and wakes the
// client loop to end it.
func (tx *txSession) endSession(err error) {
	tx.endErr = err
	tx.ended.Store(true)
	tx.ss.client.SetReadDeadline(time.Unix(1, 0))
}

// unbind clears the binding of c; it reports false if c is no longer
// bound (the client loop gave it up).
func (tx *txSession) unbind(c *pool.Conn) bool {
	tx.mu.Lock()
	defer tx.mu.Unlock()
	if tx.server != c {
		return false
	}
	tx.server = nil
	tx.relaying, tx.async = false, false
	tx.partial = false
	tx.replies, tx.head = tx.replies[:0], 0
	tx.ss.srv.cancels.rebind(tx.ss.cancelPID, 0, 0)
	return true
}

// relayEnd is how a relay returned.
type relayEnd uint8

const (
	// relayUnbound: the transaction ended, c went back to the pool.
	relayUnbound relayEnd = iota
	// relayFailed: the session must end; c was released or closed.
	relayFailed
	// relayPaused (inline only): every reply owed was relayed, c stays
	// bound to the open transaction and nothing is buffered.
	relayPaused
	// relayCopy (inline only): the server wants COPY data, which the
	// client loop must read while the server may still answer.
	relayCopy
)

// relay forwards the replies of the bound connection to the client from
// src, which reads it. Inline (the client loop relaying), it also returns
// when the client is owed nothing more (relayPaused) and after a
// CopyInResponse or CopyBothResponse (relayCopy); in the background it
// relays until the binding ends.
func (tx *txSession) relay(src *bufio.Reader, inline bool) relayEnd {
	ss := tx.ss
	tx.mu.Lock()
	c := tx.server
	tx.mu.Unlock()
	conn := c.NetConn()
	// A wake meant for the previous holder may have left a deadline.
	conn.SetReadDeadline(time.Time{})
	rest, want := 0, 5
	for {
		if src.Buffered() < want {
			if _, err := src.Peek(want); err != nil {
				if more, end := tx.serverStopped(c, err, rest == 0 && src.Buffered() == 0); !more {
					return end
				}
				continue
			}
		}
		if rest > 0 {
			var err error
			if rest, want, err = forwardRest(src, ss.client, rest); err != nil {
				tx.unbind(c)
				tx.backends.ReleaseTx(c, false)
				return relayFailed
			}
			continue
		}
		buf, _ := src.Peek(src.Buffered())
		n, from := 0, 0
		want = 5
		idle, copying := false, false
		var refused string
		var werr error
		flush := func(to int) {
			if to > from && werr == nil {
				_, werr = ss.client.Write(buf[from:to])
			}
			from = to
		}
	scan:
		for n+5 <= len(buf) {
			typ := buf[n]
			size := 1 + int(binary.BigEndian.Uint32(buf[n+1:]))
			if size < 5 {
				tx.unbind(c)
				tx.backends.ReleaseTx(c, false)
				tx.endSession(errors.New("server sent an invalid message length"))
				return relayFailed
			}
			if tx.swallow > 0 {
				// A reply to the injected setup: never relayed.
				if typ == 'E' {
					flush(n)
					tx.unbind(c)
					tx.backends.ReleaseTx(c, false)
					err := pgerr.Errorf(pgerr.CodeBackendUnavailable, "terminating connection: the tenant context could not be established")
					ss.srv.log.Error("tenant context setup failed in transaction mode", zap.String("tenant", ss.tenant), zap.Uint32("pid", c.PID()))
					ss.client.Write(mustEncode(errorResponse(err, true)))
					tx.endSession(err)
					return relayFailed
				}
				if n+size > len(buf) {
					if n == 0 {
						want = size
					}
					break
				}
				flush(n)
				switch typ {
				case 'Z':
					tx.swallow--
				case 'S':
					tx.parameterStatus(c, buf[n+5:n+size])
				}
				n += size
				from = n
				continue
			}
			switch typ {
			case '1', '3':
				tx.mu.Lock()
				r, _ := tx.pop()
				tx.mu.Unlock()
				if r.inject {
					flush(n)
					n += size
					from = n
					continue
				}
			case 'S':
				if n+size > len(buf) {
					if n == 0 {
						want = size
					}
					break scan
				}
				tx.parameterStatus(c, buf[n+5:n+size])
			case 'G', 'W':
				if inline {
					// Whole, so that the client has it before its loop
					// goes back to reading the client.
					if n+size > len(buf) {
						if n == 0 {
							want = size
						}
						break scan
					}
					n += size
					copying = true
					break scan
				}
			case 'Z':
				if n+size > len(buf) {
					if n == 0 {
						want = size
					}
					break scan
				}
				tx.status = buf[n+5]
				refusal := tx.ready(c)
				tx.recv++
				if refusal != "" {
					flush(n)
					refused = refusal
					n += size
					break scan
				}
				n += size
				if tx.status == 'I' {
					ss.transactions.Inc()
					if tx.recv == tx.sent.Load() {
						idle = true
						break scan
					}
				}
				continue
			}
			if n+size > len(buf) {
				rest = n + size - len(buf)
				n = len(buf)
				break
			}
			n += size
		}
		if refused != "" {
			// The refusal's ErrorResponse goes just before its
			// ReadyForQuery, which is buf[from:n].
			if werr == nil {
				_, werr = ss.client.Write(mustEncode(errorResponse(pgerr.Errorf(pgerr.CodeStatementRefused, "%s", refused), false)))
			}
			if tx.status == 'I' {
				ss.transactions.Inc()
				idle = tx.recv == tx.sent.Load()
			}
		}
		flush(n)
		src.Discard(n)
		if werr != nil {
			tx.unbind(c)
			tx.backends.Release(c, !tx.partialUnlocked() && rest == 0 && src.Buffered() == 0 && tx.recv == tx.sent.Load())
			tx.endSession(werr)
			return relayFailed
		}
		if rest > 0 {
			want = 1
		}
		if copying {
			return relayCopy
		}
		if idle && src.Buffered() == 0 && tx.giveBack(c) {
			return relayUnbound
		}
		if inline && rest == 0 && src.Buffered() == 0 && tx.owedNothing() {
			return relayPaused
		}
	}
}

// owedNothing reports whether every reply the client is owed was relayed.
func (tx *txSession) owedNothing() bool {
	tx.mu.Lock()
	defer tx.mu.Unlock()
	return !tx.partial && tx.recv == tx.sent.Load()
}

func (tx *txSession) partialUnlocked() bool {
	tx.mu.Lock()
	defer tx.mu.Unlock()
	return tx.partial
}

// giveBack returns c to the pool if the client has nothing in flight on
// it, and wakes the client loop if the session is to end with this
// transaction.
func (tx *txSession) giveBack(c *pool.Conn) bool {
	if !tx.unbindIfIdle(c) {
		return false
	}
	tx.backends.ReleaseTx(c, true)
	if tx.draining.Load() || tx.killed.Load() {
		tx.ss.client.SetReadDeadline(time.Unix(1, 0))
	}
	return true
}

// unbindIfIdle unbinds c if the client has nothing in flight on it.
func (tx *txSession) unbindIfIdle(c *pool.Conn) bool {
	tx.mu.Lock()
	defer tx.mu.Unlock()
	if tx.server != c || tx.partial || tx.recv != tx.sent.Load() {
		return false
	}
	tx.server = nil
	tx.relaying, tx.async = false, false
	tx.replies, tx.head = tx.replies[:0], 0
	tx.ss.srv.cancels.rebind(tx.ss.cancelPID, 0, 0)
	return true
}

// ready consumes the expected replies up to the ReadyForQuery being
// relayed: Parses still pending there failed (the server skipped them
// after an error), so their statements do not exist on c. It returns the
// refusal to report before the ReadyForQuery, if any.
func (tx *txSession) ready(c *pool.Conn) string {
	tx.mu.Lock()
	defer tx.mu.Unlock()
	for {
		r, ok := tx.pop()
		if !ok || r.kind == replyReady {
			return r.refusal
		}
		if r.kind == replyParse && r.name != "" {
			c.ForgetStatement(r.name)
		}
	}
}

// parameterStatus records a ParameterStatus body (name\0value\0) on c.
func (tx *txSession) parameterStatus(c *pool.Conn, body []byte) {
	name, rest, ok := cstring(body)
	if !ok {
		return
	}
	value, _, ok := cstring(rest)
	if ok {
		c.SetParameterStatus(name, value)
	}
}

// serverStopped handles the bound connection's read failing: a wake (the
// client left, a kill) or the server gone. more means relay on (a wake
// that found the session going on); otherwise end is relay's result.
func (tx *txSession) serverStopped(c *pool.Conn, err error, boundary bool) (more bool, end relayEnd) {
	ss := tx.ss
	if errors.Is(err, os.ErrDeadlineExceeded) && !tx.killed.Load() {
		if !tx.clientGone.Load() {
			c.NetConn().SetReadDeadline(time.Time{})
			// A final reason may have come with the wake just cleared.
			if tx.clientGone.Load() || tx.killed.Load() {
				c.NetConn().SetReadDeadline(time.Unix(1, 0))
			}
			return true, relayFailed
		}
		// The client left mid-transaction: keep the connection if it is
		// at rest (rolled back and reset unless idle), else close it.
		tx.mu.Lock()
		quiet := boundary && !tx.partial && tx.recv == tx.sent.Load()
		tx.mu.Unlock()
		tx.unbind(c)
		if quiet && tx.status == 'I' {
			tx.backends.ReleaseTx(c, true)
		} else {
			// Release rolls back and resets (DISCARD ALL): the context
			// goes too, and the next holder sets it again.
			tx.backends.Release(c, quiet)
		}
		return false, relayFailed
	}
	tx.unbind(c)
	tx.backends.ReleaseTx(c, false)
	if tx.killed.Load() {
		if boundary {
			ss.client.Write(mustEncode(errorResponse(errShuttingDown, true)))
		}
		tx.endSession(errShuttingDown)
		return false, relayFailed
	}
	if tx.clientGone.Load() {
		return false, relayFailed
	}
	if boundary {
		ss.client.Write(mustEncode(errorResponse(errServerLost, true)))
	}
	tx.endSession(errors.Join(errServerLost, err))
	return false, relayFailed
}

// sendClient writes one message to the client; only the loop that owns
// client writes at the moment calls it.
func (tx *txSession) sendClient(m interface{ Encode([]byte) ([]byte, error) }) {
	tx.ss.client.Write(mustEncode(m))
}

func mustEncode(m interface{ Encode([]byte) ([]byte, error) }) []byte {
	b, _ := m.Encode(nil)
	return b
}

// cstring splits a NUL-terminated string off b.
func cstring(b []byte) (s, rest []byte, ok bool) {
	for i, ch := range b {
		if ch == 0 {
			return b[:i], b[i+1:], true
		}
	}
	return nil, nil, false
}

// appendHeader appends a message type and the length of a body of n
// bytes.
func appendHeader(b []byte, typ byte, n int) []byte {
	b = append(b, typ, 0, 0, 0, 0)
	binary.BigEndian.PutUint32(b[len(b)-4:], uint32(4+n))
	return b
}

// rebind points a client's cancel key at the server connection its
// transaction is bound to (pid 0: none; a cancel then reaches no query).
func (k *cancelKeys) rebind(pid, serverPID, serverKey uint32) {
	k.mu.Lock()
	if t, ok := k.m[pid]; ok {
		t.pid, t.key = serverPID, serverKey
		k.m[pid] = t
	}
	k.mu.Unlock()
}

// statementName is the server-side name of a named statement: a digest
// of the tenant context and the Parse body after the name (query text
// and parameter types), so that equal statements of one context share a
// name on a connection and statements of different contexts never do.
func statementName(context string, body []byte) string {
	h := sha256.New()
	h.Write([]byte(context))
	h.Write([]byte{0})
	h.Write(body)
	var sum [sha256.Size]byte
	return "tp_" + hex.EncodeToString(h.Sum(sum[:0])[:16])
}
