package attest

import (
	"go/ast"
	"go/parser"
	"go/token"
	"os"
	"strconv"
	"strings"
	"testing"
)

// TestEveryReasonIsDocumented keeps docs/problems.md complete: every Reason
// constant declared in this package must have a row there.
func TestEveryReasonIsDocumented(t *testing.T) {
	doc, err := os.ReadFile("../docs/problems.md")
	if err != nil {
		t.Fatal(err)
	}
	fset := token.NewFileSet()
	pkgs, err := parser.ParseDir(fset, ".", func(fi os.FileInfo) bool { return !strings.HasSuffix(fi.Name(), "_test.go") }, 0)
	if err != nil {
		t.Fatal(err)
	}
	n := 0
	for _, pkg := range pkgs {
		for _, f := range pkg.Files {
			ast.Inspect(f, func(node ast.Node) bool {
				vs, ok := node.(*ast.ValueSpec)
				if !ok || vs.Type == nil || len(vs.Values) != 1 {
					return true
				}
				if id, ok := vs.Type.(*ast.Ident); !ok || id.Name != "Reason" {
					return true
				}
				lit, ok := vs.Values[0].(*ast.BasicLit)
				if !ok {
					return true
				}
				r, _ := strconv.Unquote(lit.Value)
				n++
				if !strings.Contains(string(doc), "| `"+r+"` |") {
					t.Errorf("reason %q (%s) has no row in docs/problems.md", r, vs.Names[0].Name)
				}
				return true
			})
		}
	}
	if n < 40 {
		t.Fatalf("found only %d reasons; the parser missed some", n)
	}
}
