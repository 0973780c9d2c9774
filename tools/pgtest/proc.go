package pgtest

import (
	"errors"
	"fmt"
	"io"
	"net"
	"os"
	"os/exec"
	"os/user"
	"path/filepath"
	"strconv"
	"strings"
	"syscall"

	"github.com/dbpool/dbpool_exporter/tools/childproc"
)

// serverUser is the OS account that runs the servers when the tests run as
// root: initdb, postgres and pgbouncer all refuse to run as root.
const serverUser = "postgres"

// runAs is the account the server processes run as; nil means "as this
// process" (not root).
type runAs struct {
	uid, gid int
	cred     *syscall.Credential
}

// serverAccount returns nil when not root, else the postgres account.
func serverAccount() (*runAs, error) {
	if os.Geteuid() != 0 {
		return nil, nil
	}
	u, err := user.Lookup(serverUser)
	if err != nil {
		return nil, fmt.Errorf("running as root, and the servers refuse to run as root: need OS user %q (install the postgresql package): %w", serverUser, err)
	}
	uid, err := strconv.Atoi(u.Uid)
	if err != nil {
		return nil, fmt.Errorf("uid of %q: %w", serverUser, err)
	}
	gid, err := strconv.Atoi(u.Gid)
	if err != nil {
		return nil, fmt.Errorf("gid of %q: %w", serverUser, err)
	}
	cred := &syscall.Credential{Uid: uint32(uid), Gid: uint32(gid)}
	if ids, err := u.GroupIds(); err == nil {
		for _, s := range ids {
			if g, err := strconv.Atoi(s); err == nil {
				cred.Groups = append(cred.Groups, uint32(g))
			}
		}
	}
	return &runAs{uid: uid, gid: gid, cred: cred}, nil
}

// chown hands path to the server account; a no-op when not root.
func (a *runAs) chown(path string) error {
	if a == nil {
		return nil
	}
	return os.Lchown(path, a.uid, a.gid)
}

// checkReachable fails early, with a clear message, when the server account
// cannot reach dir (e.g. TMPDIR under root's 0700 home); otherwise initdb
// fails later with a confusing "permission denied".
func (a *runAs) checkReachable(dir string) error {
	if a == nil {
		return nil
	}
	for d := filepath.Dir(dir); ; d = filepath.Dir(d) {
		fi, err := os.Stat(d)
		if err != nil {
			return err
		}
		st, ok := fi.Sys().(*syscall.Stat_t)
		if ok && fi.Mode().Perm()&0o001 == 0 && int(st.Uid) != a.uid {
			return fmt.Errorf("OS user %q cannot enter %s (mode %v): point TMPDIR at a directory it can reach", serverUser, d, fi.Mode().Perm())
		}
		if d == filepath.Dir(d) {
			return nil
		}
	}
}

// tmpDirEnv names the directory for the servers' temp dirs.
const tmpDirEnv = "PGTEST_TMPDIR"

// memDir is a RAM-backed directory on nearly every Linux.
const memDir = "/dev/shm"

// minMemFree is the free space memDir needs to be used: Docker's default
// 64 MB /dev/shm would fill up after two clusters.
const minMemFree = 1 << 30

// tempBase returns where servers' temp dirs go: $PGTEST_TMPDIR if set, else
// /dev/shm when it is a roomy tmpfs, else os.TempDir(). A data directory is
// about 1000 files and 28 MB; writing (and deleting) that on a busy disk
// takes about a second, on tmpfs a few tens of milliseconds, and the data is
// thrown away anyway.
func tempBase() string {
	if d := os.Getenv(tmpDirEnv); d != "" {
		return d
	}
	var st syscall.Statfs_t
	if err := syscall.Statfs(memDir, &st); err == nil &&
		st.Bavail*uint64(st.Bsize) >= minMemFree && unixWritable(memDir) {
		return memDir
	}
	return os.TempDir()
}

func unixWritable(dir string) bool {
	return syscall.Access(dir, 0x2 /* W_OK */) == nil
}

// spec describes a server binary's process: it runs as the server account, without PG*
// variables from the caller's environment (PGDATA, PGPORT... would silently change what the
// binaries do), in its own process group (a Ctrl-C in the terminal goes to the harness's
// user, a test or the demo, which stops the servers in order, not straight to the servers),
// and dies with this process so that a crashed or timed-out test binary leaves no server
// behind.
func (a *runAs) spec(logFile, name string, args ...string) childproc.Spec {
	s := childproc.Spec{
		Path:    name,
		Args:    args,
		Env:     append(childproc.Environ("PG", "LC_", "LANG"), "LC_ALL=C"),
		LogFile: logFile,
	}
	if a != nil {
		s.Credential = a.cred
	}
	return s
}

// logSize is the current length of a log file, so that later reads can skip
// what earlier attempts wrote.
func logSize(path string) int64 {
	fi, err := os.Stat(path)
	if err != nil {
		return 0
	}
	return fi.Size()
}

// logSince returns what was appended to a log file after offset.
func logSince(path string, offset int64) string {
	b, err := os.ReadFile(path)
	if err != nil || int64(len(b)) < offset {
		return ""
	}
	return string(b[offset:])
}

// freePort is FreePort, replaceable by tests that provoke a port race.
var freePort = FreePort

// FreePort returns a TCP port on 127.0.0.1 that was free a moment ago. Another
// process may take it before the caller binds it; Start and StartPgBouncer
// retry with a new port when that happens.
func FreePort() (int, error) {
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		return 0, err
	}
	defer l.Close()
	return l.Addr().(*net.TCPAddr).Port, nil
}

// BinDir returns the directory that holds the PostgreSQL server binaries
// (initdb, postgres): $PG_BINDIR if set, else the newest
// /usr/lib/postgresql/*/bin (Debian's layout), else the directory of pg_ctl
// on $PATH.
func BinDir() (string, error) {
	if d := os.Getenv("PG_BINDIR"); d != "" {
		if err := checkBinDir(d); err != nil {
			return "", fmt.Errorf("PG_BINDIR=%s holds no PostgreSQL server binaries (install the Debian package postgresql): %w", d, err)
		}
		return d, nil
	}
	dirs, _ := filepath.Glob("/usr/lib/postgresql/*/bin")
	var best string
	var bestVer []int
	for _, d := range dirs {
		if checkBinDir(d) != nil {
			continue
		}
		v := parseVersion(filepath.Base(filepath.Dir(d)))
		if best == "" || versionLess(bestVer, v) {
			best, bestVer = d, v
		}
	}
	if best != "" {
		return best, nil
	}
	if p, err := exec.LookPath("pg_ctl"); err == nil {
		d := filepath.Dir(p)
		if checkBinDir(d) == nil {
			return d, nil
		}
	}
	return "", errors.New("PostgreSQL server binaries (initdb, postgres) not found in /usr/lib/postgresql/*/bin or on PATH: " +
		"install the Debian package postgresql (scripts/install-deps.sh) or set PG_BINDIR")
}

func checkBinDir(d string) error {
	for _, b := range []string{"initdb", "postgres"} {
		fi, err := os.Stat(filepath.Join(d, b))
		if err != nil {
			return err
		}
		if fi.IsDir() || fi.Mode().Perm()&0o111 == 0 {
			return fmt.Errorf("%s is not executable", filepath.Join(d, b))
		}
	}
	return nil
}

// parseVersion turns "15" or "9.6" into comparable numbers.
func parseVersion(s string) []int {
	var v []int
	for _, part := range strings.Split(s, ".") {
		n, err := strconv.Atoi(part)
		if err != nil {
			return nil
		}
		v = append(v, n)
	}
	return v
}

func versionLess(a, b []int) bool {
	for i := 0; i < len(a) && i < len(b); i++ {
		if a[i] != b[i] {
			return a[i] < b[i]
		}
	}
	return len(a) < len(b)
}

// pgBouncerPath finds the pgbouncer binary: $PGBOUNCER, $PATH, or /usr/sbin
// (Debian installs it there, and /usr/sbin is often not on a user's PATH).
func pgBouncerPath() (string, error) {
	if p := os.Getenv("PGBOUNCER"); p != "" {
		return p, nil
	}
	if p, err := exec.LookPath("pgbouncer"); err == nil {
		return p, nil
	}
	const sbin = "/usr/sbin/pgbouncer"
	if fi, err := os.Stat(sbin); err == nil && fi.Mode().Perm()&0o111 != 0 {
		return sbin, nil
	}
	return "", errors.New("pgbouncer not found on PATH or in /usr/sbin: install the Debian package pgbouncer (scripts/install-deps.sh) or set PGBOUNCER")
}

// copyTree copies a data directory template to dst (which must not exist),
// keeping permission bits (PostgreSQL insists on 0700/0750 data dirs) and
// handing every entry to the server account.
func copyTree(src, dst string, owner *runAs) error {
	return filepath.WalkDir(src, func(path string, d os.DirEntry, err error) error {
		if err != nil {
			return err
		}
		rel, err := filepath.Rel(src, path)
		if err != nil {
			return err
		}
		target := filepath.Join(dst, rel)
		info, err := d.Info()
		if err != nil {
			return err
		}
		switch {
		case d.IsDir():
			if err := os.Mkdir(target, info.Mode().Perm()); err != nil {
				return err
			}
		case info.Mode().IsRegular():
			if err := copyFile(path, target, info.Mode().Perm()); err != nil {
				return err
			}
		default:
			return fmt.Errorf("template %s: unexpected file type %v", path, info.Mode().Type())
		}
		return owner.chown(target)
	})
}

func copyFile(src, dst string, perm os.FileMode) error {
	in, err := os.Open(src)
	if err != nil {
		return err
	}
	defer in.Close()
	out, err := os.OpenFile(dst, os.O_CREATE|os.O_EXCL|os.O_WRONLY, perm)
	if err != nil {
		return err
	}
	if _, err := io.Copy(out, in); err != nil {
		out.Close()
		return err
	}
	return out.Close()
}
