package chatapi

import (
	"go/ast"
	"go/parser"
	"go/token"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"testing"
)

// TestNoSQLFiltersByTenant is the package's promise in a test: no string in
// the chat API's code mentions tenant_id, so none of its SQL can filter by
// tenant (or set the tenant setting). Isolation comes from the proxy.
func TestNoSQLFiltersByTenant(t *testing.T) {
	files, err := filepath.Glob("*.go")
	if err != nil {
		t.Fatal(err)
	}
	literals := 0
	for _, name := range files {
		if strings.HasSuffix(name, "_test.go") {
			continue
		}
		n, hits := tenantIDLiterals(t, name)
		literals += n
		for _, h := range hits {
			t.Errorf("%s; the chat API's SQL must not filter by tenant", h)
		}
	}
	if literals < 50 {
		t.Fatalf("scanned only %d string literals in %v; is the test looking at the package's sources?", literals, files)
	}
	// The scan must be able to fail.
	probe := filepath.Join(t.TempDir(), "probe.go")
	if err := os.WriteFile(probe, []byte("package p\nconst q = `SELECT * FROM messages WHERE Tenant_ID = $1`\n"), 0o644); err != nil {
		t.Fatal(err)
	}
	if _, hits := tenantIDLiterals(t, probe); len(hits) != 1 {
		t.Fatalf("probe with one tenant_id literal: %v; want one hit", hits)
	}
}

// tenantIDLiterals counts the string literals of a Go file and returns
// those that mention tenant_id, in any case, with their position.
func tenantIDLiterals(t *testing.T, path string) (int, []string) {
	t.Helper()
	fset := token.NewFileSet()
	f, err := parser.ParseFile(fset, path, nil, 0)
	if err != nil {
		t.Fatal(err)
	}
	n := 0
	var hits []string
	ast.Inspect(f, func(node ast.Node) bool {
		lit, ok := node.(*ast.BasicLit)
		if !ok || lit.Kind != token.STRING {
			return true
		}
		n++
		s, err := strconv.Unquote(lit.Value)
		if err != nil {
			t.Fatalf("%s: %v", fset.Position(lit.Pos()), err)
		}
		if strings.Contains(strings.ToLower(s), "tenant_id") {
			hits = append(hits, fset.Position(lit.Pos()).String()+": "+strconv.Quote(s))
		}
		return true
	})
	return n, hits
}
