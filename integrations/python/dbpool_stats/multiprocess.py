"""Several worker processes (gunicorn, uvicorn --workers): the shared directory and forks.

In the shared-directory mode each process that is an instance writes its entries to
DIR/<hostname>.<pid>.dbpool.json every interval, from a daemon thread, and the endpoint of
any process serves its own live entries plus its siblings' files. A forked child starts
as a new instance with zero counters and no writer thread.

A process that exits leaves its final figures: at a normal exit (gunicorn's --max-requests,
uvicorn's --limit-max-requests or SIGHUP, SIGTERM) it rewrites its file once more, marked
exited; a process that died without doing so (SIGKILL) has its last file marked exited by
the first sibling that notices, or by mark_process_dead(). Siblings serve exited files, as
the document's "exited" entries, for keep_exited seconds, so that the exporter counts what a
worker did in its last interval instead of losing it.
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
#: Seconds that siblings serve the final file of a process that exited: five minutes, so
#: that an exporter scraped every 60 s reads it even if it misses a scrape or three or
#: restarts; and shorter than the 15 minutes that the exporter keeps the last counters of a
#: process that stopped answering, so that those never run out while the file is served.
DEFAULT_KEEP_EXITED = 300.0
#: At most this many exited processes' files are kept in a directory, the newest; the
#: others are removed early. Each one is one entry per pool in every document served.
MAX_EXITED_FILES = 128
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


def _number(v):
    return isinstance(v, (int, float)) and not isinstance(v, bool)


def exited_entry(entry, exited_at):
    """An instance entry as its process left it: the counters as they were, the gauges of a
    pool that is gone (nothing open, held or waiting), and when it exited."""
    e = dict(entry)
    status = dict(e.get("status") or {})
    size = status.get("pool_size")
    for k in ("checked_out", "checked_in", "total_connections"):
        if status.get(k) is not None:
            status[k] = 0
    if status.get("overflow") is not None:
        status["overflow"] = -size if _number(size) else 0  # SQLAlchemy's overflow() of an empty pool
    e["status"] = status
    e["pending_checkouts"] = 0
    e["longest_checkout_wait_seconds"] = 0.0
    e["held_connections"] = 0
    e["longest_held_seconds"] = 0.0
    leaks = e.get("leaks")
    if isinstance(leaks, dict):
        e["leaks"] = dict(leaks, count=0 if leaks.get("count") is not None else None, sites=[])
    e["exited_at"] = exited_at
    return e


def _read(path):
    """The process document in path, or None when it is not one."""
    try:
        with open(path) as f:
            doc = json.load(f)
    except Exception:
        return None
    if not isinstance(doc, dict) or doc.get("format") != PROCESS_FORMAT:
        return None
    return doc


def _entries(doc):
    return [x for x in doc.get("instances", ()) if isinstance(x, dict)]


def _write_doc(path, doc):
    """Replace the file path with doc, atomically (a temporary file of this thread, renamed)."""
    directory, name = os.path.split(path)
    tmp = os.path.join(directory, ".%s.%d.%d.tmp" % (name, os.getpid(), threading.get_ident()))
    with open(tmp, "w") as f:
        json.dump(doc, f, separators=(",", ":"))
    os.replace(tmp, path)


def _mark_exited(path, now):
    """Mark the file of a process that has died exited, unless it did so itself, and return
    (exited_at, its entries); None when there is no such file (a garbage one is removed).
    Call it only once the process is dead: then nothing else writes its figures, and whoever
    marks it (several siblings, gunicorn's master) writes the same ones."""
    doc = _read(path)
    if doc is None:
        if os.path.exists(path):
            _remove(path)
        return None
    exited_at = doc.get("exited_at")
    if _number(exited_at):
        return exited_at, _entries(doc)
    entries = [exited_entry(x, now) for x in _entries(doc)]
    try:
        _write_doc(path, dict(doc, exited_at=now, instances=entries))
    except Exception:
        log.debug("dbpool_stats: cannot mark %s exited", path, exc_info=True)
    return now, entries


class SharedDirectory:
    """The shared-directory mode of this process: where, how often, and its writer thread."""

    def __init__(self, path, interval, keep_exited=DEFAULT_KEEP_EXITED):
        self.path = path
        self.interval = interval
        self.stale_after = STALE_INTERVALS * interval
        self.keep_exited = keep_exited
        self.writer = None  # threading.Thread
        self.writer_stop = None  # threading.Event
        # Held from the snapshot to the file's replacement, so that the file never goes back
        # to an older snapshot when the writer thread and the endpoint write at once.
        self.write_lock = threading.Lock()
        # This process wrote its final file: later writes (the endpoint's, while the
        # interpreter exits) must not turn it back into a live one.
        self.exited = False

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
            if not self.exited:
                self._write(registry, snaps)
        return snaps

    def write_final(self, registry):
        """Write this process's final file, marked exited; no entries: no file."""
        with self.write_lock:
            self.exited = True
            now = time.time()
            self._write(registry, [exited_entry(s, now) for s in registry.snapshots()], exited_at=now)

    def _write(self, registry, snaps, exited_at=None):
        if not snaps:
            _remove(_file(self.path, registry.hostname, registry.pid))
            return
        doc = {
            "format": PROCESS_FORMAT,
            "version": FORMAT_VERSION,
            "hostname": registry.hostname,
            "pid": registry.pid,
            "written_at": time.time(),
            "instances": snaps,
        }
        if exited_at is not None:
            doc["exited_at"] = exited_at
        _write_doc(_file(self.path, registry.hostname, registry.pid), doc)

    def siblings(self, registry, now):
        """The entries in the other processes' files: (live, exited). Live: the fresh files of
        processes that run. Exited: the files marked exited within keep_exited, the newest
        MAX_EXITED_FILES; this marks the file of a dead local pid exited (it died without
        writing its final file) and removes exited files past those bounds."""
        live = []
        exited = []  # (exited_at, path, entries)
        try:
            entries = list(os.scandir(self.path))
        except OSError:
            return [], []
        for entry in entries:
            if entry.name.startswith(".") or not entry.name.endswith(FILE_SUFFIX):
                continue
            try:
                doc = _read(entry.path)
                if doc is None:
                    continue
                host, pid = doc.get("hostname"), doc.get("pid")
                if host == registry.hostname and pid == registry.pid:
                    continue  # our own figures are served live
                exited_at = doc.get("exited_at")
                if not _number(exited_at) and host == registry.hostname and isinstance(pid, int) and not _pid_alive(pid):
                    # Read again now that the process is dead: it may have written its
                    # final file since the first read.
                    marked = _mark_exited(entry.path, now)
                    if marked is None:
                        continue
                    exited_at, doc = marked[0], {"instances": marked[1]}
                if _number(exited_at):
                    if now - exited_at > self.keep_exited:
                        _remove(entry.path)
                    else:
                        exited.append((exited_at, entry.path, _entries(doc)))
                    continue
                written = doc.get("written_at")
                if not _number(written) or now - written > self.stale_after:
                    continue
                live.extend(_entries(doc))
            except Exception:
                continue
        exited.sort(key=lambda x: x[0], reverse=True)
        for _, path, _ in exited[MAX_EXITED_FILES:]:
            _remove(path)
        return live, [x for _, _, ins in exited[:MAX_EXITED_FILES] for x in ins]


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


def set_multiprocess_dir(path, interval=DEFAULT_INTERVAL, stale_after=None, keep_exited=None):
    """Turn on the shared-directory mode for this process (and its forked children).

    keep_exited: seconds that the final figures of a process that exited are served
    (default DEFAULT_KEEP_EXITED). path=None turns the mode off and removes this process's file.
    """
    if path is None:
        _stop(final=False)
        REGISTRY.shared = None
        return
    interval = float(interval) if interval and float(interval) > 0 else DEFAULT_INTERVAL
    os.makedirs(path, exist_ok=True)
    path = os.path.abspath(path)
    shared = REGISTRY.shared
    if shared is None or shared.path != path or shared.interval != interval:
        _stop(final=False)  # stop the old writer (outside the lock: it takes the lock) and drop the old file
        shared = None
    with REGISTRY.lock:
        if shared is None:
            shared = REGISTRY.shared = SharedDirectory(path, interval)
        shared.exited = False
        shared.stale_after = float(stale_after) if stale_after else STALE_INTERVALS * interval
        shared.keep_exited = float(keep_exited) if keep_exited else DEFAULT_KEEP_EXITED
        if REGISTRY.active:
            shared.start_writer(REGISTRY)


def _stop(final):
    """Stop this process's file writer; then leave its final file (final) or remove it."""
    try:
        shared = REGISTRY.shared
        if shared is None:
            return
        shared.stop_writer()
        if final and REGISTRY.active and REGISTRY.pid == os.getpid():
            shared.write_final(REGISTRY)
        else:
            _remove(_file(shared.path, hostname(), os.getpid()))
    except Exception:
        log.debug("dbpool_stats: cannot stop the shared-directory mode", exc_info=True)


def shutdown():
    """Stop this process's file writer and leave its final figures in its file, marked exited,
    for its siblings to serve (also run at exit)."""
    _stop(final=True)


atexit.register(shutdown)


def mark_process_dead(pid, multiprocess_dir=None):
    """Mark a dead worker's file exited at once, e.g. from gunicorn's child_exit hook: its last
    figures are served as its final ones. A worker that exited normally did so itself."""
    shared = REGISTRY.shared
    d = multiprocess_dir or (shared.path if shared is not None else None) or os.environ.get(ENV_DIR)
    if d:
        try:
            _mark_exited(_file(d, hostname(), int(pid)), time.time())
        except Exception:
            log.debug("dbpool_stats: cannot mark process %s dead", pid, exc_info=True)


def _after_fork_in_child():
    # Threads do not survive a fork: the child has no writer until it is an instance itself.
    shared = REGISTRY.shared
    if shared is not None:
        shared.writer = shared.writer_stop = None
        shared.exited = False
    REGISTRY.after_fork_in_child()


if hasattr(os, "register_at_fork"):
    os.register_at_fork(after_in_child=_after_fork_in_child)
