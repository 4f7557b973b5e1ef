package policy

import (
	"strings"

	"github.com/tenantproxy/tenantproxy/internal/pgerr"
)

// Explain is the error a client hears for sql, which Check refused with
// reason: a syntax error (42601, with the parser's message and position,
// as the server would report it) when the parser rejected the text, else
// the refusal (42501, or 54001 for text nested too deeply: CodeOf). It reads the facts Check cached, so it parses
// nothing again.
func (p *Policy) Explain(sql []byte, reason string) *pgerr.Error {
	if strings.HasPrefix(reason, reasonUnparsable) {
		if f, ok := p.cached(sql); ok && f.syntax != nil {
			return &pgerr.Error{Code: pgerr.CodeSyntaxError, Msg: f.syntax.Message, Position: f.syntax.Cursorpos}
		}
	}
	return &pgerr.Error{Code: CodeOf(reason), Msg: reason}
}
