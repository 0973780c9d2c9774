package pgtest

import (
	"context"
	"crypto/sha256"
	"encoding/hex"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"sync"

	"github.com/dbpool/dbpool_exporter/tools/childproc"
)

// initdbArgs are the initdb flags every cluster is made with (after -D).
// --no-sync: the data is thrown away, durability buys nothing.
// --wal-segsize=1: 1 MB WAL segments instead of 16 MB make the template, and
// so every copy of it, 15 MB smaller.
var initdbArgs = []string{
	"--no-sync", "--username=postgres", "--auth=trust",
	"--encoding=UTF8", "--no-locale", "--wal-segsize=1",
}

// templateFormat changes whenever the way templates are made changes, so
// that stale cached templates are not reused.
const templateFormat = "1"

// templateCacheEnv names the template cache directory; "off" disables the
// cache (every cluster then runs initdb itself).
const templateCacheEnv = "PGTEST_CACHE_DIR"

var templateMu sync.Mutex

// templateDir returns a pristine initdb'd data directory to copy, or "" when
// caching is off or impossible (then the caller runs initdb itself).
//
// initdb takes about a second; copying its result takes a fraction of that.
// The template lives in the user cache directory, keyed by the server
// version and the initdb flags, and is shared between test binaries: `go
// test ./...` runs several packages at once, and every one of them would
// otherwise run initdb for each cluster. A template is published with an
// atomic rename, so a concurrent or interrupted build never exposes a
// half-written one.
func templateDir(bindir string, owner *runAs) (string, error) {
	root, err := templateCacheRoot()
	if err != nil || root == "" {
		return "", err
	}
	key, err := templateKey(bindir)
	if err != nil {
		return "", err
	}

	// One build at a time in this process; other processes are handled by
	// the rename below.
	templateMu.Lock()
	defer templateMu.Unlock()
	final := filepath.Join(root, key)
	data := filepath.Join(final, "data")
	if templateComplete(data) {
		return data, nil
	}
	if err := os.MkdirAll(root, 0o700); err != nil {
		return "", nil // no cache, e.g. read-only home: run initdb per cluster
	}

	// initdb runs as the server account, which may not reach the cache root
	// (root's home), so it runs in a temp dir and the result is copied.
	work, workLock, err := newTempDir(dirPrefix + "initdb-")
	if err != nil {
		return "", err
	}
	defer func() { _ = removeTempDir(work, workLock) }()
	if err := owner.chown(work); err != nil {
		return "", err
	}
	if err := owner.checkReachable(work); err != nil {
		return "", err
	}
	built := filepath.Join(work, "data")
	if err := runInitdb(bindir, built, owner, filepath.Join(work, "initdb.log")); err != nil {
		return "", err
	}

	// Leftovers of builds that died half-way.
	sweepStale(root, func(name string) bool { return strings.Contains(name, ".tmp-") })
	staging, stagingLock, err := newLockedDir(root, key+".tmp-")
	if err != nil {
		return "", nil // as above
	}
	// Removes nothing once renamed; the lock file stays beside data/.
	defer func() { _ = removeTempDir(staging, stagingLock) }()
	if err := copyTree(built, filepath.Join(staging, "data"), nil); err != nil {
		return "", err
	}
	if err := os.Rename(staging, final); err != nil {
		// Another process published the same template first; use theirs.
		if !templateComplete(data) {
			return "", fmt.Errorf("publish template %s: %w", final, err)
		}
	}
	return data, nil
}

func templateCacheRoot() (string, error) {
	switch v := os.Getenv(templateCacheEnv); v {
	case "off":
		return "", nil
	case "":
		base, err := os.UserCacheDir()
		if err != nil {
			// No HOME: run without a cache rather than fail.
			return "", nil
		}
		return filepath.Join(base, "dbpool_exporter", "pgtest"), nil
	default:
		return v, nil
	}
}

var templateKeys sync.Map // bindir -> key

// templateKey identifies a template by what determines its content.
func templateKey(bindir string) (string, error) {
	if k, ok := templateKeys.Load(bindir); ok {
		return k.(string), nil
	}
	out, err := exec.Command(filepath.Join(bindir, "postgres"), "--version").Output()
	if err != nil {
		return "", fmt.Errorf("%s/postgres --version: %w", bindir, err)
	}
	h := sha256.New()
	fmt.Fprintf(h, "%s\n%s\n%s\n%s\n", templateFormat, bindir, strings.TrimSpace(string(out)), strings.Join(initdbArgs, " "))
	key := hex.EncodeToString(h.Sum(nil))[:16]
	templateKeys.Store(bindir, key)
	return key, nil
}

func templateComplete(data string) bool {
	for _, f := range []string{"PG_VERSION", "global/pg_control", "postgresql.conf", "pg_hba.conf"} {
		if _, err := os.Stat(filepath.Join(data, f)); err != nil {
			return false
		}
	}
	return true
}

func runInitdb(bindir, dataDir string, owner *runAs, logPath string) error {
	args := append([]string{"-D", dataDir}, initdbArgs...)
	_, err := childproc.Run(context.Background(), owner.spec(logPath, filepath.Join(bindir, "initdb"), args...))
	return err
}
