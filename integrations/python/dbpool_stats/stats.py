"""Per-pool recording: what one instrumented engine's pool does, from SQLAlchemy's pool events.

PoolStats wraps the pool's connect() (checkout time, failures, timeouts, callers waiting)
and _do_get() (recycles), listens to the pool's events (connects, invalidations, pre-ping
failures, closes) and turns them, with the pool's own status, into this instance's entry
of the JSON document. instrument() and uninstrument() put pools into the registry and take
them out.
"""

import bisect
import os
import threading
import time

from sqlalchemy import event
from sqlalchemy import exc as sa_exc
from sqlalchemy.pool import Pool

from . import multiprocess
from .registry import REGISTRY, hostname, log

#: Upper bounds (seconds) of the cumulative checkout-time histogram buckets; the
#: exporter's Go histogram uses the same bounds. +Inf is implied ("count").
BUCKETS = (0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30)


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

    def __init__(self, target, name, index, registry):
        self.name = name
        self._index = index  # 1 for the first engine of this name in the process
        self._registry = registry
        self._target = target  # what instrument() was given (an AsyncEngine's sync engine)
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
        self.instance = "%s:%d" % (hostname(), self.pid)
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
        if not self._registry.active:
            self._registry.activate()
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
            log.debug("dbpool_stats: cannot wrap pool", exc_info=True)

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
                log.debug("dbpool_stats: cannot listen to %s", name, exc_info=True)
        if self._engine is not None and self._pool is None:
            try:
                event.listen(self._engine, "engine_disposed", self._on_engine_disposed)
                self._listeners.append((self._engine, "engine_disposed", self._on_engine_disposed))
            except Exception:
                log.debug("dbpool_stats: cannot listen to engine_disposed", exc_info=True)
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
    with REGISTRY.lock:
        stats = REGISTRY.find(target)
        if stats is None:
            index = 1 + sum(1 for s in REGISTRY.pools if s.name == name)
            stats = PoolStats(target, name, index, REGISTRY)
            stats._ensure_wrapped()
            REGISTRY.pools.append(stats)
    multiprocess.enable(multiprocess_dir, interval)
    return stats


def uninstrument(engine):
    """Stop recording engine; its entry leaves the document. Unknown engines are ignored."""
    try:
        target = _resolve(engine)
    except TypeError:
        return
    with REGISTRY.lock:
        stats = REGISTRY.find(target)
        if stats is not None:
            stats._unwrap()
            REGISTRY.pools.remove(stats)


def _reset_for_tests():
    """Forget every instrumented engine and the shared directory (tests only)."""
    multiprocess.shutdown()
    with REGISTRY.lock:
        for s in list(REGISTRY.pools):
            s._unwrap()
        del REGISTRY.pools[:]
    REGISTRY.shared = None
    REGISTRY.active = False
