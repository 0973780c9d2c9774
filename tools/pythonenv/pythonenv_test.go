package pythonenv

import (
	"os"
	"path/filepath"
	"strings"
	"testing"
)

func TestPython(t *testing.T) {
	const constraints = "SQLAlchemy==2.0.58\n"
	tests := []struct {
		name    string
		python  bool   // .venv/sa20/bin/python exists
		stamp   string // "": no stamp file
		wantErr string
	}{
		{name: "built", python: true, stamp: "SUM\npython 3.11.2\n"},
		{name: "no environment", wantErr: "bin/python is missing: run make deps"},
		{name: "half built", python: true, wantErr: "is incomplete"},
		{name: "empty stamp", python: true, stamp: "\n", wantErr: "older"},
		{name: "older constraints", python: true, stamp: "0123\npython 3.11.2\n", wantErr: "built from an older"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			root := t.TempDir()
			write(t, filepath.Join(root, "integrations", "python", "constraints", "sa20.txt"), constraints)
			want, err := fileSHA256(filepath.Join(root, "integrations", "python", "constraints", "sa20.txt"))
			if err != nil {
				t.Fatal(err)
			}
			venv := filepath.Join(root, ".venv", SA20)
			if tt.python {
				write(t, filepath.Join(venv, "bin", "python"), "#!/bin/sh\n")
			}
			if tt.stamp != "" {
				write(t, filepath.Join(venv, "constraints.stamp"), strings.ReplaceAll(tt.stamp, "SUM", want))
			}
			got, err := Python(root, SA20)
			if tt.wantErr != "" {
				if err == nil || !strings.Contains(err.Error(), tt.wantErr) || !strings.Contains(err.Error(), "make deps") {
					t.Fatalf("Python() = %q, %v; want an error with %q and \"make deps\"", got, err, tt.wantErr)
				}
				return
			}
			if err != nil || got != filepath.Join(venv, "bin", "python") {
				t.Fatalf("Python() = %q, %v", got, err)
			}
		})
	}
}

func TestPythonWithoutConstraints(t *testing.T) {
	if _, err := Python(t.TempDir(), SA14); err == nil || !strings.Contains(err.Error(), "sa14.txt") {
		t.Fatalf("err = %v, want one naming sa14.txt", err)
	}
}

func write(t *testing.T, path, content string) {
	t.Helper()
	if err := os.MkdirAll(filepath.Dir(path), 0o755); err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(path, []byte(content), 0o755); err != nil {
		t.Fatal(err)
	}
}
