package test

// House rules: conventions of the repository (docs/design.md, "Testing")
// that a test checks so that no reviewer has to. They read the source tree
// and ask the go command; none needs PostgreSQL.

import (
	"bufio"
	"bytes"
	"fmt"
	"go/ast"
	"go/parser"
	"go/token"
	"go/types"
	"io/fs"
	"os"
	"os/exec"
	"path/filepath"
	"slices"
	"strconv"
	"strings"
	"testing"
)

// repoRoot is the module root as seen from this package's directory, where
// go test runs the test binary.
const repoRoot = ".."

// TestBinaryDoesNotLinkTesting keeps package testing, and with it every
// test helper, out of the production binary: cmd/tenantproxy reaches
// throwaway clusters through internal/pgcluster, never internal/pgtest.
func TestBinaryDoesNotLinkTesting(t *testing.T) {
	cmd := exec.Command("go", "list", "-deps", "-f", "{{.ImportPath}}{{range .Imports}} {{.}}{{end}}", "./cmd/tenantproxy")
	cmd.Dir = repoRoot
	var stderr bytes.Buffer
	cmd.Stderr = &stderr
	out, err := cmd.Output()
	if err != nil {
		t.Fatalf("go list -deps ./cmd/tenantproxy: %v\n%s", err, stderr.Bytes())
	}
	var linked bool
	var importers []string
	for _, line := range strings.Split(strings.TrimSpace(string(out)), "\n") {
		fields := strings.Fields(line)
		if len(fields) == 0 {
			continue
		}
		if fields[0] == "testing" {
			linked = true
		}
		if slices.Contains(fields[1:], "testing") {
			importers = append(importers, fields[0])
		}
	}
	if linked {
		t.Errorf("cmd/tenantproxy links package testing; imported by %s (test helpers belong in _test.go files or test-only packages such as internal/pgtest)", strings.Join(importers, ", "))
	}
}

// TestProxyFilesAreShort keeps proxy/ split by connection phase and
// concept: no non-test file there may pass maxProxyFileLines.
func TestProxyFilesAreShort(t *testing.T) {
	const maxProxyFileLines = 600
	files, err := filepath.Glob(filepath.Join(repoRoot, "proxy", "*.go"))
	if err != nil {
		t.Fatal(err)
	}
	if len(files) == 0 {
		t.Fatal("no Go files in proxy/; is the test running from test/?")
	}
	for _, path := range files {
		if strings.HasSuffix(path, "_test.go") {
			continue
		}
		n, err := countLines(path)
		if err != nil {
			t.Fatal(err)
		}
		if n > maxProxyFileLines {
			t.Errorf("%s has %d lines; split it by phase or concept to at most %d", rel(path), n, maxProxyFileLines)
		}
	}
}

// TestProxyFunctionsAreShort keeps each relay step readable on one
// screen: no function in proxy/'s non-test files passes maxProxyFuncLines.
func TestProxyFunctionsAreShort(t *testing.T) {
	const maxProxyFuncLines = 80
	fset := token.NewFileSet()
	files, err := filepath.Glob(filepath.Join(repoRoot, "proxy", "*.go"))
	if err != nil {
		t.Fatal(err)
	}
	for _, path := range files {
		if strings.HasSuffix(path, "_test.go") {
			continue
		}
		f, err := parser.ParseFile(fset, path, nil, 0)
		if err != nil {
			t.Fatal(err)
		}
		for _, d := range f.Decls {
			fd, ok := d.(*ast.FuncDecl)
			if !ok {
				continue
			}
			if n := fset.Position(fd.End()).Line - fset.Position(fd.Pos()).Line + 1; n > maxProxyFuncLines {
				t.Errorf("%s: %s has %d lines; at most %d", rel(path), fd.Name.Name, n, maxProxyFuncLines)
			}
		}
	}
}

func countLines(path string) (int, error) {
	f, err := os.Open(path)
	if err != nil {
		return 0, err
	}
	defer f.Close()
	n := 0
	s := bufio.NewScanner(f)
	s.Buffer(make([]byte, 0, 64<<10), 1<<20)
	for s.Scan() {
		n++
	}
	return n, s.Err()
}

// TestEveryPackageHasDocGo wants the package comment of every package in
// a doc.go, and only there, saying what the package owns and why it
// exists; a command's comment starts "Command <name>".
func TestEveryPackageHasDocGo(t *testing.T) {
	for dir, files := range goFilesByDir(t) {
		doc := filepath.Join(dir, "doc.go")
		if !slices.Contains(files, doc) {
			t.Errorf("%s has Go files but no doc.go", rel(dir))
			continue
		}
		f, err := parser.ParseFile(token.NewFileSet(), doc, nil, parser.PackageClauseOnly|parser.ParseComments)
		if err != nil {
			t.Error(err)
			continue
		}
		name := f.Name.Name
		want := "Package " + name + " "
		if name == "main" {
			want = "Command " + filepath.Base(dir) + " "
		}
		if f.Doc == nil || !strings.HasPrefix(f.Doc.Text(), want) {
			t.Errorf("%s: want a package comment starting %q", rel(doc), want)
		}
		for _, path := range files {
			if path == doc || strings.HasSuffix(path, "_test.go") {
				continue
			}
			other, err := parser.ParseFile(token.NewFileSet(), path, nil, parser.PackageClauseOnly|parser.ParseComments)
			if err != nil {
				t.Error(err)
				continue
			}
			if other.Doc != nil {
				t.Errorf("%s has a package comment; it belongs in doc.go alone", rel(path))
			}
		}
	}
}

// metricUnits are the suffixes a gauge, histogram or summary name may end
// in: base units, the _info of an info metric, and the things a gauge
// counts. Adding a thing here is a decision about a metric's name, made
// where reviewers see it.
var metricUnits = []string{
	"_seconds", "_bytes", "_ratio", "_info",
	"_connections", "_clients", "_tenants", "_pools", "_waiters",
}

// metricKinds maps the prometheus option types to the kind of metric they
// define; "" is a type that can define any kind.
var metricKinds = map[string]string{
	"CounterOpts":   "counter",
	"GaugeOpts":     "gauge",
	"HistogramOpts": "histogram",
	"SummaryOpts":   "summary",
	"Opts":          "",
}

// TestMetricNames checks every metric the non-test code defines (an option
// literal of client_golang, or prometheus.NewDesc) against
// tenantproxy_<noun>_<unit>: counters end in _total, nothing else does, and
// everything else ends in one of metricUnits. A name the test cannot read
// (not a constant string) is a failure too, so the rule cannot be dodged.
func TestMetricNames(t *testing.T) {
	var defs []metricDef
	for dir, files := range goFilesByDir(t) {
		defs = append(defs, metricDefsIn(t, dir, files)...)
	}
	if len(defs) == 0 {
		t.Fatal("found no metric definitions; the walker is broken")
	}
	t.Logf("%d metric definitions checked", len(defs))
	for _, d := range defs {
		at := fmt.Sprintf("%s:%d", rel(d.pos.Filename), d.pos.Line)
		if d.err != nil {
			t.Errorf("%s: %v", at, d.err)
			continue
		}
		if msg := checkMetricName(d.name, d.kind); msg != "" {
			t.Errorf("%s: %s", at, msg)
		}
	}
}

// TestCheckMetricName pins what TestMetricNames accepts and refuses.
func TestCheckMetricName(t *testing.T) {
	for _, tt := range []struct {
		name, kind string
		ok         bool
	}{
		{"tenantproxy_queries_total", "counter", true},
		{"tenantproxy_client_connections", "gauge", true},
		{"tenantproxy_chatapi_request_duration_seconds", "histogram", true},
		{"tenantproxy_build_info", "gauge", true},
		{"tenantproxy_queries_total", "", true},
		{"tenantproxy_client_connections", "", true},
		{"queries_total", "counter", false},
		{"tenantproxy_queries", "counter", false},
		{"tenantproxy_client_connections_total", "gauge", false},
		{"tenantproxy_pool_size", "gauge", false},
		{"tenantproxy_latency", "histogram", false},
		{"tenantproxy_pool_size", "", false},
		{"tenantproxy_total", "counter", false},
		{"tenantproxy_seconds", "histogram", false},
	} {
		if msg := checkMetricName(tt.name, tt.kind); (msg == "") != tt.ok {
			t.Errorf("checkMetricName(%q, %q) = %q; want ok=%v", tt.name, tt.kind, msg, tt.ok)
		}
	}
}

func checkMetricName(name, kind string) string {
	const prefix = "tenantproxy_"
	if !strings.HasPrefix(name, prefix) {
		return fmt.Sprintf("metric %q does not start with %s", name, prefix)
	}
	unit := ""
	if strings.HasSuffix(name, "_total") {
		unit = "_total"
	}
	for _, u := range metricUnits {
		if strings.HasSuffix(name, u) {
			unit = u
		}
	}
	switch {
	case kind == "counter" && unit != "_total":
		return fmt.Sprintf("counter %q does not end in _total", name)
	case kind != "counter" && kind != "" && unit == "_total":
		return fmt.Sprintf("%s %q ends in _total, which only counters do", kind, name)
	case unit == "":
		return fmt.Sprintf("metric %q ends in no unit; want _total on a counter, else one of %s", name, strings.Join(metricUnits, " "))
	case len(name) <= len(prefix)+len(unit):
		return fmt.Sprintf("metric %q names no noun between %s and %s", name, prefix, unit)
	}
	return ""
}

// metricDef is one metric definition found in the source: its full name
// and kind ("" when the definition does not say), or why it could not be
// read.
type metricDef struct {
	pos  token.Position
	name string
	kind string
	err  error
}

// metricDefsIn parses the non-test files of one package and returns the
// metric definitions in them. Names may be string literals, package-level
// string constants, or sums of those.
func metricDefsIn(t *testing.T, dir string, files []string) []metricDef {
	t.Helper()
	fset := token.NewFileSet()
	var parsed []*ast.File
	consts := map[string]ast.Expr{}
	for _, path := range files {
		if strings.HasSuffix(path, "_test.go") {
			continue
		}
		f, err := parser.ParseFile(fset, path, nil, parser.SkipObjectResolution)
		if err != nil {
			t.Fatal(err)
		}
		parsed = append(parsed, f)
		for _, decl := range f.Decls {
			gd, ok := decl.(*ast.GenDecl)
			if !ok || gd.Tok != token.CONST {
				continue
			}
			for _, spec := range gd.Specs {
				vs := spec.(*ast.ValueSpec)
				for i, n := range vs.Names {
					if i < len(vs.Values) {
						consts[n.Name] = vs.Values[i]
					}
				}
			}
		}
	}
	str := func(e ast.Expr) (string, error) { return constString(e, consts, 0) }

	var defs []metricDef
	for _, f := range parsed {
		prom := importName(f, "github.com/prometheus/client_golang/prometheus", "prometheus")
		if prom == "" {
			continue
		}
		ast.Inspect(f, func(n ast.Node) bool {
			switch n := n.(type) {
			case *ast.CompositeLit:
				kind, ok := metricKinds[selectorOf(n.Type, prom)]
				if !ok {
					return true
				}
				d := metricDef{pos: fset.Position(n.Pos()), kind: kind}
				var parts [3]string // Namespace, Subsystem, Name
				for _, elt := range n.Elts {
					kv, ok := elt.(*ast.KeyValueExpr)
					if !ok {
						d.err = fmt.Errorf("%s literal without field names", selectorOf(n.Type, prom))
						break
					}
					key, _ := kv.Key.(*ast.Ident)
					if key == nil {
						continue
					}
					i := slices.Index([]string{"Namespace", "Subsystem", "Name"}, key.Name)
					if i < 0 {
						continue
					}
					if parts[i], d.err = str(kv.Value); d.err != nil {
						break
					}
				}
				if d.err == nil && parts[2] == "" {
					d.err = fmt.Errorf("%s literal without a Name", selectorOf(n.Type, prom))
				}
				d.name = fqName(parts[0], parts[1], parts[2])
				defs = append(defs, d)
			case *ast.CallExpr:
				if selectorOf(n.Fun, prom) != "NewDesc" || len(n.Args) == 0 {
					return true
				}
				d := metricDef{pos: fset.Position(n.Pos())}
				if call, ok := n.Args[0].(*ast.CallExpr); ok && selectorOf(call.Fun, prom) == "BuildFQName" && len(call.Args) == 3 {
					var parts [3]string
					for i, a := range call.Args {
						if parts[i], d.err = str(a); d.err != nil {
							break
						}
					}
					d.name = fqName(parts[0], parts[1], parts[2])
				} else {
					d.name, d.err = str(n.Args[0])
				}
				defs = append(defs, d)
			}
			return true
		})
	}
	return defs
}

// fqName joins the non-empty parts with "_", as prometheus.BuildFQName.
func fqName(namespace, subsystem, name string) string {
	var parts []string
	for _, p := range []string{namespace, subsystem, name} {
		if p != "" {
			parts = append(parts, p)
		}
	}
	return strings.Join(parts, "_")
}

// constString evaluates e if it is a string literal, a package-level
// constant of the package, or a sum of those.
func constString(e ast.Expr, consts map[string]ast.Expr, depth int) (string, error) {
	if depth > 10 {
		return "", fmt.Errorf("constant too deep to read")
	}
	switch e := e.(type) {
	case *ast.BasicLit:
		if e.Kind == token.STRING {
			return strconv.Unquote(e.Value)
		}
	case *ast.ParenExpr:
		return constString(e.X, consts, depth+1)
	case *ast.Ident:
		if v, ok := consts[e.Name]; ok {
			return constString(v, consts, depth+1)
		}
	case *ast.BinaryExpr:
		if e.Op == token.ADD {
			x, err := constString(e.X, consts, depth+1)
			if err != nil {
				return "", err
			}
			y, err := constString(e.Y, consts, depth+1)
			return x + y, err
		}
	}
	return "", fmt.Errorf("metric name %s is not a constant string the house rules can read", types.ExprString(e))
}

// importName is the name f uses for the package at path ("" when f does
// not import it).
func importName(f *ast.File, path, defaultName string) string {
	for _, imp := range f.Imports {
		if p, _ := strconv.Unquote(imp.Path.Value); p == path {
			if imp.Name != nil {
				return imp.Name.Name
			}
			return defaultName
		}
	}
	return ""
}

// selectorOf returns Sel when e is pkg.Sel, else "".
func selectorOf(e ast.Expr, pkg string) string {
	se, ok := e.(*ast.SelectorExpr)
	if !ok {
		return ""
	}
	if x, ok := se.X.(*ast.Ident); ok && x.Name == pkg {
		return se.Sel.Name
	}
	return ""
}

// goFilesByDir lists the repository's Go files by directory, leaving out
// hidden directories, testdata and node_modules (test/node's packages).
func goFilesByDir(t *testing.T) map[string][]string {
	t.Helper()
	byDir := map[string][]string{}
	err := filepath.WalkDir(repoRoot, func(path string, d fs.DirEntry, err error) error {
		if err != nil {
			return err
		}
		name := d.Name()
		if d.IsDir() {
			if path != repoRoot && (strings.HasPrefix(name, ".") || strings.HasPrefix(name, "_") || name == "testdata" || name == "node_modules") {
				return filepath.SkipDir
			}
			return nil
		}
		if strings.HasSuffix(name, ".go") {
			byDir[filepath.Dir(path)] = append(byDir[filepath.Dir(path)], path)
		}
		return nil
	})
	if err != nil {
		t.Fatal(err)
	}
	if len(byDir) == 0 {
		t.Fatal("found no Go files; is the test running from test/?")
	}
	return byDir
}

// rel names path relative to the repository root.
func rel(path string) string {
	if r, err := filepath.Rel(repoRoot, path); err == nil {
		return r
	}
	return path
}
