package proxy

import (
	"errors"
	"testing"
	"time"
)

func TestReplyQueueKeepsOrderAndCountsReadies(t *testing.T) {
	var q replyQueue
	why := errors.New("refused")
	q.push(reply{kind: replyReady})
	q.push(reply{kind: replyReady})
	q.push(reply{kind: replyParse, name: "tp_a"})
	q.push(reply{kind: replyRefused, refusal: why})
	q.push(reply{kind: replyReady})
	q.push(reply{kind: replyReady})
	if q.owed() != 4 {
		t.Fatalf("owed %d; want 4", q.owed())
	}
	if len(q.q) != 4 {
		t.Fatalf("%d entries; want consecutive readies to share one (4)", len(q.q))
	}
	q.readyFor('I', nil)
	q.readyFor('I', nil)
	if got := q.takeRefusal(); got != why {
		t.Fatalf("takeRefusal = %v; want the queued refusal", got)
	}
	if got := q.takeRefusal(); got != nil {
		t.Fatalf("a refusal was taken twice: %v", got)
	}
	var forgot []string
	q.readyFor('I', func(name string, _ uint64) { forgot = append(forgot, name) })
	if len(forgot) != 1 || forgot[0] != "tp_a" {
		t.Fatalf("forgot %v; want the Parse still pending at its ReadyForQuery", forgot)
	}
	if q.owed() != 1 {
		t.Fatalf("owed %d; want 1", q.owed())
	}
	q.readyFor('I', nil)
	if _, ok := q.pop(); ok || q.owed() != 0 {
		t.Fatalf("queue not empty after every reply came: owed %d", q.owed())
	}
}

// TestReplyQueueTimesQueriesAndTransactions: a ReadyForQuery measures
// its query from its push (pipelined ones from the previous answer), and
// one that leaves the session idle measures the transaction from its
// first push; answers nobody was owed measure nothing.
func TestReplyQueueTimesQueriesAndTransactions(t *testing.T) {
	var q replyQueue
	if l := q.readyFor('I', nil); l.answered || l.txEnded {
		t.Fatalf("an unowed ReadyForQuery measured %+v", l)
	}
	start := time.Now()             // before the push the transaction is timed from
	q.push(reply{kind: replyReady}) // BEGIN
	time.Sleep(20 * time.Millisecond)
	l := q.readyFor('T', nil)
	if !l.answered || l.txEnded || l.query < 20*time.Millisecond {
		t.Fatalf("BEGIN measured %+v; want a query of at least 20ms and no transaction end", l)
	}
	time.Sleep(10 * time.Millisecond)
	q.push(reply{kind: replyReady}) // pipelined: a statement, then COMMIT
	q.push(reply{kind: replyReady})
	pushed := time.Now()
	if l := q.readyFor('T', nil); !l.answered || l.txEnded || l.query > time.Since(pushed)+time.Millisecond {
		t.Fatalf("the statement measured %+v; want its own wait, not the idle time before it", l)
	}
	time.Sleep(5 * time.Millisecond)
	l = q.readyFor('I', nil)
	took := time.Since(start)
	if !l.answered || !l.txEnded || l.query < 5*time.Millisecond || l.tx < 35*time.Millisecond || l.tx > took {
		t.Fatalf("COMMIT measured %+v; want a query of at least 5ms and the transaction's %v", l, took)
	}
	q.push(reply{kind: replyReady}) // its connection is lost
	time.Sleep(20 * time.Millisecond)
	q.clear()
	q.push(reply{kind: replyReady})
	if l := q.readyFor('I', nil); !l.txEnded || l.tx >= 20*time.Millisecond {
		t.Fatalf("after clear the next transaction measured %+v; want it timed from its own push", l)
	}
}
