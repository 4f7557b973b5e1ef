package proxy

import (
	"bytes"
	"encoding/binary"
	"maps"
	"slices"
	"testing"

	"github.com/tenantproxy/tenantproxy/internal/pgwire"
)

// fakeStmts is a server connection's statement record, as *pool.Conn
// keeps it.
type fakeStmts map[string]bool

func (s fakeStmts) HasStatement(name string) bool { return s[name] }
func (s fakeStmts) AddStatement(name string)      { s[name] = true }
func (s fakeStmts) ForgetStatement(name string)   { delete(s, name) }

// replyLog records the replies a rewriter expects, in order.
type replyLog []reply

func (l *replyLog) push(r reply) { *l = append(*l, r) }

func (l *replyLog) readyCount() uint64 {
	var n uint64
	for _, r := range *l {
		if r.kind == replyReady {
			n++
		}
	}
	return n
}

// wireMsg builds a whole v3 message of type typ whose body is the parts
// joined.
func wireMsg(typ byte, parts ...string) []byte {
	n := 0
	for _, p := range parts {
		n += len(p)
	}
	m := pgwire.AppendHeader(nil, typ, n)
	for _, p := range parts {
		m = append(m, p...)
	}
	return m
}

func parseMsg(name, rest string) []byte { return wireMsg('P', name, "\x00", rest) }

func bindMsg(portal, stmt, params string) []byte {
	return wireMsg('B', portal, "\x00", stmt, "\x00", params)
}

func describeMsg(kind byte, name string) []byte { return wireMsg('D', string(kind), name, "\x00") }

func closeMsg(kind byte, name string) []byte { return wireMsg('C', string(kind), name, "\x00") }

func joinMsgs(ms ...[]byte) []byte { return bytes.Join(ms, nil) }

const (
	rwContext = "SET ROLE acme"
	// rwQuery is a Parse body after the name: the query and one int4
	// parameter type.
	rwQuery = "SELECT $1::int\x00\x00\x01\x00\x00\x00\x17"
	// rwParams is a Bind body after the statement name: no formats, one
	// parameter "5", no result formats.
	rwParams = "\x00\x00\x00\x01\x00\x00\x00\x015\x00\x00"
)

type rwStep struct {
	m     []byte
	epoch uint64
}

func TestRewriter(t *testing.T) {
	srv := statementName(rwContext, []byte(rwQuery))
	unnamedParse := parseMsg("", rwQuery)
	execute := wireMsg('E', "\x00", "\x00\x00\x00\x00")
	sync := wireMsg('S')
	injectedParse := reply{kind: replyParse, inject: true, name: srv}
	injectedClose := reply{kind: replyClose, inject: true}

	cases := []struct {
		name string
		// before is sent first, against a statement set of its own.
		before []rwStep
		// have is what the connection m is sent on holds.
		have  []string
		m     []byte
		epoch uint64
		want  []byte
		// replies are the replies expected for m.
		replies []reply
		// after must be held by the connection afterwards.
		after []string
	}{
		{
			name:    "unnamed Parse passes through",
			m:       unnamedParse,
			epoch:   1,
			want:    unnamedParse,
			replies: []reply{{kind: replyParse}},
		},
		{
			name:    "named Parse is renamed, behind a Close of the server name",
			m:       parseMsg("a", rwQuery),
			epoch:   1,
			want:    joinMsgs(closeMsg('S', srv), parseMsg(srv, rwQuery)),
			replies: []reply{injectedClose, {kind: replyParse, name: srv}},
			after:   []string{srv},
		},
		{
			name:    "named Parse of a statement the connection holds closes it first",
			have:    []string{srv},
			m:       parseMsg("a", rwQuery),
			epoch:   1,
			want:    joinMsgs(closeMsg('S', srv), parseMsg(srv, rwQuery)),
			replies: []reply{injectedClose, {kind: replyParse, name: srv}},
			after:   []string{srv},
		},
		{
			name:    "Bind of a statement the connection lacks is preceded by its Parse",
			before:  []rwStep{{parseMsg("a", rwQuery), 1}},
			m:       bindMsg("", "a", rwParams),
			epoch:   2,
			want:    joinMsgs(closeMsg('S', srv), parseMsg(srv, rwQuery), bindMsg("", srv, rwParams)),
			replies: []reply{injectedClose, injectedParse},
			after:   []string{srv},
		},
		{
			name:   "Bind of a statement the connection holds is renamed",
			before: []rwStep{{parseMsg("a", rwQuery), 1}},
			have:   []string{srv},
			m:      bindMsg("p", "a", rwParams),
			epoch:  2,
			want:   bindMsg("p", srv, rwParams),
		},
		{
			name:    "Describe of a statement the connection lacks is preceded by its Parse",
			before:  []rwStep{{parseMsg("a", rwQuery), 1}},
			m:       describeMsg('S', "a"),
			epoch:   2,
			want:    joinMsgs(closeMsg('S', srv), parseMsg(srv, rwQuery), describeMsg('S', srv)),
			replies: []reply{injectedClose, injectedParse},
			after:   []string{srv},
		},
		{
			name:   "Describe of a statement the connection holds is renamed",
			before: []rwStep{{parseMsg("a", rwQuery), 1}},
			have:   []string{srv},
			m:      describeMsg('S', "a"),
			epoch:  1,
			want:   describeMsg('S', srv),
		},
		{
			name:  "Bind of a statement never prepared names no statement",
			have:  []string{srv}, // prepared by another client of the context
			m:     bindMsg("", "a", rwParams),
			epoch: 1,
			want:  bindMsg("", unknownStatement, rwParams),
		},
		{
			name:  "Describe of a statement never prepared names no statement",
			have:  []string{srv},
			m:     describeMsg('S', "a"),
			epoch: 1,
			want:  describeMsg('S', unknownStatement),
		},
		{
			name:    "Close of a statement forgets the client's name only",
			before:  []rwStep{{parseMsg("a", rwQuery), 1}},
			have:    []string{srv},
			m:       closeMsg('S', "a"),
			epoch:   1,
			want:    closeMsg('S', unknownStatement),
			replies: []reply{{kind: replyClose}},
			after:   []string{srv},
		},
		{
			name:   "Bind after Close names no statement",
			before: []rwStep{{parseMsg("a", rwQuery), 1}, {closeMsg('S', "a"), 1}},
			have:   []string{srv},
			m:      bindMsg("", "a", rwParams),
			epoch:  1,
			want:   bindMsg("", unknownStatement, rwParams),
		},
		{
			name:   "Close of one name keeps another for the same statement",
			before: []rwStep{{parseMsg("a", rwQuery), 1}, {parseMsg("b", rwQuery), 1}, {closeMsg('S', "a"), 1}},
			have:   []string{srv},
			m:      bindMsg("", "b", rwParams),
			epoch:  2,
			want:   bindMsg("", srv, rwParams),
		},
		{
			name:    "Close of a portal passes through",
			m:       closeMsg('P', "p"),
			epoch:   1,
			want:    closeMsg('P', "p"),
			replies: []reply{{kind: replyClose}},
		},
		{
			name:  "Describe of a portal passes through",
			m:     describeMsg('P', "p"),
			epoch: 1,
			want:  describeMsg('P', "p"),
		},
		{
			name:    "Close of the unnamed statement passes through",
			m:       closeMsg('S', ""),
			epoch:   1,
			want:    closeMsg('S', ""),
			replies: []reply{{kind: replyClose}},
		},
		{
			name:    "Bind of the unnamed statement in a later binding sends its Parse again",
			before:  []rwStep{{unnamedParse, 1}},
			m:       bindMsg("", "", rwParams),
			epoch:   2,
			want:    joinMsgs(unnamedParse, bindMsg("", "", rwParams)),
			replies: []reply{{kind: replyParse, inject: true}},
		},
		{
			name:   "Bind of the unnamed statement in the binding that parsed it",
			before: []rwStep{{unnamedParse, 1}},
			m:      bindMsg("", "", rwParams),
			epoch:  1,
			want:   bindMsg("", "", rwParams),
		},
		{
			name:   "the unnamed statement is sent again once per binding",
			before: []rwStep{{unnamedParse, 1}, {bindMsg("", "", rwParams), 2}},
			m:      bindMsg("", "", rwParams),
			epoch:  2,
			want:   bindMsg("", "", rwParams),
		},
		{
			name:    "the last unnamed Parse is the one sent again",
			before:  []rwStep{{parseMsg("", "SELECT 1\x00\x00\x00"), 1}, {unnamedParse, 2}},
			m:       describeMsg('S', ""),
			epoch:   3,
			want:    joinMsgs(unnamedParse, describeMsg('S', "")),
			replies: []reply{{kind: replyParse, inject: true}},
		},
		{
			name:    "Describe of the unnamed statement in a later binding sends its Parse again",
			before:  []rwStep{{unnamedParse, 1}},
			m:       describeMsg('S', ""),
			epoch:   2,
			want:    joinMsgs(unnamedParse, describeMsg('S', "")),
			replies: []reply{{kind: replyParse, inject: true}},
		},
		{
			name:   "Describe of the unnamed statement in the binding that parsed it",
			before: []rwStep{{unnamedParse, 1}},
			m:      describeMsg('S', ""),
			epoch:  1,
			want:   describeMsg('S', ""),
		},
		{
			name:  "Bind of an unnamed statement never parsed passes through",
			m:     bindMsg("", "", rwParams),
			epoch: 3,
			want:  bindMsg("", "", rwParams),
		},
		{
			name:   "Bind with no NUL passes through",
			before: []rwStep{{parseMsg("a", rwQuery), 1}},
			m:      wireMsg('B', "a"),
			epoch:  2,
			want:   wireMsg('B', "a"),
		},
		{
			name:   "Bind with a portal but no statement NUL passes through",
			before: []rwStep{{parseMsg("a", rwQuery), 1}},
			m:      wireMsg('B', "\x00a"),
			epoch:  2,
			want:   wireMsg('B', "\x00a"),
		},
		{
			name:  "Describe with no body passes through",
			m:     wireMsg('D'),
			epoch: 1,
			want:  wireMsg('D'),
		},
		{
			name:  "Describe of a statement with no name passes through",
			m:     wireMsg('D', "S"),
			epoch: 1,
			want:  wireMsg('D', "S"),
		},
		{
			name:   "Describe with no NUL passes through",
			before: []rwStep{{parseMsg("a", rwQuery), 1}},
			m:      wireMsg('D', "Sa"),
			epoch:  2,
			want:   wireMsg('D', "Sa"),
		},
		{
			name:    "Close with no body passes through, still owing its reply",
			m:       wireMsg('C'),
			epoch:   1,
			want:    wireMsg('C'),
			replies: []reply{{kind: replyClose}},
		},
		{
			name:    "Close with no NUL passes through",
			before:  []rwStep{{parseMsg("a", rwQuery), 1}},
			m:       wireMsg('C', "Sa"),
			epoch:   1,
			want:    wireMsg('C', "Sa"),
			replies: []reply{{kind: replyClose}},
		},
		{
			name:    "Parse with no NUL passes through as an unnamed one",
			m:       wireMsg('P', "a"),
			epoch:   1,
			want:    wireMsg('P', "a"),
			replies: []reply{{kind: replyParse}},
		},
		{
			name:  "Execute passes through",
			m:     execute,
			epoch: 1,
			want:  execute,
		},
		{
			name:  "Sync passes through",
			m:     sync,
			epoch: 1,
			want:  sync,
		},
		{
			name:  "Flush passes through",
			m:     wireMsg('H'),
			epoch: 1,
			want:  wireMsg('H'),
		},
		{
			name:  "Query passes through",
			m:     wireMsg('Q', "SELECT 1\x00"),
			epoch: 1,
			want:  wireMsg('Q', "SELECT 1\x00"),
		},
	}
	for _, c := range cases {
		t.Run(c.name, func(t *testing.T) {
			rw := newRewriter(rwContext)
			scratch := fakeStmts{}
			var discard replyLog
			for _, s := range c.before {
				rw.rewrite(nil, s.m, scratch, s.epoch, &discard)
			}
			cs := fakeStmts{}
			for _, name := range c.have {
				cs.AddStatement(name)
			}
			var got replyLog
			prefix := []byte("prefix")
			m := slices.Clone(c.m)
			out := rw.rewrite(slices.Clone(prefix), m, cs, c.epoch, &got)
			if !bytes.Equal(m, c.m) {
				t.Errorf("the message was modified: %q", m)
			}
			if !bytes.HasPrefix(out, prefix) {
				t.Fatalf("out lost what it held: %q", out)
			}
			if out := out[len(prefix):]; !bytes.Equal(out, c.want) {
				t.Errorf("out = %q; want %q", out, c.want)
			}
			if !slices.Equal(got, c.replies) {
				t.Errorf("replies = %+v; want %+v", got, c.replies)
			}
			for _, name := range c.after {
				if !cs.HasStatement(name) {
					t.Errorf("the connection does not hold %s", name)
				}
			}
		})
	}
}

func TestRewriterContextsNeverShareAStatement(t *testing.T) {
	a, b := newRewriter("SET ROLE a"), newRewriter("SET ROLE b")
	var q replyLog
	outA := a.rewrite(nil, parseMsg("s", rwQuery), fakeStmts{}, 1, &q)
	outB := b.rewrite(nil, parseMsg("s", rwQuery), fakeStmts{}, 1, &q)
	nameA, nameB := statementName("SET ROLE a", []byte(rwQuery)), statementName("SET ROLE b", []byte(rwQuery))
	if nameA == nameB {
		t.Fatal("two contexts got the same statement name")
	}
	if want := joinMsgs(closeMsg('S', nameA), parseMsg(nameA, rwQuery)); !bytes.Equal(outA, want) {
		t.Errorf("context a: %q; want %q", outA, want)
	}
	if want := joinMsgs(closeMsg('S', nameB), parseMsg(nameB, rwQuery)); !bytes.Equal(outB, want) {
		t.Errorf("context b: %q; want %q", outB, want)
	}
	// b's statement on the connection is nothing to a.
	cs := fakeStmts{nameB: true}
	var got replyLog
	if out, want := a.rewrite(nil, bindMsg("", "s", rwParams), cs, 2, &got), bindMsg("", nameA, rwParams); !bytes.HasSuffix(out, want) {
		t.Errorf("a's Bind: %q; want it to end with %q", out, want)
	}
	if !slices.Equal(got, []reply{{kind: replyClose, inject: true}, {kind: replyParse, inject: true, name: nameA}}) {
		t.Errorf("a's Bind: replies %+v", got)
	}
}

// rewriterOn sends client messages through rw to c, as the client loop
// does, and runs them on the server at each serve.
type rewriterOn struct {
	t     *testing.T
	rw    *rewriter
	c     *modelConn
	q     replyQueue
	out   []byte
	epoch uint64
}

func (r *rewriterOn) send(ms ...[]byte) {
	for _, m := range ms {
		if m[0] == 'S' {
			r.q.push(reply{kind: replyReady})
			r.out = append(r.out, m...)
			continue
		}
		r.out = r.rw.rewrite(r.out, m, r.c.record, r.epoch, &r.q)
	}
}

func (r *rewriterOn) serve() {
	r.c.serve(r.t, r.out, &r.q, false)
	r.out = r.out[:0]
}

// A Close and a Parse the proxy wrote behind an error are skipped by the
// server, which keeps the statement; the Parse still pending at the
// ReadyForQuery makes the proxy forget it on the connection. Preparing
// the statement again there must not fail with 42P05 (duplicate prepared
// statement).
func TestRewriterStatementSkippedBehindAnError(t *testing.T) {
	srv := statementName(rwContext, []byte(rwQuery))
	r := &rewriterOn{t: t, rw: newRewriter(rwContext), c: newModelConn(), epoch: 1}
	r.c.record.AddStatement(srv)
	r.c.named[srv] = true                               // prepared by another client of the context
	failing := wireMsg('E', "\x00", "\x00\x00\x00\x01") // fails on modelConn
	r.send(failing, parseMsg("a", rwQuery), wireMsg('S'))
	r.serve()
	r.send(bindMsg("", "a", rwParams), wireMsg('S'))
	r.serve()
	if want := []bool{true, false}; !slices.Equal(r.c.errs, want) {
		t.Errorf("batches failed: %v; want %v", r.c.errs, want)
	}
}

// A batch behind a failed one is written before the failure is known:
// the statement the failed batch prepared, and the connection's record
// forgets, is prepared by the next one, which succeeds. Using it again
// must not fail with 42P05.
func TestRewriterStatementPreparedBehindAFailedBatch(t *testing.T) {
	r := &rewriterOn{t: t, rw: newRewriter(rwContext), c: newModelConn(), epoch: 2}
	var discard replyLog
	r.rw.rewrite(nil, parseMsg("a", rwQuery), fakeStmts{}, 1, &discard)
	failing := wireMsg('E', "\x00", "\x00\x00\x00\x01")
	r.send(failing, bindMsg("", "a", rwParams), wireMsg('S'))
	r.send(parseMsg("b", rwQuery), wireMsg('S'))
	r.serve()
	r.send(bindMsg("", "a", rwParams), wireMsg('S'))
	r.serve()
	if want := []bool{true, false, false}; !slices.Equal(r.c.errs, want) {
		t.Errorf("batches failed: %v; want %v", r.c.errs, want)
	}
}

// modelConn is a server connection as FuzzRewriter sees it: the proxy's
// record of its statements and what the server holds.
type modelConn struct {
	record  fakeStmts
	named   map[string]bool
	unnamed bool
	// failed: skipping to Sync after an error.
	failed bool
	// errs has, per Sync answered, whether its batch failed.
	errs []bool
}

func newModelConn() *modelConn { return &modelConn{record: fakeStmts{}, named: map[string]bool{}} }

// serve runs out on the server and consumes the replies from q as the
// relay does. With strict, the proxy's record was up to date when out
// was written (no batch was in flight), so a Bind or Describe of a
// statement the record holds must find it.
func (c *modelConn) serve(t *testing.T, out []byte, q *replyQueue, strict bool) {
	t.Helper()
	for len(out) > 0 {
		n := 1 + int(binary.BigEndian.Uint32(out[1:]))
		m := out[:n]
		out = out[n:]
		switch {
		case m[0] == 'S':
			c.errs = append(c.errs, c.failed)
			c.failed = false
			c.reply(t, q, 'Z')
		case c.failed:
		default:
			reply, ok := c.exec(t, m[0], m[5:], strict)
			if !ok {
				c.failed = true
				reply = 'E'
			}
			c.reply(t, q, reply)
		}
	}
}

// reply is the relay's handling of the server's reply typ.
func (c *modelConn) reply(t *testing.T, q *replyQueue, typ byte) {
	t.Helper()
	switch typ {
	case pgwire.ParseComplete, pgwire.CloseComplete:
		r, ok := q.pop()
		want := replyParse
		if typ == pgwire.CloseComplete {
			want = replyClose
		}
		if !ok || r.kind != want {
			t.Fatalf("server sent %c; the proxy expected %+v (%v)", typ, r, ok)
		}
	case pgwire.ReadyForQuery:
		if q.owed() == 0 {
			t.Fatal("server sent a ReadyForQuery the proxy did not expect")
		}
		q.readyFor('I', func(name string, _ uint64) { c.record.ForgetStatement(name) })
	}
}

// exec runs one extended-protocol message or Query and returns the
// server's reply type; ok is false when it fails.
func (c *modelConn) exec(t *testing.T, typ byte, body []byte, strict bool) (reply byte, ok bool) {
	t.Helper()
	switch typ {
	case 'Q':
		c.unnamed = false
		return 'Z', true
	case 'H':
		return 0, len(body) == 0
	case 'E':
		_, rest, ok := pgwire.CString(body)
		// Execute with a row limit of 1 is how the fuzz input makes a
		// statement fail.
		return 'C', ok && len(rest) == 4 && binary.BigEndian.Uint32(rest) != 1
	case 'P':
		name, rest, ok := pgwire.CString(body)
		if !ok || !validParseRest(rest) {
			return 0, false
		}
		if bytes.Contains(rest, []byte("FAIL")) {
			return 0, false
		}
		if len(name) == 0 {
			c.unnamed = true
			return '1', true
		}
		if c.named[string(name)] {
			t.Errorf("the proxy parsed %s, which the server holds: 42P05", name)
			return 0, false
		}
		c.named[string(name)] = true
		return '1', true
	case 'B':
		_, rest, ok := pgwire.CString(body)
		if !ok {
			return 0, false
		}
		name, _, ok := pgwire.CString(rest)
		if !ok || !c.holds(t, name, strict) {
			return 0, false
		}
		return '2', true
	case 'D', 'C':
		if len(body) < 2 {
			return 0, false
		}
		name, _, ok := pgwire.CString(body[1:])
		if !ok {
			return 0, false
		}
		switch body[0] {
		case 'P':
		case 'S':
			if typ == 'C' {
				if len(name) == 0 {
					c.unnamed = false
				}
				delete(c.named, string(name))
			} else if !c.holds(t, name, strict) {
				return 0, false
			}
		default:
			return 0, false
		}
		if typ == 'C' {
			return '3', true
		}
		return 't', true
	}
	return 0, false
}

// holds reports whether the server holds statement name.
func (c *modelConn) holds(t *testing.T, name []byte, strict bool) bool {
	t.Helper()
	if len(name) == 0 {
		return c.unnamed
	}
	if c.named[string(name)] {
		return true
	}
	if strict && string(name) != unknownStatement {
		t.Errorf("the proxy used %s, which the server lacks", name)
	}
	return false
}

// validParseRest reports whether rest is a Parse body after the name:
// the query, then the parameter types.
func validParseRest(rest []byte) bool {
	_, types, ok := pgwire.CString(rest)
	return ok && len(types) >= 2 && len(types) == 2+4*int(binary.BigEndian.Uint16(types))
}

var (
	fuzzNames   = []string{"", "a", "b", "s1"}
	fuzzQueries = []string{
		"SELECT 1\x00\x00\x00",
		"SELECT $1\x00\x00\x01\x00\x00\x00\x17",
		"SELECT FAIL\x00\x00\x00",
	}
)

// rewriterRun is one FuzzRewriter input at work: one client's rewriter,
// the server connections its bindings land on, and what the checks need
// to know of the client's past.
type rewriterRun struct {
	t     *testing.T
	in    []byte
	rw    *rewriter
	conns [2]*modelConn
	conn  *modelConn
	q     replyQueue
	epoch uint64
	// lazy: the server's replies are read only at drain operations, so
	// the client's next batches are rewritten first (pipelining).
	lazy bool
	// out holds what was written to conn and not yet run.
	out []byte
	// partial: a message since the last Sync or Query; the binding stays.
	partial bool
	// broken: a message with a wrong length word was sent; only the
	// absence of panics is checked from there on.
	broken bool
	// ours are the server names of the client's named Parses.
	ours map[string]bool
	// clientUnnamed: the client sent an unnamed Parse; unnamedHere: one
	// was written in this binding.
	clientUnnamed, unnamedHere bool
}

func (r *rewriterRun) next() byte {
	if len(r.in) == 0 {
		return 0
	}
	b := r.in[0]
	r.in = r.in[1:]
	return b
}

func (r *rewriterRun) run() {
	r.lazy = r.next()&1 != 0
	for len(r.in) > 0 {
		op, x := r.next(), r.next()
		switch op % 12 {
		case 0, 1:
			q := fuzzQueries[int(x>>2)%len(fuzzQueries)]
			r.send(parseMsg(fuzzNames[x%4], q))
		case 2, 3:
			portal := ""
			if x&0x80 != 0 {
				portal = "p"
			}
			r.send(bindMsg(portal, fuzzNames[x%4], "\x00\x00\x00\x00\x00\x00"))
		case 4:
			r.send(describeMsg("SP"[x>>7], fuzzNames[x%4]))
		case 5:
			r.send(closeMsg("SP"[x>>7], fuzzNames[x%4]))
		case 6:
			r.send(wireMsg('E', "\x00", string(binary.BigEndian.AppendUint32(nil, uint32(x%3)))))
		case 7:
			r.send(wireMsg('S'))
		case 8:
			typ := "PBDCE"[int(x&0x7f)%5]
			k := int(r.next()) % 16
			body := r.in[:min(len(r.in), k)]
			r.in = r.in[len(body):]
			m := wireMsg(typ, string(body))
			if x&0x80 != 0 && len(body) > 0 {
				// A length word the message does not have.
				binary.BigEndian.PutUint32(m[1:], uint32(len(m)))
				r.broken = true
			}
			r.send(m)
		case 9:
			r.drain()
		case 10:
			r.rebind(x)
		case 11:
			if x&1 != 0 && !r.partial {
				r.send(wireMsg('Q', "SELECT 1\x00"))
			} else {
				r.send(wireMsg('H'))
			}
		}
	}
	r.drain()
	if !r.broken && !r.partial && r.q.owed() != 0 {
		r.t.Fatalf("%d ReadyForQuery still owed after a drain", r.q.owed())
	}
}

// send is the client loop's handling of one client message m (message in
// txclient.go), then the checks on what it wrote.
func (r *rewriterRun) send(m []byte) {
	r.noteClient(m)
	if m[0] == 'S' || m[0] == 'Q' {
		r.partial = false
		r.q.push(reply{kind: replyReady})
		r.out = append(r.out, m...)
		if !r.lazy {
			r.drain()
		}
		return
	}
	r.partial = true
	before := maps.Clone(r.conn.record)
	start := len(r.out)
	r.out = r.rw.rewrite(r.out, m, r.conn.record, r.epoch, &r.q)
	if !r.broken {
		r.check(r.out[start:], before)
	}
}

// noteClient records what the checks must know of client message m.
func (r *rewriterRun) noteClient(m []byte) {
	if m[0] != 'P' {
		return
	}
	name, rest, ok := pgwire.CString(m[5:])
	if !ok || len(name) == 0 {
		r.clientUnnamed = true
		return
	}
	r.ours[statementName(r.rw.context, rest)] = true
}

// check checks what one client message was rewritten to: well-formed
// messages, statement names the client may use, and statements present
// (as far as the record knows) when used.
func (r *rewriterRun) check(out []byte, before fakeStmts) {
	t := r.t
	avail := before
	for len(out) > 0 {
		if len(out) < 5 {
			t.Fatalf("partial header %q", out)
		}
		n := 1 + int(binary.BigEndian.Uint32(out[1:]))
		if n < 5 || n > len(out) {
			t.Fatalf("length word %d with %d bytes left: %q", n-1, len(out), out)
		}
		m := out[:n]
		out = out[n:]
		name, ok := statementOf(m)
		if !ok {
			if m[0] == 'P' {
				// Sent as an unnamed Parse, which it is to the rewriter.
				r.unnamedHere = true
			}
			continue
		}
		if len(name) > 0 && name != unknownStatement && !r.ours[name] {
			t.Fatalf("%c names %q, not a statement of the client's", m[0], name)
		}
		switch {
		case m[0] == 'P':
			if name == "" {
				r.unnamedHere = true
			} else {
				avail[name] = true
			}
		case m[0] == 'C':
			if name != "" {
				avail[name] = false
			}
		case name == "":
			if r.clientUnnamed && !r.unnamedHere {
				t.Fatalf("%c of the unnamed statement not parsed in this binding", m[0])
			}
		case name != unknownStatement:
			if !avail[name] {
				t.Fatalf("%c of %s, neither on the connection nor parsed first", m[0], name)
			}
			if !r.conn.record.HasStatement(name) {
				t.Fatalf("%s used but not on the connection's record", name)
			}
		}
	}
}

// statementOf returns the statement a Parse, Bind, or Describe or Close
// of a statement names.
func statementOf(m []byte) (string, bool) {
	body := m[5:]
	switch m[0] {
	case 'P':
		name, _, ok := pgwire.CString(body)
		return string(name), ok
	case 'B':
		_, rest, ok := pgwire.CString(body)
		if !ok {
			return "", false
		}
		name, _, ok := pgwire.CString(rest)
		return string(name), ok
	case 'D', 'C':
		if len(body) < 2 || body[0] != 'S' {
			return "", false
		}
		name, _, ok := pgwire.CString(body[1:])
		return string(name), ok
	}
	return "", false
}

// drain runs what was written on the server and reads its replies.
func (r *rewriterRun) drain() {
	out := r.out
	r.out = r.out[:0]
	if r.broken {
		return
	}
	r.conn.serve(r.t, out, &r.q, !r.lazy)
	if r.q.owed() == 0 && !r.partial {
		for name := range r.conn.record {
			if !r.conn.named[name] {
				r.t.Fatalf("the record holds %s, which the server lacks", name)
			}
		}
	}
}

// rebind ends the binding, when the client has nothing in flight, and
// binds the client's next transaction to one of the connections, which
// other clients may have used in between.
func (r *rewriterRun) rebind(x byte) {
	if r.partial {
		return
	}
	r.drain()
	if r.broken {
		return
	}
	if r.q.owed() != 0 {
		r.t.Fatalf("%d ReadyForQuery owed at the end of a binding", r.q.owed())
	}
	r.epoch++
	r.conn = r.conns[x&1]
	r.unnamedHere = false
	c := r.conn
	if x&2 != 0 {
		// Another client of the context prepared a statement.
		name := statementName(r.rw.context, []byte(fuzzQueries[int(x>>4)%len(fuzzQueries)]))
		c.record.AddStatement(name)
		c.named[name] = true
	}
	if x&4 != 0 {
		// A client of another context prepared one.
		name := statementName("SET ROLE other", []byte(fuzzQueries[int(x>>4)%len(fuzzQueries)]))
		c.record.AddStatement(name)
		c.named[name] = true
	}
	if x&8 != 0 {
		// Another client's unnamed statement.
		c.unnamed = true
	}
	if x&0x40 != 0 {
		// The pool's DEALLOCATE ALL past MaxStatementsPerConn.
		clear(c.record)
		clear(c.named)
	}
}

func FuzzRewriter(f *testing.F) {
	f.Add([]byte{})
	// Parse a, Bind a, Execute, Sync; another connection; Bind a, Sync.
	f.Add([]byte{0, 0, 1, 2, 1, 6, 0, 7, 0, 10, 1, 2, 1, 7, 0})
	// An Execute fails before a Parse of a statement the connection holds.
	f.Add([]byte{0, 10, 2, 2, 0, 6, 1, 0, 1, 7, 0, 2, 1, 7, 0})
	// The same, pipelined.
	f.Add([]byte{1, 10, 2, 2, 0, 6, 1, 0, 1, 7, 0, 2, 1, 7, 0, 9, 0, 2, 1, 7, 0, 9, 0})
	// Unnamed Parse, Sync, then its Bind and Describe on another connection.
	f.Add([]byte{0, 0, 0, 7, 0, 10, 1, 2, 0, 4, 0, 6, 0, 7, 0})
	// Garbage bodies, one with a wrong length word.
	f.Add([]byte{0, 8, 1, 3, 'a', 0, 'b', 8, 3, 0, 8, 0x82, 2, 'S', 'x', 7, 0})
	f.Fuzz(func(t *testing.T, in []byte) {
		r := &rewriterRun{t: t, in: in, rw: newRewriter(rwContext), ours: map[string]bool{}}
		r.conns = [2]*modelConn{newModelConn(), newModelConn()}
		r.conn = r.conns[0]
		r.epoch = 1
		r.run()
	})
}

// TestRewriterDuplicateNames: a second Parse of a name is judged only once
// the first one's ReadyForQuery has been answered, and a name whose Parse
// failed is free again.
func TestRewriterDuplicateNames(t *testing.T) {
	rw := newRewriter(rwContext)
	var q replyLog
	rw.rewrite(nil, parseMsg("s", rwQuery), fakeStmts{}, 1, &q)
	again := parseMsg("s", "SELECT 2\x00\x00\x00")
	for _, tt := range []struct {
		answered uint64
		dup      bool
	}{{0, false}, {1, true}, {2, true}} {
		if name, dup := rw.duplicate(again, tt.answered); dup != tt.dup || (dup && name != "s") {
			t.Errorf("answered %d: duplicate = %q %v; want %v", tt.answered, name, dup, tt.dup)
		}
	}
	if _, dup := rw.duplicate(parseMsg("", rwQuery), 5); dup {
		t.Error("the unnamed statement is never a duplicate")
	}
	rw.forgetFailed(statementName(rwContext, []byte(rwQuery)), 2)
	if _, dup := rw.duplicate(again, 2); !dup {
		t.Error("forgetFailed of another ReadyForQuery's Parse forgot s")
	}
	rw.forgetFailed(statementName(rwContext, []byte(rwQuery)), 1)
	if _, dup := rw.duplicate(again, 2); dup {
		t.Error("s is still known after its Parse failed")
	}
}
