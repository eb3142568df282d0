// Package openapitest checks an OpenAPI document the way its users will
// meet it: a real validator (kin-openapi) and a client generated from it
// (oapi-codegen, pinned in tools/go.mod and built by make deps) that must
// compile.
package openapitest

import (
	"context"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"

	"github.com/getkin/kin-openapi/openapi3"
	"gopkg.in/yaml.v3"

	"github.com/thinlab/thinlab/internal/testenv"
)

// Validate fails t unless doc (YAML or JSON) is valid OpenAPI 3. It also
// refuses keys without a value: in a flow-style YAML mapping an unquoted
// comma ends the value, so `{description: a, b}` silently becomes the keys
// description and "b", which a validator does not notice in every place.
func Validate(t testing.TB, doc []byte) {
	t.Helper()
	spec, err := openapi3.NewLoader().LoadFromData(doc)
	if err != nil {
		t.Fatalf("load the OpenAPI document: %v", err)
	}
	if err := spec.Validate(context.Background()); err != nil {
		t.Fatalf("the OpenAPI document is not valid: %v", err)
	}
	var node yaml.Node
	if err := yaml.Unmarshal(doc, &node); err != nil {
		t.Fatalf("parse the OpenAPI document: %v", err)
	}
	for _, path := range nullValues(&node, "") {
		t.Errorf("the OpenAPI document has a key without a value at %s (an unquoted comma in a flow mapping?)", path)
	}
}

func nullValues(n *yaml.Node, path string) []string {
	var out []string
	switch n.Kind {
	case yaml.DocumentNode, yaml.SequenceNode:
		for _, c := range n.Content {
			out = append(out, nullValues(c, path)...)
		}
	case yaml.MappingNode:
		for i := 0; i+1 < len(n.Content); i += 2 {
			k, v := n.Content[i], n.Content[i+1]
			p := path + "/" + k.Value
			if v.Kind == yaml.ScalarNode && v.Tag == "!!null" {
				out = append(out, p)
			}
			out = append(out, nullValues(v, p)...)
		}
	}
	return out
}

// ClientCompiles generates a Go client (types and client) from doc with
// bin/oapi-codegen into a temporary package of the tools module, which
// holds the client's runtime, and builds it. ext is the document's file
// extension (.yaml or .json).
func ClientCompiles(t testing.TB, doc []byte, ext string) {
	t.Helper()
	testenv.NeedsSystem(t, "bin/oapi-codegen (make deps) and a go build")
	root := moduleRoot(t)
	gen := filepath.Join(root, "bin", "oapi-codegen")
	if _, err := os.Stat(gen); err != nil {
		t.Fatalf("%s is missing: run make deps (deploy/dev/deps.sh builds it from tools/go.mod)", gen)
	}
	tools := filepath.Join(root, "tools")
	dir, err := os.MkdirTemp(tools, "openapiclient-tmp-")
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() {
		if err := os.RemoveAll(dir); err != nil {
			t.Errorf("remove the generated client %s: %v", dir, err)
		}
	})
	spec := filepath.Join(dir, "openapi"+ext)
	if err := os.WriteFile(spec, doc, 0o600); err != nil {
		t.Fatal(err)
	}
	run := func(dir, name string, args ...string) {
		t.Helper()
		cmd := exec.Command(name, args...) //nolint:gosec // G204: the module's own bin/oapi-codegen and go, on files this helper wrote
		cmd.Dir = dir
		if out, err := cmd.CombinedOutput(); err != nil {
			t.Fatalf("%s %s: %v\n%s", name, strings.Join(args, " "), err, out)
		}
	}
	run(dir, gen, "-generate", "types,client", "-package", "client", "-o", filepath.Join(dir, "client.go"), spec)
	run(tools, "go", "build", "./"+filepath.Base(dir))
}

func moduleRoot(t testing.TB) string {
	t.Helper()
	out, err := exec.Command("go", "env", "GOMOD").Output()
	if err != nil {
		t.Fatalf("go env GOMOD: %v", err)
	}
	mod := strings.TrimSpace(string(out))
	if mod == "" || mod == os.DevNull {
		t.Fatal("not inside the thinlab module")
	}
	return filepath.Dir(mod)
}
