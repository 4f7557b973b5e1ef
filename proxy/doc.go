// Package proxy owns the client side of tenantproxy: it accepts PostgreSQL
// wire-protocol connections (TLS, SSLRequest, GSSENCRequest,
// CancelRequest, StartupMessage), identifies and authenticates the
// tenant's user, routes the tenant, and relays between the client and
// server connections from the pool until the client leaves. It hands out
// its own cancel keys, drains gracefully, and renders every error for the
// client at one boundary (errors.go).
//
// The files follow a connection's phases:
//
//	admit.go          listener handshake and startup packet
//	auth.go           SCRAM-SHA-256 / trust, the failed-login limit
//	connect.go        identification, routing, the server connection, the client's first ReadyForQuery
//	clientsession.go  the clientSession interface both pool modes implement, what they share
//	                  (the reply queue, interrupting a blocked read)
//	session.go        session mode: one server connection for the session, two relay loops
//	txsession.go      transaction mode: the client's binding to a server connection (bindState)
//	txclient.go       transaction mode: the client loop (read, check, bind, write)
//	txrelay.go        transaction mode: relaying the bound connection's replies
//	stmts.go          transaction mode: prepared statements carried across connections (rewriter)
//	copyshared.go     both modes: the shared tier's COPY FROM STDIN, sent as a load through a staging table
//	idleread.go       transaction mode: an idle client holds no read buffer
//	park*.go          transaction mode: an idle plaintext client parks in an epoll set, holding no goroutine
//	buffers.go        memory for client messages held whole: given back once passed on, capped server-wide
//	cancel.go         cancel keys
//	peers.go          several instances: peer ids in cancel keys, forwarding other peers' cancels
//	console.go        the admin console's login and session, and what it reads and steers (package console)
//	pause.go          the console's PAUSE and DISABLE: tenant gates new transactions and logins wait at
//	errors.go         classify and render errors: pool, server, policy and framing errors meet here
//	server.go         lifecycle: Serve, Shutdown (drain, then kill)
//	reload.go         Reload: the live configuration, listeners opened and closed, TLS files read again
//	terminate.go      ending sessions from outside (57P01 as pg_terminate_backend): a removed login's
//
// Every relay loop frames messages with internal/pgwire's Scanner: it
// forwards bytes straight out of its read buffer and decodes only what the
// proxy acts on — Query and Parse (the statement policy), FunctionCall
// (refused), Sync, Execute and Terminate from the client; ReadyForQuery,
// ParameterStatus, the copy responses and, in a shared-tier COPY's load,
// CommandComplete and ErrorResponse from the server. Everything that
// arrives in one read and is forwarded goes out in one write. A refused
// statement is replaced by a Sync, and its 42501 error is put in front of
// the ReadyForQuery that answers it, so replies stay in order without an
// extra round trip.
//
// Goroutines: Serve owns one handler goroutine per connection, which runs
// the session. A session-mode session adds one for the client-to-server
// direction, which the handler waits for before releasing the server
// connection. A transaction-mode session relays on the handler goroutine
// itself and adds one only while the client goes on sending as the server
// answers (COPY FROM STDIN, pipelined batches); run waits for it. After
// long messages were given back, the buffer budget returns memory to the
// operating system on a timer's goroutine, which ends when that is done;
// Shutdown stops the timer.
package proxy
