"""Per-pool recording: what one instrumented engine's pool does, and its entry of the document.

PoolStats replaces three methods on the pool instance (never on the class, so other pools are
untouched):

- connect(): every checkout attempt, its time and outcome, and the callers waiting now; a
  successful one starts the connection's hold (with leak detection: and notes its site);
- _do_return_conn(): the end of a hold, at checkin or detach;
- _invoke_creator(): every attempt to open a DBAPI connection, whether it failed, and whether
  it replaces a connection that pool_recycle retired;

and listens to the pool events connect, invalidate, soft_invalidate, close, close_detached and
detach (which fire only when a connection opens, breaks, closes or leaves the pool) and to
engine_disposed.

The hot path (connect and _do_return_conn, run on every checkout and checkin) reads the clock
once per edge and takes no lock. Each of its updates is a set or dict insertion or removal, or
one read-modify-write of a list element or an attribute (``counts[i] += 1``, ``h.sum += d``)
with no call in between: CPython hands the GIL to another thread only at a call or a backward
jump, so no update is interrupted half way. (tests/test_threads.py counts exactly with eight threads
and a switch interval of 1 us.) Every hook catches its own errors: a bug here makes the
figures less complete and never fails a checkout.
"""

import asyncio
import os
import sys
import time
import weakref
from bisect import bisect_left

from sqlalchemy import event
from sqlalchemy import exc as sa_exc
from sqlalchemy.pool import Pool
from sqlalchemy.pool.base import _ConnectionRecord

from . import leaks, multiprocess
from .histogram import BUCKETS, CREATE_BUCKETS, USE_BUCKETS, Histogram
from .registry import REGISTRY, hostname, log

#: Why a checkout failed: the keys of checkouts.failures, in the document's order.
FAILURE_REASONS = ("timeout", "connect", "cancelled", "other")
# The function that opens a record's DBAPI connection and runs the connect events; a checkout
# that failed inside it failed to connect.
_CONNECT_CODE = getattr(getattr(_ConnectionRecord, "_ConnectionRecord__connect", None), "__code__", None)


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


def failure_reason(exc):
    """The key of checkouts.failures for an exception that a checkout raised."""
    if isinstance(exc, sa_exc.TimeoutError):
        return "timeout"
    if isinstance(exc, asyncio.CancelledError):
        return "cancelled"
    tb = exc.__traceback__
    while tb is not None:
        if tb.tb_frame.f_code is _CONNECT_CODE:
            return "connect"
        tb = tb.tb_next
    return "other"


class PoolStats:
    """Statistics of one instrumented engine (or pool) in this process."""

    def __init__(self, target, name, index, registry, leak_threshold=None, leak_stack=False):
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
        #: seconds a connection may be held before it counts as leaked; None: detection off
        self.leak_threshold = leak_threshold
        self.leak_stack = leak_stack
        self._listeners = []  # (target, event name, fn)
        self._wrapped = []  # (pool, attribute, the pool's own instance attribute or None, wrapper)
        # The hot path's closures hold these objects; _reset() zeroes them in place.
        # Clock readings at the start of the checkouts in progress: distinct, since the GIL
        # puts at least a few bytecodes between any two readings.
        self._waiting = set()
        self._held = {}  # connection record -> clock reading at its checkout
        self._sites = {}  # connection record -> its checkout's site (leak detection only)
        self._wait = Histogram(BUCKETS)
        self._use = Histogram(USE_BUCKETS)
        self._create = Histogram(CREATE_BUCKETS)
        self._failures = dict.fromkeys(FAILURE_REASONS, 0)
        # Recycles, counted off the hot path: records whose connection is open and was neither
        # invalidated nor detached; of those, the ones that _ConnectionRecord.get_connection()
        # closed for their age (pool_recycle, the first test it makes), until they reconnect.
        self._open = weakref.WeakSet()
        self._closed_for_age = weakref.WeakSet()
        # record -> clock reading when its DBAPI connect started, until its connect event.
        # (Not in record.info: on SQLAlchemy 1.4 a record whose info exists costs every
        # checkout of it 0.3 us.)
        self._connecting = weakref.WeakKeyDictionary()
        self._reset()

    # --- identity and counters -------------------------------------------------

    def _reset(self):
        self.pid = os.getpid()
        self.instance = "%s:%d" % (hostname(), self.pid)
        if self._index > 1:
            self.instance += "/%d" % self._index
        self._waiting.clear()
        self._held.clear()
        self._sites.clear()
        self._open.clear()
        self._closed_for_age.clear()
        self._connecting.clear()
        for h in (self._wait, self._use, self._create):
            h.reset()
        for k in self._failures:
            self._failures[k] = 0
        self._create_failed = 0
        self._connects = 0
        self._invalidations = 0
        self._soft_invalidations = 0
        self._recycles = 0
        self._pre_ping_failures = 0
        self._closes = 0

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

    def _replace(self, pool, attr, make):
        """Put make(the pool's current attr) on the pool instance as attr."""
        own = pool.__dict__.get(attr)  # _invoke_creator is the instance's own; the others are the class's
        wrapper = make(getattr(pool, attr))
        setattr(pool, attr, wrapper)
        self._wrapped.append((pool, attr, own, wrapper))

    def _wrap(self, pool):
        self._replace(pool, "connect", self._checkout_hook)
        self._replace(pool, "_do_return_conn", self._checkin_hook)
        self._replace(pool, "_invoke_creator", self._creator_hook)
        # Pool events live in the pool's dispatch, which Pool.recreate() copies to
        # the new pool: register only where they are not there yet.
        for name, fn in (
            ("connect", self._on_connect),
            ("invalidate", self._on_invalidate),
            ("soft_invalidate", self._on_soft_invalidate),
            ("close", self._on_close),
            ("close_detached", self._on_close_detached),
            ("detach", self._on_detach),
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
        for pool, attr, own, wrapper in reversed(self._wrapped):
            try:
                if pool.__dict__.get(attr) is wrapper:
                    if own is None:
                        del pool.__dict__[attr]
                    else:
                        pool.__dict__[attr] = own
            except Exception:
                pass
        self._wrapped = []
        for target, name, fn in self._listeners:
            try:
                if event.contains(target, name, fn):
                    event.remove(target, name, fn)
            except Exception:
                pass
        self._listeners = []

    # --- the hooks: hot path -----------------------------------------------------

    def _checkout_hook(self, orig_connect):
        stats = self
        registry = self._registry
        clock = time.perf_counter
        waiting_add, waiting_discard = self._waiting.add, self._waiting.discard
        held, sites = self._held, self._sites
        wait = self._wait
        wait_counts, wait_bounds = wait.counts, wait.bounds
        getframe = sys._getframe
        if not self.leak_threshold:
            site = None
        elif self.leak_stack:
            site = leaks.checkout_site_and_stack
        else:
            site = leaks.checkout_site

        def connect():
            try:
                t0 = clock()
                waiting_add(t0)
                if not registry.active:
                    registry.activate()
            except Exception:
                t0 = None
            try:
                fairy = orig_connect()
            except BaseException as e:
                stats._checkout_failed(t0, e)
                raise
            try:
                t1 = clock()
                waiting_discard(t0)
                d = t1 - t0
                wait_counts[bisect_left(wait_bounds, d)] += 1
                wait.sum += d
                record = fairy._connection_record
                held[record] = t1
                if site is not None:
                    sites[record] = site(getframe(1))
            except Exception:
                pass
            return fairy

        connect._dbpool_stats = self
        return connect

    def _checkin_hook(self, orig_return):
        clock = time.perf_counter
        pop_held = self._held.pop
        pop_site = self._sites.pop if self.leak_threshold else None
        use = self._use
        use_counts, use_bounds = use.counts, use.bounds

        def _do_return_conn(record):
            try:
                t = pop_held(record, None)  # None: a failed checkout's record, never held
                if t is not None:
                    d = clock() - t
                    use_counts[bisect_left(use_bounds, d)] += 1
                    use.sum += d
                    if pop_site is not None:
                        pop_site(record, None)
            except Exception:
                pass
            return orig_return(record)

        return _do_return_conn

    # --- the hooks: when connections open, break or close ------------------------

    def _checkout_failed(self, t0, exc):
        try:
            if t0 is None:  # the hook failed before the checkout
                return
            self._waiting.discard(t0)
            self._wait.observe(time.perf_counter() - t0)
            self._failures[failure_reason(exc)] += 1
        except Exception:
            pass

    def _creator_hook(self, orig_creator):
        stats = self
        clock = time.perf_counter
        closed_for_age = self._closed_for_age
        connecting = self._connecting

        def _invoke_creator(record):
            t0 = clock()
            try:
                if record in closed_for_age:  # reconnecting a record retired for its age
                    closed_for_age.discard(record)
                    stats._recycles += 1
            except Exception:
                pass
            try:
                conn = orig_creator(record)
            except BaseException:
                try:
                    stats._create.observe(clock() - t0)
                    stats._create_failed += 1
                except Exception:
                    pass
                raise
            try:
                # The connect event, after SQLAlchemy's own setup of the connection, ends it.
                connecting[record] = t0
            except Exception:
                pass
            return conn

        return _invoke_creator

    def _on_connect(self, dbapi_connection, connection_record):
        try:
            self._connects += 1
            self._open.add(connection_record)
            t0 = self._connecting.pop(connection_record, None)
            if t0 is not None:
                self._create.observe(time.perf_counter() - t0)
        except Exception:
            pass

    def _on_invalidate(self, dbapi_connection, connection_record, exception):
        try:
            self._invalidations += 1
            self._open.discard(connection_record)  # its close next is no recycle
            # Pre-ping failure: _ConnectionFairy._checkout raises InvalidatePoolError when
            # dialect.do_ping() reports a disconnect, and invalidates the record with it.
            if isinstance(exception, sa_exc.InvalidatePoolError) and getattr(self._pool, "_pre_ping", False):
                self._pre_ping_failures += 1
        except Exception:
            pass

    def _on_soft_invalidate(self, dbapi_connection, connection_record, exception):
        try:
            self._soft_invalidations += 1
        except Exception:
            pass

    def _on_close(self, dbapi_connection, connection_record):
        try:
            self._closes += 1
            if connection_record in self._open:
                self._open.discard(connection_record)
                # get_connection() recycles for age exactly when this holds; a record closed
                # for another reason (overflow returned, dispose) is never reconnected.
                recycle = getattr(self._pool, "_recycle", -1)
                if recycle is not None and recycle > -1 and time.time() - connection_record.starttime > recycle:
                    self._closed_for_age.add(connection_record)
        except Exception:
            pass

    def _on_close_detached(self, dbapi_connection):
        try:
            self._closes += 1
        except Exception:
            pass

    def _on_detach(self, dbapi_connection, connection_record):
        try:
            self._open.discard(connection_record)
        except Exception:
            pass

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
        # One C-level copy each: the hot path may change them meanwhile.
        now = time.perf_counter()
        collected_at = time.time()
        waiting = list(self._waiting)
        held = list(self._held.items())
        sites = dict(self._sites)
        held = [(t, sites.get(record)) for record, t in held]
        failures = dict(self._failures)
        count, total, buckets = self._wait.read()
        use_count, use_sum, use_buckets = self._use.read()
        create_count, create_sum, create_buckets = self._create.read()
        failed = sum(failures.values())
        snap = {
            "pool": self.name,
            "instance": self.instance,
            "pid": self.pid,
            "pool_class": type(pool).__name__,
            "collected_at": collected_at,
            "settings": settings,
            "status": status,
            "pending_checkouts": len(waiting),
            "longest_checkout_wait_seconds": max(0.0, now - min(waiting)) if waiting else 0.0,
            "checkouts": {
                "count": count,
                "failed": failed,
                "sum_seconds": total,
                "buckets": buckets,
                "timeouts": failures["timeout"],
                "failures": failures,
            },
            "use_time": {"count": use_count, "sum_seconds": use_sum, "buckets": use_buckets},
            "create_time": {
                "count": create_count,
                "failed": self._create_failed,
                "sum_seconds": create_sum,
                "buckets": create_buckets,
            },
            "held_connections": len(held),
            "longest_held_seconds": max(0.0, now - min(t for t, _ in held)) if held else 0.0,
            "leaks": leaks.report(held, now, self.leak_threshold),
            "connects": self._connects,
            "invalidations": self._invalidations,
            "soft_invalidations": self._soft_invalidations,
            "recycles": self._recycles,
            "pre_ping_failures": self._pre_ping_failures,
            "closes": self._closes,
        }
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


def instrument(engine, name="default", multiprocess_dir=None, interval=None, leak_threshold=None, leak_stack=None):
    """Record pool statistics of engine (Engine, AsyncEngine or Pool) under name.

    Instrumenting the same engine twice returns the first PoolStats (and keeps its
    settings). With multiprocess_dir (or the environment variable DBPOOL_STATS_DIR) this
    process also writes its snapshot to that directory every interval seconds (default 1),
    so that the endpoint of any worker process serves all of them.

    leak_threshold: seconds a connection may be held before the document counts it as leaked
    and names the line of the application that checked it out; 0 turns leak detection off.
    Default: $DBPOOL_STATS_LEAK_THRESHOLD, else off. leak_stack=True (or
    $DBPOOL_STATS_LEAK_STACK=1) keeps the whole stack of each checkout, not only its line.
    A bad value raises ValueError naming the setting.
    """
    target = _resolve(engine)
    name = str(name)
    if not getattr(sys, "_is_gil_enabled", lambda: True)():
        log.warning("dbpool_stats: this Python runs without the GIL; its lock-free counts may lose updates")
    threshold = leaks.threshold_from(leak_threshold)
    stack = leaks.stack_from(leak_stack)
    with REGISTRY.lock:
        stats = REGISTRY.find(target)
        if stats is None:
            index = 1 + sum(1 for s in REGISTRY.pools if s.name == name)
            stats = PoolStats(target, name, index, REGISTRY, leak_threshold=threshold, leak_stack=stack)
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
    multiprocess._stop(final=False)
    with REGISTRY.lock:
        for s in list(REGISTRY.pools):
            s._unwrap()
        del REGISTRY.pools[:]
    REGISTRY.shared = None
    REGISTRY.active = False
