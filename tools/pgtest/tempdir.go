package pgtest

import (
	"os"
	"path/filepath"
	"strings"
	"sync"
	"syscall"
)

// lockName is a file in every temp dir, flock'ed by the process that owns
// the dir for as long as it lives. The kernel drops the lock when that
// process dies, however it dies, which is how a later run recognises the
// leftovers of a crashed or killed test binary. That matters because the
// dirs usually live in RAM (/dev/shm).
const lockName = "pgtest.lock"

const dirPrefix = "pgtest-"

var sweepOnce sync.Once

// newTempDir creates a temp dir for a server and locks it. The first call in
// a process also removes dirs of dead processes.
func newTempDir(pattern string) (string, *os.File, error) {
	base := tempBase()
	sweepOnce.Do(func() { sweepStale(base, isHarnessDir) })
	return newLockedDir(base, pattern)
}

func isHarnessDir(name string) bool { return strings.HasPrefix(name, dirPrefix) }

func newLockedDir(base, pattern string) (string, *os.File, error) {
	dir, err := os.MkdirTemp(base, pattern)
	if err != nil {
		return "", nil, err
	}
	lock, err := os.OpenFile(filepath.Join(dir, lockName), os.O_CREATE|os.O_RDWR, 0o600)
	if err == nil {
		err = syscall.Flock(int(lock.Fd()), syscall.LOCK_EX|syscall.LOCK_NB)
	}
	if err != nil {
		if lock != nil {
			lock.Close()
		}
		os.RemoveAll(dir)
		return "", nil, err
	}
	return dir, lock, nil
}

// removeTempDir deletes the dir, then drops the lock.
func removeTempDir(dir string, lock *os.File) error {
	if dir == "" {
		return nil
	}
	err := os.RemoveAll(dir)
	if lock != nil {
		lock.Close()
	}
	return err
}

// sweepStale removes temp dirs whose lock nobody holds. Dirs without a lock
// file are left alone: they may be being created right now, or not be ours.
// Errors are ignored; sweeping is housekeeping, not a reason to fail.
func sweepStale(base string, match func(name string) bool) {
	entries, err := os.ReadDir(base)
	if err != nil {
		return
	}
	for _, e := range entries {
		if !e.IsDir() || !match(e.Name()) {
			continue
		}
		dir := filepath.Join(base, e.Name())
		f, err := os.OpenFile(filepath.Join(dir, lockName), os.O_RDWR, 0)
		if err != nil {
			continue
		}
		if err := syscall.Flock(int(f.Fd()), syscall.LOCK_EX|syscall.LOCK_NB); err != nil {
			f.Close() // EWOULDBLOCK: its owner is alive
			continue
		}
		_ = os.RemoveAll(dir)
		f.Close()
	}
}
