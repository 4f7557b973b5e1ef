package pool

import (
	"context"
	"encoding/binary"
	"errors"
	"fmt"
	"net"
	"os"
	"slices"
	"strconv"
	"strings"
	"time"

	"github.com/jackc/pgx/v5/pgconn"
	"github.com/jackc/pgx/v5/pgproto3"
)

// connState is where a Conn is in its life; transitions happen under the
// pool's mutex.
type connState uint8

const (
	// stateActive: handed to a caller by Acquire (or being set up for one).
	stateActive connState = iota + 1
	// stateIdle: reset, in the pool's idle stack.
	stateIdle
	// stateClosed: the socket is closed; the Conn is garbage.
	stateClosed
	// stateParked: given back by its holder while a cancel request to its
	// backend was in flight (BeginCancel); out of circulation until the
	// last such request is answered, then idle or handed to a waiter as if
	// released then (or closed, if one went unanswered).
	stateParked
)

// Conn is one authenticated server connection. Between Acquire and Release
// the caller owns the socket and the pool does not touch it.
type Conn struct {
	pool      *pool
	netConn   net.Conn
	fe        *pgproto3.Frontend
	pid       uint32
	secretKey uint32
	params    map[string]string
	createdAt time.Time

	// Reused on every setup and reset so that a warm Acquire/Release does
	// not allocate for them.
	query    pgproto3.Query
	setupOf  []string // the Setup that setupSQL was joined from
	setupSQL string
	liveness probe

	// context is the tenant context the session carries: the Setup key
	// (setupKey) applied last, "" when none (new or reset). Transaction
	// mode keeps it across holders and skips the setup when it matches.
	context string
	// statements are the names of protocol-level prepared statements the
	// proxy created on the session in transaction mode (see Statement).
	statements map[string]struct{}
	// inject is reused for the messages AcquireTx returns.
	inject []byte

	// Guarded by pool.mu.
	state     connState
	idleSince time.Time
	holder    *tenantQueue
	// cancels counts cancel requests forwarded to the backend and not yet
	// answered (BeginCancel to ForwardCancel); while any is, a release
	// parks the Conn. doomed: one went unanswered, so the backend may
	// still be signalled; the Conn is closed at release, never reused.
	cancels int
	doomed  bool
	// gen is the pool's generation when c was dialled (pool.gen).
	gen uint64
}

// NetConn is the raw socket, positioned after startup, authentication and
// the setup statements, with the server waiting for a query (the
// ReadyForQuery that ended setup has been consumed). It has no deadline
// set. The caller may read, write and set deadlines until Release, and
// must not close it: Release does.
func (c *Conn) NetConn() net.Conn { return c.netConn }

// ParameterStatuses is what the server reported: at startup, updated by
// whatever the setup statements changed. The map belongs to the Conn; read
// it, do not modify or keep it past Release.
func (c *Conn) ParameterStatuses() map[string]string { return c.params }

// PID is the server process id from BackendKeyData.
func (c *Conn) PID() uint32 { return c.pid }

// SecretKey is the cancel key from BackendKeyData. Connections are made with
// protocol 3.0, whose keys are always 4 bytes.
func (c *Conn) SecretKey() uint32 { return c.secretKey }

// connect opens, authenticates and takes over a server connection. pgconn
// does the handshake (TLS, SCRAM, md5, trust); the pool speaks the protocol
// itself afterwards, so that the relay can own the socket.
func connect(ctx context.Context, cfg *Config, t *Target) (*Conn, error) {
	pc, err := pgconnConfig(cfg, t)
	if err != nil {
		return nil, err
	}
	ctx, cancel := context.WithTimeout(ctx, cfg.ConnectTimeout)
	defer cancel()
	conn, err := pgconn.ConnectConfig(ctx, pc)
	if err != nil {
		return nil, fmt.Errorf("pool: connect %s/%s as %s: %w", t.Addr, t.Database, t.User, err)
	}
	if err := conn.SyncConn(ctx); err != nil {
		conn.Close(ctx)
		return nil, fmt.Errorf("pool: connect %s/%s as %s: %w", t.Addr, t.Database, t.User, err)
	}
	hc, err := conn.Hijack()
	if err != nil {
		conn.Close(ctx)
		return nil, fmt.Errorf("pool: connect %s/%s as %s: %w", t.Addr, t.Database, t.User, err)
	}
	if len(hc.SecretKey) != 4 || hc.TxStatus != 'I' {
		hc.Conn.Close()
		return nil, fmt.Errorf("pool: connect %s/%s as %s: cancel key of %d bytes, status %q: %w",
			t.Addr, t.Database, t.User, len(hc.SecretKey), hc.TxStatus, errProtocol)
	}
	// A Frontend of our own over the bare socket: pgconn's reads through its
	// background reader, which must not outlive the handover. SyncConn left
	// nothing buffered there, so no bytes are lost.
	fe := pgproto3.NewFrontend(hc.Conn, hc.Conn)
	fe.SetMaxBodyLen(cfg.MaxMessageBodyLen)
	c := &Conn{
		netConn:   hc.Conn,
		fe:        fe,
		pid:       hc.PID,
		secretKey: binary.BigEndian.Uint32(hc.SecretKey),
		params:    hc.ParameterStatuses,
		createdAt: time.Now(),
	}
	c.liveness.init(hc.Conn)
	return c, nil
}

// pgconnConfig starts from ParseConfig for pgconn's defaults (dialer,
// keepalives, auth methods) and then overrides every field the environment
// could have set, so PG* variables of the proxy's process never leak into
// tenant connections.
func pgconnConfig(cfg *Config, t *Target) (*pgconn.Config, error) {
	host, portText, err := net.SplitHostPort(t.Addr)
	if err != nil {
		return nil, fmt.Errorf("pool: address %q: %w", t.Addr, err)
	}
	port, err := strconv.ParseUint(portText, 10, 16)
	if err != nil {
		return nil, fmt.Errorf("pool: address %q: port: %w", t.Addr, err)
	}
	pc, err := pgconn.ParseConfig("")
	if err != nil {
		return nil, fmt.Errorf("pool: pgconn defaults: %w", err)
	}
	pc.Host = host
	pc.Port = uint16(port)
	pc.Database = t.Database
	pc.User = t.User
	pc.Password = t.Password
	pc.TLSConfig = t.TLS
	pc.SSLNegotiation = "postgres"
	pc.Fallbacks = nil
	pc.ConnectTimeout = cfg.ConnectTimeout
	pc.RuntimeParams = map[string]string{"application_name": cfg.ApplicationName}
	pc.MinProtocolVersion = "3.0"
	pc.MaxProtocolVersion = "3.0"
	pc.MaxProtocolMessageBodyLen = cfg.MaxMessageBodyLen
	pc.ValidateConnect = nil
	pc.AfterConnect = nil
	pc.OnNotice = nil
	pc.OnNotification = nil
	pc.OnPgError = nil
	return pc, nil
}

// setup establishes the tenant context with one Query write. It returns a
// *SetupError when the server refused a statement and any other error when
// the connection failed; either way the Conn must be closed.
func (c *Conn) setup(ctx context.Context, t *Target) error {
	if len(t.Setup) == 0 {
		return nil
	}
	if deadline, ok := ctx.Deadline(); ok {
		if err := c.netConn.SetDeadline(deadline); err != nil {
			return err
		}
	}
	// A cancelled context interrupts the round trip through the deadline;
	// the Conn is closed afterwards, so the expired deadline never leaks.
	var stop func() bool
	if ctx.Done() != nil {
		stop = context.AfterFunc(ctx, func() { c.netConn.SetDeadline(time.Unix(1, 0)) })
	}
	if !slices.Equal(c.setupOf, t.Setup) {
		c.setupOf = slices.Clone(t.Setup)
		c.setupSQL = strings.Join(t.Setup, ";\n")
	}
	c.context = ""
	status, pgErr, err := c.exchange(c.setupSQL)
	interrupted := stop != nil && !stop()
	switch {
	case ctx.Err() != nil && (err != nil || interrupted):
		return fmt.Errorf("pool: setup: %w", errors.Join(context.Cause(ctx), err))
	case errors.Is(err, os.ErrDeadlineExceeded):
		// The socket deadline is the context's; it can fire a moment
		// before the context's own timer. Say so, so callers can tell a
		// timeout from a broken connection.
		return fmt.Errorf("pool: setup: %w", errors.Join(context.DeadlineExceeded, err))
	}
	if err != nil {
		return fmt.Errorf("pool: setup: %w", err)
	}
	if pgErr != nil {
		return &SetupError{Database: t.Database, User: t.User, Err: pgErr}
	}
	if status != 'I' {
		// Setup that opens a transaction would leave the client inside it.
		return fmt.Errorf("pool: setup left transaction status %q: %w", status, errProtocol)
	}
	c.context = c.setupSQL
	return c.netConn.SetDeadline(time.Time{})
}

// reset removes every trace of the previous holder so that nothing of one
// tenant reaches the next. DISCARD ALL closes cursors, drops temporary
// tables, deallocates prepared statements, UNLISTENs, releases advisory
// locks and RESETs every setting, ROLE and session authorization included;
// the seed of random(), which it leaves, is replaced by one nobody chose
// (reseed), in a second Query of the same write. DISCARD ALL refuses to
// run in a transaction block; only then (the client left mid-transaction)
// does a second round trip roll back first, so the common case costs one
// round trip and the server log no warning.
func (c *Conn) reset(timeout time.Duration) error {
	if err := c.netConn.SetDeadline(time.Now().Add(timeout)); err != nil {
		return err
	}
	c.context = ""
	clear(c.statements)
	status, pgErr, err := c.exchange(resetSQL...)
	if err == nil && status != 'I' {
		status, pgErr, err = c.exchange(append([]string{"ROLLBACK"}, resetSQL...)...)
	}
	switch {
	case err != nil:
		return fmt.Errorf("pool: reset: %w", err)
	case pgErr != nil:
		return fmt.Errorf("pool: reset: %w", pgErr)
	case status != 'I':
		return fmt.Errorf("pool: reset left transaction status %q: %w", status, errProtocol)
	}
	return c.netConn.SetDeadline(time.Time{})
}

// exchange sends each query as its own simple Query, all in one write, and
// reads replies up to the ReadyForQuery of the last. It returns that
// ReadyForQuery's transaction status, the first ErrorResponse, and err for
// I/O failures and replies a simple query cannot produce; after err the
// protocol state is unknown. ParameterStatus updates c.params.
func (c *Conn) exchange(queries ...string) (txStatus byte, pgErr *pgconn.PgError, err error) {
	for _, q := range queries {
		c.query.String = q
		c.fe.Send(&c.query)
	}
	if err := c.fe.Flush(); err != nil {
		return 0, nil, err
	}
	return c.awaitReady(len(queries))
}

// awaitReady reads replies up to the pending'th ReadyForQuery; see
// exchange.
func (c *Conn) awaitReady(pending int) (txStatus byte, pgErr *pgconn.PgError, err error) {
	for pending > 0 {
		msg, err := c.fe.Receive()
		if err != nil {
			return 0, nil, err
		}
		switch msg := msg.(type) {
		case *pgproto3.ReadyForQuery:
			pending--
			txStatus = msg.TxStatus
		case *pgproto3.ErrorResponse:
			if pgErr == nil {
				pgErr = pgconn.ErrorResponseToPgError(msg)
			}
		case *pgproto3.ParameterStatus:
			c.params[msg.Name] = msg.Value
		case *pgproto3.CommandComplete, *pgproto3.EmptyQueryResponse, *pgproto3.NoticeResponse,
			*pgproto3.RowDescription, *pgproto3.DataRow, *pgproto3.NotificationResponse:
		default:
			return 0, nil, fmt.Errorf("%w: %T", errProtocol, msg)
		}
	}
	// Anything already buffered past the last ReadyForQuery would be lost
	// to a caller that reads the socket directly.
	if n := c.fe.ReadBufferLen(); n > 0 {
		return 0, nil, fmt.Errorf("%w: %d bytes after ReadyForQuery", errProtocol, n)
	}
	return txStatus, pgErr, nil
}

// close ends the session politely (Terminate) and closes the socket. The
// Terminate is best effort: a broken socket is being closed anyway.
func (c *Conn) close() {
	c.netConn.SetDeadline(time.Now().Add(time.Second))
	c.fe.Send(&pgproto3.Terminate{})
	c.fe.Flush()
	c.netConn.Close()
}
