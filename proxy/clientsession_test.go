package proxy

import (
	"errors"
	"testing"
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
	q.readyFor(nil)
	q.readyFor(nil)
	if got := q.takeRefusal(); got != why {
		t.Fatalf("takeRefusal = %v; want the queued refusal", got)
	}
	if got := q.takeRefusal(); got != nil {
		t.Fatalf("a refusal was taken twice: %v", got)
	}
	var forgot []string
	q.readyFor(func(name string) { forgot = append(forgot, name) })
	if len(forgot) != 1 || forgot[0] != "tp_a" {
		t.Fatalf("forgot %v; want the Parse still pending at its ReadyForQuery", forgot)
	}
	if q.owed() != 1 {
		t.Fatalf("owed %d; want 1", q.owed())
	}
	q.readyFor(nil)
	if _, ok := q.pop(); ok || q.owed() != 0 {
		t.Fatalf("queue not empty after every reply came: owed %d", q.owed())
	}
}
