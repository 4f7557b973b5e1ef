package pgerr

import (
	"errors"
	"fmt"
	"go/ast"
	"go/parser"
	"go/token"
	"regexp"
	"testing"
)

var sqlstatePattern = regexp.MustCompile(`^[0-9A-Z]{5}$`)

// TestEveryCodeHasARow walks every Code from the first to the last: a
// code without a row cannot pass, whatever its position.
func TestEveryCodeHasARow(t *testing.T) {
	names := constNames(t)
	if len(names) != int(codeCount) {
		t.Fatalf("errors.go declares %d codes before codeCount, codeCount is %d", len(names), codeCount)
	}
	seen := map[string]Code{}
	for c := Code(0); c < codeCount; c++ {
		r := codes[c]
		if r == (row{}) {
			t.Errorf("%s (%d) has no row in codes", names[c], int(c))
			continue
		}
		if r.name != names[c] {
			t.Errorf("code %d: String() = %q; want the constant's name %q", int(c), c.String(), names[c])
		}
		if prev, dup := seen[r.name]; dup {
			t.Errorf("codes %d and %d are both named %q", int(prev), int(c), r.name)
		}
		seen[r.name] = c
		if !sqlstatePattern.MatchString(c.SQLState()) {
			t.Errorf("%s: SQLSTATE %q is not five digits or upper-case letters", c, c.SQLState())
		}
	}
}

// constNames reads the names of the Code constants, in order, from
// errors.go, so that String is checked against the source rather than
// against a second hand-written list.
func constNames(t *testing.T) []string {
	t.Helper()
	f, err := parser.ParseFile(token.NewFileSet(), "errors.go", nil, 0)
	if err != nil {
		t.Fatal(err)
	}
	var names []string
	for _, d := range f.Decls {
		g, ok := d.(*ast.GenDecl)
		if !ok || g.Tok != token.CONST {
			continue
		}
		for _, s := range g.Specs {
			for _, n := range s.(*ast.ValueSpec).Names {
				if n.Name == "codeCount" {
					return names
				}
				names = append(names, n.Name)
			}
		}
	}
	t.Fatal("errors.go declares no codeCount")
	return nil
}

// TestREADMEErrorTable pins the rows of the README's error table.
func TestREADMEErrorTable(t *testing.T) {
	for _, tt := range []struct {
		code     Code
		fatal    bool
		sqlstate string
	}{
		{CodeNoTenant, true, "28000"},
		{CodeUnknownTenant, true, "3D000"},
		{CodeTenantSuspended, true, "28000"},
		{CodeAuthFailed, true, "28P01"},
		{CodeStatementRefused, false, "42501"},
		{CodeTooManyConnections, true, "53300"},
		{CodeRateLimited, false, "53400"},
		{CodeQueryCanceled, false, "57014"},
		{CodeShuttingDown, true, "57P01"},
		{CodeOutOfMemory, true, "53200"},
		{CodeInternal, true, "XX000"},
	} {
		if tt.code.Fatal() != tt.fatal || tt.code.SQLState() != tt.sqlstate {
			t.Errorf("%s: fatal=%v %s; want fatal=%v %s", tt.code, tt.code.Fatal(), tt.code.SQLState(), tt.fatal, tt.sqlstate)
		}
	}
}

func TestCodeOutsideTheEnumIsInternal(t *testing.T) {
	for _, c := range []Code{-1, codeCount, 1000} {
		if c.SQLState() != "XX000" || !c.Fatal() {
			t.Errorf("%d: %s fatal=%v; want XX000 FATAL", int(c), c.SQLState(), c.Fatal())
		}
		if want := fmt.Sprintf("Code(%d)", int(c)); c.String() != want {
			t.Errorf("String() = %q; want %q", c.String(), want)
		}
	}
}

func TestCodeOfFindsTheWrappedError(t *testing.T) {
	err := fmt.Errorf("admit: %w", Errorf(CodeAuthFailed, "password authentication failed for user %q", "alice"))
	if got := CodeOf(err); got != CodeAuthFailed {
		t.Errorf("CodeOf = %s; want CodeAuthFailed", got)
	}
	if got := CodeOf(errors.New("plain")); got != CodeInternal {
		t.Errorf("CodeOf(plain error) = %s; want CodeInternal", got)
	}
	inner := errors.New("dial tcp: refused")
	e := &Error{Code: CodeBackendUnavailable, Msg: "could not connect", Err: inner}
	if !errors.Is(e, inner) || e.Error() != "could not connect: dial tcp: refused" {
		t.Errorf("Error = %q, Is(inner) = %v; want the message with the cause, unwrappable", e.Error(), errors.Is(e, inner))
	}
}
