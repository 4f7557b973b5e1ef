package pgwire

import (
	"bytes"
	"encoding/binary"
)

// AppendHeader appends a message header: typ and the length word of a
// body of n bytes.
func AppendHeader(b []byte, typ byte, n int) []byte {
	b = append(b, typ, 0, 0, 0, 0)
	binary.BigEndian.PutUint32(b[len(b)-4:], uint32(4+n))
	return b
}

// CString splits a NUL-terminated string off b; ok is false when b holds
// no NUL.
func CString(b []byte) (s, rest []byte, ok bool) {
	i := bytes.IndexByte(b, 0)
	if i < 0 {
		return nil, nil, false
	}
	return b[:i], b[i+1:], true
}

// Statement returns the SQL text of a whole Query or Parse message: the
// string up to its NUL, as the server will read it.
func Statement(m []byte) []byte {
	body := m[HeaderSize:]
	if m[0] == Parse {
		i := bytes.IndexByte(body, 0)
		if i < 0 {
			return body
		}
		body = body[i+1:]
	}
	if i := bytes.IndexByte(body, 0); i >= 0 {
		body = body[:i]
	}
	return body
}
