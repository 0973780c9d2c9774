"""SQLAlchemy connection pool statistics as JSON, for dbpool_exporter.

Two lines in a service::

    import dbpool_stats
    dbpool_stats.instrument(engine, name="api")   # create_engine() or create_async_engine()
    dbpool_stats.start_http_server(port=9931, addr="127.0.0.1")   # GET /dbpool

or serve ``render_json()`` / ``wsgi_app`` / ``asgi_app`` on the application's own
path. The JSON document is a contract with dbpool_exporter; README.md next to
this package describes every field ("format": "dbpool-stats", "version": 1).

Only SQLAlchemy (1.4 or 2.0) and the standard library are used. Nothing in
this module raises into the application's checkouts: every hook swallows its
own errors, and a failed hook only makes the figures less complete.
"""

import atexit
import bisect
import json
import logging
import os
import socket
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

from sqlalchemy import event
from sqlalchemy import exc as sa_exc
from sqlalchemy.pool import Pool

__version__ = "0.4.0"
__all__ = [
    "BUCKETS",
    "FORMAT",
    "FORMAT_VERSION",
    "PoolStats",
    "asgi_app",
    "instrument",
    "mark_process_dead",
    "render_json",
    "set_multiprocess_dir",
    "shutdown",
    "snapshot",
    "start_http_server",
    "uninstrument",
    "wsgi_app",
]

FORMAT = "dbpool-stats"
FORMAT_VERSION = 1
#: Upper bounds (seconds) of the cumulative checkout-time histogram buckets; the
#: exporter's Go histogram uses the same bounds. +Inf is implied ("count").
BUCKETS = (0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30)
DEFAULT_PATH = "/dbpool"
DEFAULT_INTERVAL = 1.0
#: Siblings' files older than this many intervals are ignored.
STALE_INTERVALS = 5
ENV_DIR = "DBPOOL_STATS_DIR"
ENV_INTERVAL = "DBPOOL_STATS_INTERVAL"
FILE_SUFFIX = ".dbpool.json"
_PROCESS_FORMAT = "dbpool-stats-process"

_log = logging.getLogger("dbpool_stats")


def _hostname():
    try:
        return socket.gethostname() or "localhost"
    except Exception:  # pragma: no cover - never expected
        return "localhost"


class _Proc:
    """Per-process identity and multi-process state; reset in a forked child."""

    def __init__(self):
        self.pid = os.getpid()
        self.hostname = _hostname()
        # active: this process checked out a connection or served the endpoint, so
        # it is a real instance and writes its file (a preloading gunicorn master
        # that only imported the app is not).
        self.active = False
        self.writer = None  # threading.Thread
        self.writer_stop = None  # threading.Event


_proc = _Proc()
_registry_lock = threading.RLock()
_registry = []  # PoolStats, in instrument() order
_mp = {"dir": None, "interval": DEFAULT_INTERVAL, "stale_after": STALE_INTERVALS * DEFAULT_INTERVAL}


def _call(obj, attr):
    """obj.attr() if it is a method, obj.attr if a plain value, None if absent or failing."""
    try:
        v = getattr(obj, attr)
        if callable(v):
            v = v()
        return v
    except Exception:
        return None


def _num(v):
    if isinstance(v, bool) or not isinstance(v, (int, float)):
        return None
    return v


class PoolStats:
    """Statistics of one instrumented engine (or pool) in this process."""

    def __init__(self, target, name, index):
        self.name = name
        self._index = index  # 1 for the first engine of this name in the process
        self._engine = None  # sync Engine, or None when a bare Pool was given
        self._pool = None  # the pool instance currently wrapped
        self._fixed_pool = None
        if isinstance(target, Pool):
            self._fixed_pool = target
        else:
            self._engine = target
        self._disabled = False
        self._listeners = []  # (target, event name, fn)
        self._lock = threading.Lock()
        self._reset()

    # --- identity and counters -------------------------------------------------

    def _reset(self):
        self._lock = threading.Lock()
        self.pid = os.getpid()
        self.instance = "%s:%d" % (_hostname(), self.pid)
        if self._index > 1:
            self.instance += "/%d" % self._index
        self._next_token = 0
        self._inflight = {}  # token -> monotonic start; insertion order == start order
        self._count = 0
        self._failed = 0
        self._timeouts = 0
        self._sum = 0.0
        self._buckets = [0] * (len(BUCKETS) + 1)  # last slot: above the largest bound
        self._connects = 0
        self._invalidations = 0
        self._soft_invalidations = 0
        self._recycles = 0
        self._pre_ping_failures = 0
        self._closes = 0

    # --- hot path ----------------------------------------------------------------

    def _begin(self):
        if not _proc.active:
            _activate()
        with self._lock:
            tok = self._next_token
            self._next_token = tok + 1
            # Read the clock under the lock so the dict stays ordered by start time.
            self._inflight[tok] = time.monotonic()
        return tok

    def _end(self, tok, failed, timeout):
        now = time.monotonic()
        with self._lock:
            start = self._inflight.pop(tok, None)
            if start is None:  # counters were reset (fork) during this checkout
                return
            d = now - start
            if d < 0:
                d = 0.0
            self._count += 1
            self._sum += d
            self._buckets[bisect.bisect_left(BUCKETS, d)] += 1
            if failed:
                self._failed += 1
            if timeout:
                self._timeouts += 1

    def _incr(self, attr):
        if self._disabled:
            return
        try:
            with self._lock:
                setattr(self, attr, getattr(self, attr) + 1)
        except Exception:
            pass

    # --- wiring ------------------------------------------------------------------

    def _current_pool(self):
        if self._fixed_pool is not None:
            return self._fixed_pool
        return self._engine.pool

    def _ensure_wrapped(self):
        """Wrap the engine's current pool; engine.dispose() replaces the pool."""
        try:
            pool = self._current_pool()
            if pool is not self._pool:
                self._wrap(pool)
        except Exception:
            _log.debug("dbpool_stats: cannot wrap pool", exc_info=True)

    def _wrap(self, pool):
        stats = self
        orig_connect = pool.connect
        orig_do_get = getattr(pool, "_do_get", None)

        def connect(*args, **kwargs):
            if stats._disabled:
                return orig_connect(*args, **kwargs)
            try:
                tok = stats._begin()
            except Exception:
                tok = None
            try:
                conn = orig_connect(*args, **kwargs)
            except BaseException as e:
                if tok is not None:
                    try:
                        stats._end(tok, True, isinstance(e, sa_exc.TimeoutError))
                    except Exception:
                        pass
                raise
            if tok is not None:
                try:
                    stats._end(tok, False, False)
                except Exception:
                    pass
            return conn

        connect._dbpool_stats = self
        pool.connect = connect

        if orig_do_get is not None:

            def _do_get(*args, **kwargs):
                rec = orig_do_get(*args, **kwargs)
                if not stats._disabled:
                    try:
                        stats._check_recycle(pool, rec)
                    except Exception:
                        pass
                return rec

            _do_get._dbpool_stats = self
            pool._do_get = _do_get

        # Pool events live in the pool's dispatch, which Pool.recreate() copies to
        # the new pool: register only where they are not there yet.
        for name, fn in (
            ("connect", self._on_connect),
            ("invalidate", self._on_invalidate),
            ("soft_invalidate", self._on_soft_invalidate),
            ("close", self._on_close),
            ("close_detached", self._on_close_detached),
        ):
            try:
                # event.contains() does not know the copies that recreate() made.
                if not any(l == fn for l in getattr(pool.dispatch, name)):
                    event.listen(pool, name, fn)
                    self._listeners.append((pool, name, fn))
            except Exception:
                _log.debug("dbpool_stats: cannot listen to %s", name, exc_info=True)
        if self._engine is not None and self._pool is None:
            try:
                event.listen(self._engine, "engine_disposed", self._on_engine_disposed)
                self._listeners.append((self._engine, "engine_disposed", self._on_engine_disposed))
            except Exception:
                _log.debug("dbpool_stats: cannot listen to engine_disposed", exc_info=True)
        self._pool = pool

    def _unwrap(self):
        self._disabled = True
        for pool in {id(p): p for p in (self._pool, self._fixed_pool) if p is not None}.values():
            for attr in ("connect", "_do_get"):
                fn = pool.__dict__.get(attr)
                if getattr(fn, "_dbpool_stats", None) is self:
                    try:
                        del pool.__dict__[attr]
                    except Exception:
                        pass
        for target, name, fn in self._listeners:
            try:
                if event.contains(target, name, fn):
                    event.remove(target, name, fn)
            except Exception:
                pass
        self._listeners = []

    def _check_recycle(self, pool, rec):
        # The exact test of _ConnectionRecord.get_connection(), which runs right
        # after _do_get() returns: an open connection older than pool_recycle is
        # closed and replaced. (Replacements after an invalidation are not counted.)
        recycle = getattr(pool, "_recycle", -1)
        if recycle is None or recycle < 0:
            return
        try:
            conn = rec.dbapi_connection
        except AttributeError:  # SQLAlchemy < 1.4.24
            conn = rec.connection
        if conn is not None and time.time() - rec.starttime > recycle:
            self._incr("_recycles")

    def _on_connect(self, dbapi_connection, connection_record):
        self._incr("_connects")

    def _on_invalidate(self, dbapi_connection, connection_record, exception):
        if self._disabled:
            return
        try:
            with self._lock:
                self._invalidations += 1
                # Pre-ping failure: _ConnectionFairy._checkout raises
                # InvalidatePoolError when dialect.do_ping() reports a disconnect,
                # and invalidates the record with it.
                if isinstance(exception, sa_exc.InvalidatePoolError) and getattr(
                    self._pool, "_pre_ping", False
                ):
                    self._pre_ping_failures += 1
        except Exception:
            pass

    def _on_soft_invalidate(self, dbapi_connection, connection_record, exception):
        self._incr("_soft_invalidations")

    def _on_close(self, dbapi_connection, connection_record):
        self._incr("_closes")

    def _on_close_detached(self, dbapi_connection):
        self._incr("_closes")

    def _on_engine_disposed(self, engine):
        self._ensure_wrapped()

    # --- reading -----------------------------------------------------------------

    def snapshot(self):
        """This instance's entry of the JSON document, as a dict."""
        self._ensure_wrapped()
        pool = self._pool
        size = _num(_call(pool, "size"))
        max_overflow = _num(getattr(pool, "_max_overflow", None))
        overflow = _num(_call(pool, "overflow"))
        status = {
            "pool_size": size,
            "max_overflow": max_overflow,
            "checked_out": _num(_call(pool, "checkedout")),
            "checked_in": _num(_call(pool, "checkedin")),
            "overflow": overflow,
            "total_connections": size + overflow if size is not None and overflow is not None else None,
        }
        timeout = _num(_call(pool, "timeout"))
        if timeout is None:
            timeout = _num(getattr(pool, "_timeout", None))
        recycle = _num(getattr(pool, "_recycle", None))
        if self._engine is not None:
            echo = getattr(self._engine, "echo", False)
        else:
            echo = getattr(pool, "echo", False)
        settings = {
            "pool_size": size,
            "max_overflow": max_overflow,
            "timeout_seconds": float(timeout) if timeout is not None else None,
            "recycle_seconds": recycle if recycle is not None else -1,
            "pre_ping": bool(getattr(pool, "_pre_ping", False)),
            "echo": bool(echo),
        }
        with self._lock:
            now = time.monotonic()
            collected_at = time.time()
            pending = len(self._inflight)
            oldest = next(iter(self._inflight.values()), None)
            count = self._count
            failed = self._failed
            timeouts = self._timeouts
            total = self._sum
            raw = list(self._buckets)
            counters = {
                "connects": self._connects,
                "invalidations": self._invalidations,
                "soft_invalidations": self._soft_invalidations,
                "recycles": self._recycles,
                "pre_ping_failures": self._pre_ping_failures,
                "closes": self._closes,
            }
            pid = self.pid
            instance = self.instance
        buckets = []
        cum = 0
        for le, n in zip(BUCKETS, raw):
            cum += n
            buckets.append({"le": le, "count": cum})
        snap = {
            "pool": self.name,
            "instance": instance,
            "pid": pid,
            "pool_class": type(pool).__name__,
            "collected_at": collected_at,
            "settings": settings,
            "status": status,
            "pending_checkouts": pending,
            "longest_checkout_wait_seconds": max(0.0, now - oldest) if oldest is not None else 0.0,
            "checkouts": {
                "count": count,
                "failed": failed,
                "sum_seconds": total,
                "buckets": buckets,
                "timeouts": timeouts,
            },
        }
        snap.update(counters)
        return snap


# --- public API ------------------------------------------------------------------


def _resolve(target):
    if isinstance(target, Pool):
        return target
    sync = getattr(target, "sync_engine", None)  # AsyncEngine
    if sync is not None:
        target = sync
    if not isinstance(getattr(target, "pool", None), Pool):
        raise TypeError(
            "dbpool_stats.instrument: expected an Engine, AsyncEngine or Pool, got %r" % (type(target),)
        )
    return target


def instrument(engine, name="default", multiprocess_dir=None, interval=None):
    """Record pool statistics of engine (Engine, AsyncEngine or Pool) under name.

    Instrumenting the same engine twice returns the first PoolStats. With
    multiprocess_dir (or the environment variable DBPOOL_STATS_DIR) this process
    also writes its snapshot to that directory every interval seconds (default 1),
    so that the endpoint of any worker process serves all of them.
    """
    target = _resolve(engine)
    name = str(name)
    with _registry_lock:
        for s in _registry:
            if (s._engine if s._engine is not None else s._fixed_pool) is target:
                stats = s
                break
        else:
            index = 1 + sum(1 for s in _registry if s.name == name)
            stats = PoolStats(target, name, index)
            stats._ensure_wrapped()
            _registry.append(stats)
    d = multiprocess_dir or os.environ.get(ENV_DIR)
    if d:
        if interval is None:
            try:
                interval = float(os.environ.get(ENV_INTERVAL, DEFAULT_INTERVAL))
            except ValueError:
                interval = DEFAULT_INTERVAL
        set_multiprocess_dir(d, interval=interval)
    return stats


def uninstrument(engine):
    """Stop recording engine; its entry leaves the document. Unknown engines are ignored."""
    try:
        target = _resolve(engine)
    except TypeError:
        return
    with _registry_lock:
        for s in list(_registry):
            if (s._engine if s._engine is not None else s._fixed_pool) is target:
                s._unwrap()
                _registry.remove(s)


def set_multiprocess_dir(path, interval=DEFAULT_INTERVAL, stale_after=None):
    """Turn on the shared-directory mode for this process (and its forked children).

    path=None turns it off and removes this process's file.
    """
    if path is None:
        shutdown()
        _mp["dir"] = None
        return
    interval = float(interval) if interval and float(interval) > 0 else DEFAULT_INTERVAL
    os.makedirs(path, exist_ok=True)
    path = os.path.abspath(path)
    if _mp["dir"] != path or _mp["interval"] != interval:
        shutdown()  # stop the old writer (outside the lock: it takes the lock) and drop the old file
    with _registry_lock:
        _mp["dir"] = path
        _mp["interval"] = interval
        _mp["stale_after"] = float(stale_after) if stale_after else STALE_INTERVALS * interval
        if _proc.active:
            _start_writer()


def _own_file(pid=None, hostname=None, directory=None):
    d = directory or _mp["dir"]
    return os.path.join(d, "%s.%d%s" % (hostname or _proc.hostname, pid or _proc.pid, FILE_SUFFIX))


def _activate():
    with _registry_lock:
        if _proc.active:
            return
        _proc.active = True
        if _mp["dir"]:
            _start_writer()


def _start_writer():
    if _proc.writer is not None and _proc.writer.is_alive():
        return
    stop = threading.Event()
    t = threading.Thread(target=_writer_loop, args=(stop, _mp["interval"]), name="dbpool-stats-writer", daemon=True)
    _proc.writer, _proc.writer_stop = t, stop
    t.start()


def _stop_writer():
    t, stop = _proc.writer, _proc.writer_stop
    _proc.writer = _proc.writer_stop = None
    if stop is not None:
        stop.set()
    if t is not None and t is not threading.current_thread() and t.is_alive():
        t.join(timeout=2)


def _writer_loop(stop, interval):
    while not stop.is_set():
        try:
            _write_own_file()
        except Exception:
            _log.debug("dbpool_stats: cannot write stats file", exc_info=True)
        if stop.wait(interval):
            break


def _write_own_file():
    d = _mp["dir"]
    if not d:
        return
    snaps = _own_snapshots()
    path = _own_file()
    if not snaps:
        _remove(path)
        return
    doc = {
        "format": _PROCESS_FORMAT,
        "version": FORMAT_VERSION,
        "hostname": _proc.hostname,
        "pid": _proc.pid,
        "written_at": time.time(),
        "instances": snaps,
    }
    tmp = os.path.join(d, ".%s.%d.%d.tmp" % (_proc.hostname, _proc.pid, threading.get_ident()))
    with open(tmp, "w") as f:
        json.dump(doc, f, separators=(",", ":"))
    os.replace(tmp, path)


def _remove(path):
    try:
        os.remove(path)
    except OSError:
        pass


def shutdown():
    """Stop this process's file writer and remove its file (also run at exit)."""
    try:
        _stop_writer()
        if _mp["dir"]:
            _remove(_own_file(os.getpid(), _hostname()))
    except Exception:
        pass


atexit.register(shutdown)


def mark_process_dead(pid, multiprocess_dir=None):
    """Remove a dead worker's file at once, e.g. from gunicorn's child_exit hook."""
    d = multiprocess_dir or _mp["dir"] or os.environ.get(ENV_DIR)
    if d:
        _remove(_own_file(int(pid), _hostname(), d))


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


def _own_snapshots():
    with _registry_lock:
        stats = list(_registry)
    out = []
    for s in stats:
        try:
            out.append(s.snapshot())
        except Exception:
            _log.debug("dbpool_stats: snapshot failed", exc_info=True)
    return out


def _sibling_snapshots(now):
    d = _mp["dir"]
    if not d:
        return []
    out = []
    try:
        entries = list(os.scandir(d))
    except OSError:
        return []
    for entry in entries:
        if entry.name.startswith(".") or not entry.name.endswith(FILE_SUFFIX):
            continue
        try:
            with open(entry.path) as f:
                doc = json.load(f)
            if not isinstance(doc, dict) or doc.get("format") != _PROCESS_FORMAT:
                continue
            host, pid = doc.get("hostname"), doc.get("pid")
            if host == _proc.hostname and pid == _proc.pid:
                continue  # our own figures are served live
            if host == _proc.hostname and isinstance(pid, int) and not _pid_alive(pid):
                _remove(entry.path)
                continue
            written = doc.get("written_at")
            if not isinstance(written, (int, float)) or now - written > _mp["stale_after"]:
                continue
            out.extend(x for x in doc.get("instances", ()) if isinstance(x, dict))
        except Exception:
            continue
    return out


def snapshot():
    """The whole JSON document as a dict: this process's live instances, plus its
    siblings' in the shared-directory mode."""
    if not _proc.active:
        try:
            _activate()
        except Exception:
            pass
    now = time.time()
    instances = _own_snapshots()
    try:
        instances.extend(_sibling_snapshots(now))
    except Exception:
        pass
    return {"format": FORMAT, "version": FORMAT_VERSION, "generated_at": now, "instances": instances}


def render_json():
    """The JSON document as bytes (UTF-8), for an application's own route."""
    try:
        doc = snapshot()
    except Exception:
        doc = {"format": FORMAT, "version": FORMAT_VERSION, "generated_at": time.time(), "instances": []}
    return json.dumps(doc, separators=(",", ":")).encode("utf-8")


# --- serving ---------------------------------------------------------------------

_HEADERS = (("Content-Type", "application/json"), ("Cache-Control", "no-store"))


def wsgi_app(environ, start_response):
    """WSGI application serving the document on every path it is mounted at."""
    method = environ.get("REQUEST_METHOD", "GET")
    if method not in ("GET", "HEAD"):
        start_response("405 Method Not Allowed", [("Allow", "GET, HEAD"), ("Content-Length", "0")])
        return [b""]
    body = render_json()
    start_response("200 OK", list(_HEADERS) + [("Content-Length", str(len(body)))])
    return [b"" if method == "HEAD" else body]


async def asgi_app(scope, receive, send):
    """ASGI application serving the document, e.g. app.mount("/dbpool", asgi_app)."""
    kind = scope.get("type")
    if kind == "lifespan":
        while True:
            msg = await receive()
            if msg.get("type") == "lifespan.startup":
                await send({"type": "lifespan.startup.complete"})
            elif msg.get("type") == "lifespan.shutdown":
                await send({"type": "lifespan.shutdown.complete"})
                return
    if kind != "http":
        return
    method = scope.get("method", "GET")
    if method not in ("GET", "HEAD"):
        await send(
            {
                "type": "http.response.start",
                "status": 405,
                "headers": [(b"allow", b"GET, HEAD"), (b"content-length", b"0")],
            }
        )
        await send({"type": "http.response.body", "body": b""})
        return
    body = render_json()
    headers = [(k.lower().encode(), v.encode()) for k, v in _HEADERS]
    headers.append((b"content-length", str(len(body)).encode()))
    await send({"type": "http.response.start", "status": 200, "headers": headers})
    await send({"type": "http.response.body", "body": b"" if method == "HEAD" else body})


class _Handler(BaseHTTPRequestHandler):
    server_version = "dbpool_stats/" + __version__

    def _serve(self, head):
        path = self.path.split("?", 1)[0]
        want = self.server.dbpool_path
        if path != want and path != want + "/":
            body = b"not found; the pool statistics are at " + want.encode() + b"\n"
            self.send_response(404)
            self.send_header("Content-Type", "text/plain; charset=utf-8")
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            if not head:
                self.wfile.write(body)
            return
        body = render_json()
        self.send_response(200)
        for k, v in _HEADERS:
            self.send_header(k, v)
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        if not head:
            self.wfile.write(body)

    def do_GET(self):
        self._serve(False)

    def do_HEAD(self):
        self._serve(True)

    def log_message(self, format, *args):
        pass


class _Server(ThreadingHTTPServer):
    daemon_threads = True
    allow_reuse_address = True


def start_http_server(port=9931, addr="127.0.0.1", path=DEFAULT_PATH):
    """Serve the document at http://addr:port/path from a daemon thread.

    Returns the server; server.server_port is the bound port (port=0 picks a free
    one), server.url the full URL, server.shutdown() stops it.
    """
    if not path.startswith("/"):
        path = "/" + path
    path = path.rstrip("/") or "/"
    srv = _Server((addr, port), _Handler)
    srv.dbpool_path = path
    host = srv.server_address[0]
    if ":" in host:
        host = "[%s]" % host
    srv.url = "http://%s:%d%s" % (host, srv.server_address[1], path)
    t = threading.Thread(target=srv.serve_forever, name="dbpool-stats-http", daemon=True)
    t.start()
    return srv


# --- fork --------------------------------------------------------------------------


def _after_fork_in_child():
    global _registry_lock, _proc
    _registry_lock = threading.RLock()
    _proc = _Proc()  # new pid, not active, no writer thread (threads do not survive fork)
    for s in _registry:
        try:
            s._reset()
        except Exception:
            pass


if hasattr(os, "register_at_fork"):
    os.register_at_fork(after_in_child=_after_fork_in_child)


def _reset_for_tests():
    """Forget every instrumented engine and the shared directory (tests only)."""
    shutdown()
    with _registry_lock:
        for s in list(_registry):
            s._unwrap()
        del _registry[:]
    _mp["dir"] = None
    _mp["interval"] = DEFAULT_INTERVAL
    _mp["stale_after"] = STALE_INTERVALS * DEFAULT_INTERVAL
    _proc.active = False
