package main

import (
	"archive/tar"
	"bufio"
	"bytes"
	"compress/gzip"
	"context"
	"crypto/sha256"
	"encoding/hex"
	"errors"
	"io"
	"os"
	"os/exec"
	"path/filepath"
	"sort"
	"strings"
	"testing"
	"time"

	"github.com/dbpool/dbpool_exporter/tools/childproc"
	"github.com/dbpool/dbpool_exporter/tools/testbin"
)

// releaseFiles are what a release tarball holds besides the binary, each a copy of the
// repository's file.
var releaseFiles = []string{
	"LICENSE", "README.md", "CHANGELOG.md",
	"alerts/dbpool.rules.yml", "alerts/dbpool.rules_test.yml", "grafana/dbpool.json",
	"docs/configuration.md", "docs/metrics.md", "docs/runbook.md",
}

// TestRelease runs `make release` for linux/amd64 only (the four platforms of a release take
// minutes on two cores with a cold build cache; the other three differ only in GOOS and
// GOARCH) and checks what it made: the tarball named for the VERSION file, its files, the
// binary's --version, and sha256sums.txt against the tarballs.
func TestRelease(t *testing.T) {
	root := testbin.RepoRoot()
	v, err := os.ReadFile(filepath.Join(root, "VERSION"))
	if err != nil {
		t.Fatal(err)
	}
	version := strings.TrimSpace(string(v))
	dir := t.TempDir()
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Minute)
	defer cancel()
	// A `make test` run passes its command-line variables down in MAKEFLAGS; none may reach
	// this make.
	if out, err := childproc.Run(ctx, childproc.Spec{
		Path: "make",
		Args: []string{"--no-print-directory", "release", "PLATFORMS=linux/amd64", "RELEASE_DIR=" + dir},
		Dir:  root,
		Env:  childproc.Environ("MAKEFLAGS=", "MFLAGS=", "MAKELEVEL=", "VERSION=", "LDFLAGS=", "PLATFORMS=", "RELEASE_DIR="),
	}); err != nil {
		t.Fatalf("make release: %v", err)
	} else {
		t.Log(childproc.Tail(out, 10))
	}

	name := "dbpool_exporter-" + version + ".linux-amd64"
	entries, err := os.ReadDir(dir)
	if err != nil {
		t.Fatal(err)
	}
	var got []string
	for _, e := range entries {
		got = append(got, e.Name())
	}
	if want := []string{name + ".tar.gz", "sha256sums.txt"}; strings.Join(got, " ") != strings.Join(want, " ") {
		t.Fatalf("make release made %v, want %v", got, want)
	}

	checkSums(t, dir, []string{name + ".tar.gz"})

	files := untar(t, filepath.Join(dir, name+".tar.gz"))
	for path, f := range files {
		if !strings.HasPrefix(path, name+"/") {
			t.Errorf("%s: outside the directory %s/", path, name)
		}
		if strings.HasSuffix(path, ".go") || strings.HasSuffix(path, ".sh") {
			t.Errorf("%s: a test program in the release", path)
		}
		if f.uid != 0 || f.gid != 0 {
			t.Errorf("%s: owner %d:%d, want 0:0", path, f.uid, f.gid)
		}
		if want := os.FileMode(0o644); path != name+"/dbpool_exporter" && f.mode.Perm() != want {
			t.Errorf("%s: mode %v, want %v", path, f.mode.Perm(), want)
		}
	}
	for _, rel := range releaseFiles {
		f, ok := files[name+"/"+rel]
		if !ok {
			t.Errorf("%s/%s missing from the tarball", name, rel)
			continue
		}
		want, err := os.ReadFile(filepath.Join(root, rel))
		if err != nil {
			t.Fatal(err)
		}
		if !bytes.Equal(f.data, want) {
			t.Errorf("%s/%s differs from the repository's %s", name, rel, rel)
		}
	}

	bin, ok := files[name+"/dbpool_exporter"]
	if !ok {
		t.Fatalf("%s/dbpool_exporter missing from the tarball", name)
	}
	if want := os.FileMode(0o755); bin.mode.Perm() != want {
		t.Errorf("dbpool_exporter: mode %v, want %v", bin.mode.Perm(), want)
	}
	path := filepath.Join(t.TempDir(), "dbpool_exporter")
	if err := os.WriteFile(path, bin.data, 0o755); err != nil {
		t.Fatal(err)
	}
	out, err := childproc.Run(ctx, childproc.Spec{Path: path, Args: []string{"--version"}})
	if err != nil {
		t.Fatalf("dbpool_exporter --version: %v", err)
	}
	if want := "dbpool_exporter, version " + version + " ("; !strings.HasPrefix(out, want) {
		t.Errorf("--version says %q, want it to start with %q", out, want)
	}
	if rev, err := exec.Command("git", "-C", root, "rev-parse", "HEAD").Output(); err == nil {
		if want := "revision: " + strings.TrimSpace(string(rev)) + ")"; !strings.Contains(out, want) {
			t.Errorf("--version says %q, want %q", out, want)
		}
	}
}

// checkSums checks that dir/sha256sums.txt lists exactly the files named, each with its
// SHA-256, in `sha256sum` format.
func checkSums(t *testing.T, dir string, names []string) {
	t.Helper()
	f, err := os.Open(filepath.Join(dir, "sha256sums.txt"))
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	var listed []string
	sc := bufio.NewScanner(f)
	for sc.Scan() {
		sum, name, ok := strings.Cut(sc.Text(), "  ")
		if !ok || len(sum) != 64 {
			t.Errorf("sha256sums.txt: line %q is not `<sha256>  <file>`", sc.Text())
			continue
		}
		listed = append(listed, name)
		data, err := os.ReadFile(filepath.Join(dir, name))
		if err != nil {
			t.Errorf("sha256sums.txt lists %s: %v", name, err)
			continue
		}
		if h := sha256.Sum256(data); hex.EncodeToString(h[:]) != sum {
			t.Errorf("sha256sums.txt: %s has SHA-256 %x, listed as %s", name, h, sum)
		}
	}
	if err := sc.Err(); err != nil {
		t.Fatal(err)
	}
	sort.Strings(listed)
	if strings.Join(listed, " ") != strings.Join(names, " ") {
		t.Errorf("sha256sums.txt lists %v, want %v", listed, names)
	}
}

type tarFile struct {
	data     []byte
	mode     os.FileMode
	uid, gid int
}

// untar returns the regular files of a .tar.gz by path.
func untar(t *testing.T, path string) map[string]tarFile {
	t.Helper()
	f, err := os.Open(path)
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	zr, err := gzip.NewReader(f)
	if err != nil {
		t.Fatal(err)
	}
	files := map[string]tarFile{}
	tr := tar.NewReader(zr)
	for {
		h, err := tr.Next()
		if errors.Is(err, io.EOF) {
			return files
		}
		if err != nil {
			t.Fatalf("%s: %v", path, err)
		}
		if h.Typeflag != tar.TypeReg {
			continue
		}
		data, err := io.ReadAll(tr)
		if err != nil {
			t.Fatal(err)
		}
		files[h.Name] = tarFile{data: data, mode: h.FileInfo().Mode(), uid: h.Uid, gid: h.Gid}
	}
}
