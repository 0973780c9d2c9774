// Package testbin is tooling, not product: it builds the project's binaries for tests that
// run them as a user would, and holds the small helpers those tests share: a buffer for a
// child's output, an HTTP GET, a free loopback address, and the start of a child process or
// server that stops when the test ends.
package testbin

import (
	"context"
	"os"
	"path/filepath"
	"runtime"
	"sync"
	"testing"

	"github.com/dbpool/dbpool_exporter/tools/childproc"
	"github.com/dbpool/dbpool_exporter/tools/pythonenv"
)

// Version is stamped into binaries built for tests.
const Version = "9.9.9-test"

var (
	mu    sync.Mutex
	built = map[string]string{}
	dir   string
)

// RepoRoot is the module root (the directory holding go.mod).
func RepoRoot() string {
	_, file, _, _ := runtime.Caller(0)
	return filepath.Clean(filepath.Join(filepath.Dir(file), "..", ".."))
}

// Build builds the main package at pkg (relative to the module root, e.g. "." or
// "./tools/cmd/poolsim") once per test process and returns the binary's path.
func Build(t testing.TB, pkg string) string {
	t.Helper()
	mu.Lock()
	defer mu.Unlock()
	if bin, ok := built[pkg]; ok {
		return bin
	}
	if dir == "" {
		d, err := os.MkdirTemp("", "dbpool-testbin-")
		if err != nil {
			t.Fatal(err)
		}
		dir = d
	}
	name := filepath.Base(filepath.Clean(pkg))
	if name == "." || name == string(filepath.Separator) {
		name = "dbpool_exporter"
	}
	bin := filepath.Join(dir, name)
	if _, err := childproc.Run(context.Background(), childproc.Spec{
		Path: "go",
		Args: []string{"build", "-ldflags", "-X github.com/prometheus/common/version.Version=" + Version, "-o", bin, pkg},
		Dir:  RepoRoot(),
		Env:  append(os.Environ(), "CGO_ENABLED=0"),
	}); err != nil {
		t.Fatalf("go build %s: %v", pkg, err)
	}
	built[pkg] = bin
	return bin
}

// Exporter builds dbpool_exporter.
func Exporter(t testing.TB) string { return Build(t, ".") }

// Poolsim builds the simulated pooled application.
func Poolsim(t testing.TB) string { return Build(t, "./tools/cmd/poolsim") }

// Python is the interpreter of the pinned Python environment env (pythonenv.SA20 or
// pythonenv.SA14); the test fails, saying "run make deps", when it is missing or stale.
func Python(t testing.TB, env string) string {
	t.Helper()
	python, err := pythonenv.Python(RepoRoot(), env)
	if err != nil {
		t.Fatal(err)
	}
	return python
}

// Cleanup removes the built binaries; call it from TestMain after m.Run.
func Cleanup() {
	mu.Lock()
	defer mu.Unlock()
	if dir != "" {
		_ = os.RemoveAll(dir)
	}
	dir, built = "", map[string]string{}
}
