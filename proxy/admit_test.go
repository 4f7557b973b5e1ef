package proxy

import (
	"encoding/binary"
	"testing"

	"github.com/tenantproxy/tenantproxy/internal/pgerr"
)

func packet(code uint32, rest ...byte) []byte {
	return append(binary.BigEndian.AppendUint32(nil, code), rest...)
}

func TestParseStartupPacket(t *testing.T) {
	tests := []struct {
		name     string
		in       []byte
		wantCode pgerr.Code // CodeInternal: no error
		check    func(t *testing.T, p startupPacket)
	}{
		{name: "startup 3.0", in: packet(protocol30, []byte("user\x00alice.acme\x00options\x00-c tenant=acme\x00\x00")...), check: func(t *testing.T, p startupPacket) {
			if p.params["user"] != "alice.acme" || p.params["options"] != "-c tenant=acme" || len(p.unrecognized) != 0 {
				t.Fatalf("params %q", p.params)
			}
		}},
		{name: "startup 3.2 with protocol options", in: packet(protocol30|2, []byte("user\x00a\x00_pq_.x\x00y\x00\x00")...), check: func(t *testing.T, p startupPacket) {
			if len(p.unrecognized) != 1 || p.unrecognized[0] != "_pq_.x" || p.params["_pq_.x"] != "" {
				t.Fatalf("unrecognized %q params %q", p.unrecognized, p.params)
			}
		}},
		{name: "empty parameter list", in: packet(protocol30, 0), check: func(t *testing.T, p startupPacket) {
			if len(p.params) != 0 {
				t.Fatalf("params %q", p.params)
			}
		}},
		{name: "ssl request", in: packet(codeSSLRequest)},
		{name: "gss request", in: packet(codeGSSENCRequest)},
		{name: "cancel request", in: packet(codeCancelRequest, 0, 0, 0, 7, 1, 2, 3, 4), check: func(t *testing.T, p startupPacket) {
			if p.cancelPID != 7 || string(p.cancelSecret) != "\x01\x02\x03\x04" {
				t.Fatalf("cancel %d %x", p.cancelPID, p.cancelSecret)
			}
		}},
		{name: "protocol 2", in: packet(2 << 16), wantCode: pgerr.CodeFeatureNotSupported},
		{name: "protocol 4", in: packet(4<<16, 0), wantCode: pgerr.CodeFeatureNotSupported},
		{name: "too short", in: []byte{0, 3}, wantCode: pgerr.CodeProtocolViolation},
		{name: "ssl request with a body", in: packet(codeSSLRequest, 1), wantCode: pgerr.CodeProtocolViolation},
		{name: "short cancel", in: packet(codeCancelRequest, 0, 0, 0, 7), wantCode: pgerr.CodeProtocolViolation},
		{name: "unterminated name", in: packet(protocol30, 'u', 's'), wantCode: pgerr.CodeProtocolViolation},
		{name: "unterminated value", in: packet(protocol30, []byte("user\x00al")...), wantCode: pgerr.CodeProtocolViolation},
		{name: "no final terminator", in: packet(protocol30, []byte("user\x00a\x00")...), wantCode: pgerr.CodeProtocolViolation},
		{name: "data after terminator", in: packet(protocol30, []byte("user\x00a\x00\x00x")...), wantCode: pgerr.CodeProtocolViolation},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			p, err := parseStartupPacket(tt.in)
			if tt.wantCode != pgerr.CodeInternal {
				if pgerr.CodeOf(err) != tt.wantCode {
					t.Fatalf("error %v; want code %d", err, tt.wantCode)
				}
				return
			}
			if err != nil {
				t.Fatal(err)
			}
			if tt.check != nil {
				tt.check(t, p)
			}
		})
	}
}

// FuzzParseStartupPacket checks that any bytes either parse or fail with
// a client-facing error, never panic, and that parsed parameters never
// carry a protocol option.
func FuzzParseStartupPacket(f *testing.F) {
	f.Add(packet(protocol30, []byte("user\x00alice.acme\x00database\x00x\x00\x00")...))
	f.Add(packet(codeCancelRequest, 0, 0, 0, 1, 0, 0, 0, 2))
	f.Add(packet(protocol30|2, []byte("_pq_.a\x00b\x00\x00")...))
	f.Fuzz(func(t *testing.T, b []byte) {
		p, err := parseStartupPacket(b)
		if err != nil {
			if pgerr.CodeOf(err) == pgerr.CodeInternal {
				t.Fatalf("error without a code: %v", err)
			}
			return
		}
		for name := range p.params {
			if len(name) >= 5 && name[:5] == "_pq_." {
				t.Fatalf("protocol option %q kept as a parameter", name)
			}
		}
	})
}
