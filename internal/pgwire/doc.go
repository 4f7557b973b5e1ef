// Package pgwire is the proxy's one implementation of PostgreSQL v3
// message framing for its relay loops (session mode's forwardClient and
// backendToClient, transaction mode's relay and clientLoop): the 5-byte
// header (type byte, then a signed Int32 length that counts itself), its
// checks, reading a message whole or streaming its tail, and for each
// message the loop's choice of forwarding it, dropping it or writing
// bytes of its own in front of it. The loops decide what to do with a
// message; this package owns how the bytes get there. It decodes nothing
// beyond the header (CString and Statement are the helpers the statement
// policy and ParameterStatus need) and uses only the standard library.
//
// # Batching
//
// The proxy's throughput rests on one write per read: every message that
// arrives in one read and is forwarded leaves in one write, straight out
// of the read buffer. A Scanner keeps that: Forward (or Next, which
// forwards the current message unless it was discarded) only counts a
// buffered message as pending; the pending bytes go out in one write
// right before the Scanner would block on a read, or when the caller
// calls Flush, Discard or Write. A message longer than the read buffer
// streams through it a buffer at a time, unless its type is asked for
// whole (Whole, WholeAll): then it is read into a buffer of the
// Scanner's own, kept for the next such message only up to MaxRetained
// (so that one huge message does not stay pinned for the connection's
// life), or lent for that message by the caller's Buffers (SetBuffers),
// which can bound that memory across Scanners; it is written on its own
// when forwarded. A nil destination consumes what is forwarded.
//
// # Ownership
//
// Message.Bytes belongs to the Scanner and is valid until the next call
// on it (Next, Forward, Discard, Write, Flush, Reset, Release): a caller
// that keeps any of it copies it, and one that holds on to it past that
// call (in a field, say) keeps a buffer alive that the Scanner meant to
// free or give back. Bytes handed to Write are written before it
// returns and not kept.
//
// # Errors
//
// A read error (the source closing, a past deadline set to wake a
// blocked read) comes back from the call that read, and nothing is lost
// or repeated: what was forwarded was written before the read, the bytes
// that came stay buffered, and calling Next again resumes where the
// failed call stopped, also inside a long message being streamed,
// dropped or read whole. AtBoundary() && Buffered() == 0 tells whether
// the source is then at rest between messages (at io.EOF: whether it
// ended cleanly). A write error comes back as a *WriteError wrapping the
// destination's error, so "the source failed" and "the destination
// failed" stay apart; the destination's state is unknown and the Scanner
// should be abandoned (Release gives back what it holds). An error from
// Buffers.Get comes back from Next as it is, with nothing of the message
// consumed. ErrInvalidLength (a length below 4, negative
// included) and *TooLargeError (a body over SetMaxBody's limit, reported
// before any of the body is read or allocated) mean the stream cannot be
// framed any further; what was forwarded before it may still be pending,
// and Flush writes it.
package pgwire
