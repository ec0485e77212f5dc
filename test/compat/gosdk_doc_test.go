// Package compat holds the SDK compatibility suite (Node, run by run.sh) and
// this Go test, which keeps the Go SDK table of docs/COMPATIBILITY.md true
// to the root package.
package compat

import (
	"go/ast"
	"go/parser"
	"go/token"
	"os"
	"path/filepath"
	"regexp"
	"slices"
	"strings"
	"testing"
)

const repoRoot = "../.."

// goAPI is the exported surface of the Go SDK (the repository's root package).
type goAPI struct {
	funcs   []string                       // top-level functions
	vars    []string                       // package variables (the Err* sentinels)
	methods map[string][]string            // type -> its exported methods
	fields  map[string]map[string]struct{} // struct type -> its exported fields
}

// interfaceMethods implement standard interfaces; they need no row.
var interfaceMethods = []string{"Error", "Is", "Unwrap", "String", "MarshalJSON", "UnmarshalJSON"}

func loadGoAPI(t *testing.T) goAPI {
	t.Helper()
	api := goAPI{methods: map[string][]string{}, fields: map[string]map[string]struct{}{}}
	entries, err := os.ReadDir(repoRoot)
	if err != nil {
		t.Fatal(err)
	}
	fset := token.NewFileSet()
	for _, e := range entries {
		if e.IsDir() || !strings.HasSuffix(e.Name(), ".go") || strings.HasSuffix(e.Name(), "_test.go") {
			continue
		}
		f, err := parser.ParseFile(fset, filepath.Join(repoRoot, e.Name()), nil, parser.SkipObjectResolution)
		if err != nil {
			t.Fatal(err)
		}
		for _, d := range f.Decls {
			switch d := d.(type) {
			case *ast.FuncDecl:
				if !d.Name.IsExported() {
					continue
				}
				if d.Recv == nil {
					api.funcs = append(api.funcs, d.Name.Name)
					continue
				}
				recv := d.Recv.List[0].Type
				if star, ok := recv.(*ast.StarExpr); ok {
					recv = star.X
				}
				if id, ok := recv.(*ast.Ident); ok && id.IsExported() {
					api.methods[id.Name] = append(api.methods[id.Name], d.Name.Name)
				}
			case *ast.GenDecl:
				for _, spec := range d.Specs {
					switch spec := spec.(type) {
					case *ast.TypeSpec:
						if !spec.Name.IsExported() {
							continue
						}
						if st, ok := spec.Type.(*ast.StructType); ok {
							api.fields[spec.Name.Name] = structFields(st)
						}
					case *ast.ValueSpec:
						for _, n := range spec.Names {
							if n.IsExported() && d.Tok == token.VAR {
								api.vars = append(api.vars, n.Name)
							}
						}
					}
				}
			}
		}
	}
	if len(api.methods["Client"]) == 0 || len(api.funcs) == 0 {
		t.Fatalf("read no API from %s", repoRoot)
	}
	return api
}

func structFields(st *ast.StructType) map[string]struct{} {
	out := map[string]struct{}{}
	for _, f := range st.Fields.List {
		for _, n := range f.Names {
			if n.IsExported() {
				out[n.Name] = struct{}{}
			}
		}
		if len(f.Names) == 0 { // embedded: named by its type
			typ := f.Type
			if star, ok := typ.(*ast.StarExpr); ok {
				typ = star.X
			}
			if id, ok := typ.(*ast.Ident); ok {
				out[id.Name] = struct{}{}
			}
		}
	}
	return out
}

// goTableRows returns the code spans of the first column of each row of the
// Go SDK table, with the row's line number.
func goTableRows(t *testing.T) map[int][]string {
	t.Helper()
	doc, err := os.ReadFile(filepath.Join(repoRoot, "docs", "COMPATIBILITY.md"))
	if err != nil {
		t.Fatal(err)
	}
	lines := strings.Split(string(doc), "\n")
	start := slices.IndexFunc(lines, func(l string) bool { return strings.HasPrefix(l, "## Go SDK") })
	if start < 0 {
		t.Fatal(`docs/COMPATIBILITY.md has no "## Go SDK" section`)
	}
	span := regexp.MustCompile("`([^`]+)`")
	rows := map[int][]string{}
	header := true
	for i := start + 1; i < len(lines) && !strings.HasPrefix(lines[i], "## "); i++ {
		line := strings.TrimSpace(lines[i])
		if !strings.HasPrefix(line, "|") {
			header = true
			continue
		}
		if header || strings.Trim(line, "|-: ") == "" { // the header row or the separator
			header = false
			continue
		}
		first := regexp.MustCompile(`(^|[^\\])\|`).Split(line[1:], 2)[0]
		for _, m := range span.FindAllStringSubmatch(first, -1) {
			rows[i+1] = append(rows[i+1], m[1])
		}
	}
	if len(rows) == 0 {
		t.Fatal("the Go SDK section of docs/COMPATIBILITY.md has no table rows")
	}
	return rows
}

// TestGoSDKTableNamesTheWholePackage fails when an exported function,
// method or error variable of the Go SDK has no row in the Go SDK table of
// docs/COMPATIBILITY.md. A method counts as named by `Type.Method`, or by a
// bare `Method` in a row that also names `Type.` something.
func TestGoSDKTableNamesTheWholePackage(t *testing.T) {
	api, rows := loadGoAPI(t), goTableRows(t)
	word := func(name string) *regexp.Regexp {
		return regexp.MustCompile(`(^|[^\w.])` + regexp.QuoteMeta(name) + `\b`)
	}
	named := func(spans []string, re *regexp.Regexp) bool {
		return slices.ContainsFunc(spans, func(s string) bool { return re.MatchString(s) })
	}
	anyRow := func(ok func(spans []string) bool) bool {
		for _, spans := range rows {
			if ok(spans) {
				return true
			}
		}
		return false
	}
	for _, name := range append(slices.Clone(api.funcs), api.vars...) {
		if !anyRow(func(spans []string) bool { return named(spans, word(name)) }) {
			t.Errorf("%s is exported by the Go SDK but named by no row of the Go SDK table in docs/COMPATIBILITY.md", name)
		}
	}
	for typ, methods := range api.methods {
		for _, m := range methods {
			if slices.Contains(interfaceMethods, m) {
				continue
			}
			full := word(typ + "." + m)
			bare := regexp.MustCompile(`^` + regexp.QuoteMeta(m) + `(\(|$)`)
			onType := word(typ + ".")
			if !anyRow(func(spans []string) bool {
				return named(spans, full) || (named(spans, onType) && named(spans, bare))
			}) {
				t.Errorf("%s.%s is exported by the Go SDK but named by no row of the Go SDK table in docs/COMPATIBILITY.md", typ, m)
			}
		}
	}
}

// TestGoSDKTableNamesOnlyWhatExists fails when the Go SDK table names a
// `Type.Member` or a `Type{Field, …}` that the package does not have.
func TestGoSDKTableNamesOnlyWhatExists(t *testing.T) {
	api, rows := loadGoAPI(t), goTableRows(t)
	member := regexp.MustCompile(`(?:^|[^\w.])([A-Z]\w*)\.([A-Z]\w*)`)
	composite := regexp.MustCompile(`([A-Z]\w*)\{([^}]*)\}`)
	ident := regexp.MustCompile(`^[A-Z]\w*$`)
	for line, spans := range rows {
		for _, s := range spans {
			for _, m := range member.FindAllStringSubmatch(s, -1) {
				typ, name := m[1], m[2]
				_, isField := api.fields[typ][name]
				if !slices.Contains(api.methods[typ], name) && !isField {
					t.Errorf("docs/COMPATIBILITY.md:%d names %s.%s, which the Go SDK does not have", line, typ, name)
				}
			}
			for _, m := range composite.FindAllStringSubmatch(s, -1) {
				typ := m[1]
				fields, ok := api.fields[typ]
				if !ok {
					t.Errorf("docs/COMPATIBILITY.md:%d names %s{…}, which is not a struct type of the Go SDK", line, typ)
					continue
				}
				for _, f := range strings.Split(m[2], ",") {
					f = strings.TrimSpace(f)
					if !ident.MatchString(f) {
						continue // "…"
					}
					if _, ok := fields[f]; !ok {
						t.Errorf("docs/COMPATIBILITY.md:%d names %s{%s}, which the Go SDK's %s does not have", line, typ, f, typ)
					}
				}
			}
		}
	}
}
