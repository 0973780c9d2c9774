package main

import (
	"bytes"
	"fmt"
	"io/fs"
	"os"
	"path/filepath"
	"strings"

	"github.com/google/go-jsonnet"
	"github.com/google/go-jsonnet/formatter"
	"github.com/google/go-jsonnet/linter"
)

// jsonnetFiles lists the mixin's .jsonnet and .libsonnet files.
func jsonnetFiles(root string) ([]string, error) {
	var files []string
	err := filepath.WalkDir(filepath.Join(root, mixinDir), func(path string, d fs.DirEntry, err error) error {
		if err != nil {
			return err
		}
		if d.IsDir() && (d.Name() == "vendor" || strings.HasPrefix(d.Name(), ".") && path != filepath.Join(root, mixinDir)) {
			return filepath.SkipDir
		}
		if !d.IsDir() && (strings.HasSuffix(path, ".jsonnet") || strings.HasSuffix(path, ".libsonnet")) {
			files = append(files, path)
		}
		return nil
	})
	return files, err
}

// formatJsonnet returns the files jsonnetfmt (default options: 2 spaces, single quotes, //
// comments) would change; with write it changes them.
func formatJsonnet(root string, write bool) ([]string, error) {
	files, err := jsonnetFiles(root)
	if err != nil {
		return nil, err
	}
	var changed []string
	for _, f := range files {
		src, err := os.ReadFile(f)
		if err != nil {
			return nil, err
		}
		out, err := formatter.Format(f, string(src), formatter.DefaultOptions())
		if err != nil {
			return nil, err
		}
		if out == string(src) {
			continue
		}
		changed = append(changed, f)
		if write {
			if err := os.WriteFile(f, []byte(out), 0o644); err != nil {
				return nil, err
			}
		}
	}
	return changed, nil
}

// lintJsonnet runs jsonnet-lint (unused variables, wrong arity, unknown fields of known
// objects...) over every file of the mixin.
func lintJsonnet(root string) error {
	files, err := jsonnetFiles(root)
	if err != nil {
		return err
	}
	var snippets []linter.Snippet
	for _, f := range files {
		src, err := os.ReadFile(f)
		if err != nil {
			return err
		}
		snippets = append(snippets, linter.Snippet{FileName: f, Code: string(src)})
	}
	vm := jsonnet.MakeVM()
	vm.Importer(&jsonnet.FileImporter{JPaths: []string{filepath.Join(root, mixinDir)}})
	var out bytes.Buffer
	if linter.LintSnippet(vm, &out, snippets) {
		return fmt.Errorf("jsonnet-lint:\n%s", out.String())
	}
	return nil
}
