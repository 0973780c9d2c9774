"""Several worker processes (gunicorn, uvicorn --workers): the shared directory and forks.

In the shared-directory mode each process that is an instance writes its entries to
DIR/<hostname>.<pid>.dbpool.json every interval, from a daemon thread, and the endpoint of
any process serves its own live entries plus its siblings' files. A forked child starts
as a new instance with zero counters and no writer thread.
"""

import atexit
import json
import os
import threading
import time

from .exposition import FORMAT_VERSION
from .registry import REGISTRY, hostname, log

DEFAULT_INTERVAL = 1.0
#: Siblings' files older than this many intervals are ignored.
STALE_INTERVALS = 5
ENV_DIR = "DBPOOL_STATS_DIR"
ENV_INTERVAL = "DBPOOL_STATS_INTERVAL"
FILE_SUFFIX = ".dbpool.json"
PROCESS_FORMAT = "dbpool-stats-process"


def _file(directory, host, pid):
    return os.path.join(directory, "%s.%d%s" % (host, pid, FILE_SUFFIX))


def _remove(path):
    try:
        os.remove(path)
    except OSError:
        pass


def _pid_alive(pid):
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    except Exception:
        return True
    try:  # a killed child that its parent has not reaped yet is a zombie
        with open("/proc/%d/stat" % pid, "rb") as f:
            stat = f.read()
        return stat[stat.rindex(b")") + 2 : stat.rindex(b")") + 3] != b"Z"
    except Exception:
        return True


class SharedDirectory:
    """The shared-directory mode of this process: where, how often, and its writer thread."""

    def __init__(self, path, interval):
        self.path = path
        self.interval = interval
        self.stale_after = STALE_INTERVALS * interval
        self.writer = None  # threading.Thread
        self.writer_stop = None  # threading.Event
        # Held from the snapshot to the file's replacement, so that the file never goes back
        # to an older snapshot when the writer thread and the endpoint write at once.
        self.write_lock = threading.Lock()

    def start_writer(self, registry):
        if self.writer is not None and self.writer.is_alive():
            return
        stop = threading.Event()
        t = threading.Thread(
            target=self._write_loop, args=(registry, stop), name="dbpool-stats-writer", daemon=True
        )
        self.writer, self.writer_stop = t, stop
        t.start()

    def stop_writer(self):
        t, stop = self.writer, self.writer_stop
        self.writer = self.writer_stop = None
        if stop is not None:
            stop.set()
        if t is not None and t is not threading.current_thread() and t.is_alive():
            t.join(timeout=2)

    def _write_loop(self, registry, stop):
        while not stop.is_set():
            try:
                self.write(registry)
            except Exception:
                log.debug("dbpool_stats: cannot write stats file", exc_info=True)
            if stop.wait(self.interval):
                break

    def write(self, registry):
        """Write this process's entries to its file, atomically, and return them; no entries:
        no file."""
        with self.write_lock:
            snaps = registry.snapshots()
            self._write(registry, snaps)
        return snaps

    def _write(self, registry, snaps):
        path = _file(self.path, registry.hostname, registry.pid)
        if not snaps:
            _remove(path)
            return
        doc = {
            "format": PROCESS_FORMAT,
            "version": FORMAT_VERSION,
            "hostname": registry.hostname,
            "pid": registry.pid,
            "written_at": time.time(),
            "instances": snaps,
        }
        tmp = os.path.join(
            self.path, ".%s.%d.%d.tmp" % (registry.hostname, registry.pid, threading.get_ident())
        )
        with open(tmp, "w") as f:
            json.dump(doc, f, separators=(",", ":"))
        os.replace(tmp, path)

    def siblings(self, registry, now):
        """The entries in the other processes' files that are fresh; a dead local pid's file is removed."""
        out = []
        try:
            entries = list(os.scandir(self.path))
        except OSError:
            return []
        for entry in entries:
            if entry.name.startswith(".") or not entry.name.endswith(FILE_SUFFIX):
                continue
            try:
                with open(entry.path) as f:
                    doc = json.load(f)
                if not isinstance(doc, dict) or doc.get("format") != PROCESS_FORMAT:
                    continue
                host, pid = doc.get("hostname"), doc.get("pid")
                if host == registry.hostname and pid == registry.pid:
                    continue  # our own figures are served live
                if host == registry.hostname and isinstance(pid, int) and not _pid_alive(pid):
                    _remove(entry.path)
                    continue
                written = doc.get("written_at")
                if not isinstance(written, (int, float)) or now - written > self.stale_after:
                    continue
                out.extend(x for x in doc.get("instances", ()) if isinstance(x, dict))
            except Exception:
                continue
        return out


def enable(multiprocess_dir=None, interval=None):
    """The mode that instrument() asks for: multiprocess_dir, else $DBPOOL_STATS_DIR, every
    interval seconds, else $DBPOOL_STATS_INTERVAL, else 1. Neither directory: nothing changes."""
    d = multiprocess_dir or os.environ.get(ENV_DIR)
    if not d:
        return
    if interval is None:
        try:
            interval = float(os.environ.get(ENV_INTERVAL, DEFAULT_INTERVAL))
        except ValueError:
            interval = DEFAULT_INTERVAL
    set_multiprocess_dir(d, interval=interval)


def set_multiprocess_dir(path, interval=DEFAULT_INTERVAL, stale_after=None):
    """Turn on the shared-directory mode for this process (and its forked children).

    path=None turns it off and removes this process's file.
    """
    if path is None:
        shutdown()
        REGISTRY.shared = None
        return
    interval = float(interval) if interval and float(interval) > 0 else DEFAULT_INTERVAL
    os.makedirs(path, exist_ok=True)
    path = os.path.abspath(path)
    shared = REGISTRY.shared
    if shared is None or shared.path != path or shared.interval != interval:
        shutdown()  # stop the old writer (outside the lock: it takes the lock) and drop the old file
        shared = None
    with REGISTRY.lock:
        if shared is None:
            shared = REGISTRY.shared = SharedDirectory(path, interval)
        if stale_after:
            shared.stale_after = float(stale_after)
        else:
            shared.stale_after = STALE_INTERVALS * interval
        if REGISTRY.active:
            shared.start_writer(REGISTRY)


def shutdown():
    """Stop this process's file writer and remove its file (also run at exit)."""
    try:
        shared = REGISTRY.shared
        if shared is not None:
            shared.stop_writer()
            _remove(_file(shared.path, hostname(), os.getpid()))
    except Exception:
        pass


atexit.register(shutdown)


def mark_process_dead(pid, multiprocess_dir=None):
    """Remove a dead worker's file at once, e.g. from gunicorn's child_exit hook."""
    shared = REGISTRY.shared
    d = multiprocess_dir or (shared.path if shared is not None else None) or os.environ.get(ENV_DIR)
    if d:
        _remove(_file(d, hostname(), int(pid)))


def _after_fork_in_child():
    # Threads do not survive a fork: the child has no writer until it is an instance itself.
    shared = REGISTRY.shared
    if shared is not None:
        shared.writer = shared.writer_stop = None
    REGISTRY.after_fork_in_child()


if hasattr(os, "register_at_fork"):
    os.register_at_fork(after_in_child=_after_fork_in_child)
