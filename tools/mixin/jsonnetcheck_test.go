package main

import (
	"os"
	"path/filepath"
	"strings"
	"testing"
)

func TestShippedJsonnetIsFormattedAndLintFree(t *testing.T) {
	changed, err := formatJsonnet(repoRoot, false)
	if err != nil {
		t.Fatal(err)
	}
	if len(changed) > 0 {
		t.Errorf("not formatted: %v", changed)
	}
	if err := lintJsonnet(repoRoot); err != nil {
		t.Error(err)
	}
}

func TestJsonnetChecksFail(t *testing.T) {
	root := t.TempDir()
	dir := filepath.Join(root, mixinDir, "alerts")
	if err := os.MkdirAll(dir, 0o755); err != nil {
		t.Fatal(err)
	}
	messy := filepath.Join(dir, "messy.libsonnet")
	if err := os.WriteFile(messy, []byte("{a:\"x\",\n    b: 1}\n"), 0o600); err != nil {
		t.Fatal(err)
	}
	unused := filepath.Join(dir, "unused.libsonnet")
	if err := os.WriteFile(unused, []byte("local threshold = 0.8;\n{ a: 1 }\n"), 0o600); err != nil {
		t.Fatal(err)
	}

	changed, err := formatJsonnet(root, false)
	if err != nil {
		t.Fatal(err)
	}
	if len(changed) != 1 || changed[0] != messy {
		t.Errorf("jsonnetfmt would change %v, want only %s", changed, messy)
	}
	if err := lintJsonnet(root); err == nil || !strings.Contains(err.Error(), "Unused variable: threshold") {
		t.Errorf("jsonnet-lint: %v, want the unused variable", err)
	}

	// fmt writes the formatted file, after which it passes.
	if _, err := formatJsonnet(root, true); err != nil {
		t.Fatal(err)
	}
	if changed, _ := formatJsonnet(root, false); len(changed) != 0 {
		t.Errorf("still not formatted after fmt: %v", changed)
	}
}
