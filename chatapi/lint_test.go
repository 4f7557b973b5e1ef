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

// TestPlanAndFeaturesComeFromSQL: the handlers read the tenant's plan and
// features from SQL (planColumns), never from the catalog record the
// request carries (tenantReq.tenant), so that they gate on what the
// tenant's policies see.
func TestPlanAndFeaturesComeFromSQL(t *testing.T) {
	files, err := filepath.Glob("*.go")
	if err != nil {
		t.Fatal(err)
	}
	for _, name := range files {
		if !strings.HasSuffix(name, "_test.go") {
			for _, h := range catalogPlanReads(t, name) {
				t.Errorf("%s reads the catalog's plan or features; read %s through the proxy", h, "planColumns")
			}
		}
	}
	probe := filepath.Join(t.TempDir(), "probe.go")
	if err := os.WriteFile(probe, []byte("package p\nfunc f(t *tenantReq) any { tn := t.tenant; return []any{t.tenant.Plan, tn.Features} }\n"), 0o644); err != nil {
		t.Fatal(err)
	}
	if hits := catalogPlanReads(t, probe); len(hits) != 2 {
		t.Fatalf("probe with two reads: %v; want two hits", hits)
	}
}

// catalogPlanReads returns the positions in a Go file of .Plan or
// .Features read from a request's tenant: t.tenant.X, or tn.X (the name
// the handlers give t.tenant).
func catalogPlanReads(t *testing.T, path string) []string {
	t.Helper()
	fset := token.NewFileSet()
	f, err := parser.ParseFile(fset, path, nil, 0)
	if err != nil {
		t.Fatal(err)
	}
	var hits []string
	ast.Inspect(f, func(node ast.Node) bool {
		sel, ok := node.(*ast.SelectorExpr)
		if !ok || (sel.Sel.Name != "Plan" && sel.Sel.Name != "Features") {
			return true
		}
		switch x := sel.X.(type) {
		case *ast.SelectorExpr:
			ok = x.Sel.Name == "tenant"
		case *ast.Ident:
			ok = x.Name == "tn"
		}
		if ok {
			hits = append(hits, fset.Position(sel.Pos()).String())
		}
		return true
	})
	return hits
}
