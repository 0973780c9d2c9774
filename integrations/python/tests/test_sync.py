"""create_engine() (QueuePool) against the real PostgreSQL."""

import os
import threading
import time

import dbpool_stats
from sqlalchemy import exc, text
from sqlalchemy.pool import NullPool

from .support import PoolTestCase, terminate


def status_now(pool):
    return {
        "pool_size": pool.size(),
        "max_overflow": pool._max_overflow,
        "checked_out": pool.checkedout(),
        "checked_in": pool.checkedin(),
        "overflow": pool.overflow(),
        "total_connections": pool.size() + pool.overflow(),
    }


class SyncEngineTest(PoolTestCase):
    def test_status_equals_pool_while_connections_are_held(self):
        e = self.engine(pool_size=3, max_overflow=4, pool_timeout=5, pool_recycle=3600, pool_pre_ping=True)
        stats = dbpool_stats.instrument(e, name="api")
        self.assertIs(dbpool_stats.instrument(e, name="api"), stats, "instrumenting twice returns the same")
        held = []
        opened = 0
        try:
            for k in (0, 2, 3, 5, 7):
                while len(held) < k:
                    c = e.connect()
                    c.execute(text("SELECT 1"))
                    held.append(c)
                    opened += 1
                snap = stats.snapshot()
                want = status_now(e.pool)
                self.assertEqual(snap["status"], want, "holding %d" % k)
                self.assertEqual(snap["status"]["checked_out"], k)
                self.assertEqual(snap["status"]["overflow"], k - 3)
                self.assertEqual(snap["pending_checkouts"], 0)
            for c in held[3:]:
                c.close()  # overflow connections are closed on return
            del held[3:]
            snap = stats.snapshot()
            self.assertEqual(snap["status"], status_now(e.pool))
            self.assertEqual(snap["status"]["checked_out"], 3)
            # QueuePool keeps returned connections while its queue has room.
            self.assertEqual(snap["status"]["overflow"], 3)
            self.assertEqual(snap["status"]["checked_in"], 3)
        finally:
            for c in held:
                c.close()
        snap = stats.snapshot()
        self.assertEqual(snap["status"], status_now(e.pool))
        self.assertEqual(snap["status"]["checked_in"], 3)
        self.assertEqual(snap["pool"], "api")
        self.assertEqual(snap["pid"], os.getpid())
        self.assertTrue(snap["instance"].endswith(":%d" % os.getpid()), snap["instance"])
        self.assertEqual(snap["pool_class"], "QueuePool")
        self.assertEqual(
            snap["settings"],
            {"pool_size": 3, "max_overflow": 4, "timeout_seconds": 5.0, "recycle_seconds": 3600, "pre_ping": True, "echo": False},
        )
        self.assertEqual(snap["checkouts"]["count"], opened)
        self.assertEqual(snap["checkouts"]["failed"], 0)
        self.assertEqual(snap["checkouts"]["timeouts"], 0)
        self.assertEqual(snap["connects"], 7)
        self.assertEqual(snap["closes"], 4)
        self.assertHistogram(snap["checkouts"])
        self.assertEqual(snap["checkouts"]["buckets"][-1]["count"], opened)
        self.assertAlmostEqual(time.time(), snap["collected_at"], delta=5)

    def test_defaults_recycle_never_and_echo(self):
        e = self.engine(echo=True)
        e.echo = False  # keep the test output quiet; echo is read at snapshot time
        snap = dbpool_stats.instrument(e).snapshot()
        self.assertEqual(snap["pool"], "default")
        self.assertEqual(snap["settings"]["recycle_seconds"], -1)
        self.assertEqual(snap["settings"]["pre_ping"], False)
        self.assertEqual(snap["settings"]["pool_size"], 5)
        self.assertEqual(snap["settings"]["max_overflow"], 10)
        self.assertEqual(snap["settings"]["timeout_seconds"], 30.0)
        e.echo = "debug"
        self.assertIs(dbpool_stats.instrument(e).snapshot()["settings"]["echo"], True)
        e.echo = False

    def test_timeouts_under_thread_load(self):
        e = self.engine(pool_size=1, max_overflow=0, pool_timeout=0.2)
        stats = dbpool_stats.instrument(e, name="tight")
        threads, rounds = 6, 4
        seen = {"timeouts": 0, "ok": 0, "other": []}
        lock = threading.Lock()

        def worker():
            for _ in range(rounds):
                try:
                    with e.connect() as c:
                        c.execute(text("SELECT pg_sleep(0.15)"))
                    with lock:
                        seen["ok"] += 1
                except exc.TimeoutError:
                    with lock:
                        seen["timeouts"] += 1
                except Exception as err:  # pragma: no cover - reported below
                    with lock:
                        seen["other"].append(repr(err))

        ts = [threading.Thread(target=worker) for _ in range(threads)]
        for t in ts:
            t.start()
        for t in ts:
            t.join(30)
        self.assertEqual(seen["other"], [])
        self.assertGreater(seen["timeouts"], 0, "the load must produce pool timeouts")
        snap = stats.snapshot()
        co = snap["checkouts"]
        self.assertEqual(co["count"], threads * rounds, "one observation per checkout attempt")
        self.assertEqual(co["timeouts"], seen["timeouts"])
        self.assertEqual(co["failed"], seen["timeouts"])
        self.assertEqual(co["failures"], {"timeout": seen["timeouts"], "connect": 0, "cancelled": 0, "other": 0})
        # Each successful checkout's hold ended and was timed.
        self.assertEqual(snap["use_time"]["count"], seen["ok"])
        self.assertEqual(co["count"] - co["failed"], seen["ok"])
        self.assertHistogram(co)
        self.assertEqual(co["buckets"][-1]["count"], co["count"])
        # A timed-out checkout waited at least pool_timeout (0.2 s).
        le_01 = [b["count"] for b in co["buckets"] if b["le"] == 0.1][0]
        self.assertLessEqual(le_01, co["count"] - co["timeouts"])
        self.assertGreaterEqual(co["sum_seconds"], 0.2 * co["timeouts"])
        self.assertEqual(snap["pending_checkouts"], 0)
        self.assertEqual(snap["longest_checkout_wait_seconds"], 0.0)

    def test_pending_checkouts_and_longest_wait(self):
        e = self.engine(pool_size=1, max_overflow=0, pool_timeout=5)
        stats = dbpool_stats.instrument(e)
        held = e.connect()
        got = threading.Event()

        def waiter():
            with e.connect():
                got.set()

        t = threading.Thread(target=waiter)
        t.start()
        try:
            time.sleep(0.4)
            snap = stats.snapshot()
            self.assertEqual(snap["pending_checkouts"], 1)
            self.assertGreaterEqual(snap["longest_checkout_wait_seconds"], 0.35)
            self.assertLess(snap["longest_checkout_wait_seconds"], 5)
            self.assertFalse(got.is_set())
        finally:
            held.close()
            t.join(10)
        self.assertTrue(got.is_set())
        snap = stats.snapshot()
        self.assertEqual(snap["pending_checkouts"], 0)
        self.assertEqual(snap["longest_checkout_wait_seconds"], 0.0)
        self.assertEqual(snap["checkouts"]["count"], 2)
        # The waiter's checkout took >= 0.4 s and is in the histogram above 0.25 s. (The first
        # checkout opened the connection: fast, but on a loaded machine not surely <= 0.25 s.)
        le_025 = [b["count"] for b in snap["checkouts"]["buckets"] if b["le"] == 0.25][0]
        self.assertGreaterEqual(snap["checkouts"]["count"] - le_025, 1)
        self.assertGreaterEqual(snap["checkouts"]["sum_seconds"], 0.35)

    def test_pre_ping_failure(self):
        # SQLAlchemy 2.0's psycopg (3) dialect restores autocommit in do_ping's finally clause;
        # about once in a hundred runs the failed ping leaves psycopg's connection ACTIVE, and
        # the restore raises ProgrammingError ("can't change 'autocommit' now"), which hides the
        # disconnect, so the checkout raises instead of reconnecting. That is the library's
        # race, not the integration's: the scenario then runs once more from the start.
        for attempt in range(2):
            try:
                self._pre_ping_failure()
                return
            except exc.ProgrammingError as err:
                if attempt or "can't change 'autocommit' now" not in str(err):
                    raise
                dbpool_stats._reset_for_tests()

    def _pre_ping_failure(self):
        e = self.engine(pool_size=1, max_overflow=0, pool_pre_ping=True)
        stats = dbpool_stats.instrument(e)
        with e.connect() as c:
            pid = c.execute(text("SELECT pg_backend_pid()")).scalar()
        terminate(pid)
        with e.connect() as c:  # pre-ping finds the dead connection and reconnects
            pid2 = c.execute(text("SELECT pg_backend_pid()")).scalar()
        self.assertNotEqual(pid, pid2)
        snap = stats.snapshot()
        self.assertEqual(snap["pre_ping_failures"], 1)
        self.assertEqual(snap["invalidations"], 1)
        self.assertEqual(snap["connects"], 2)
        self.assertEqual(snap["recycles"], 0)
        self.assertEqual(snap["checkouts"]["count"], 2)
        self.assertEqual(snap["checkouts"]["failed"], 0)

    def test_recycle(self):
        e = self.engine(pool_size=1, pool_recycle=60)
        stats = dbpool_stats.instrument(e)
        with e.connect() as c:
            c.execute(text("SELECT 1"))
        with e.connect() as c:  # young: not recycled
            c.execute(text("SELECT 1"))
        self.assertEqual(stats.snapshot()["recycles"], 0)
        # Age the pooled connection past pool_recycle rather than wait for it: SQLAlchemy and
        # dbpool_stats both compare time.time() - record.starttime with pool_recycle.
        (record,) = e.pool._pool.queue
        record.starttime -= 61
        with e.connect() as c:
            c.execute(text("SELECT 1"))
        snap = stats.snapshot()
        self.assertEqual(snap["recycles"], 1)
        self.assertEqual(snap["connects"], 2)
        self.assertEqual(snap["closes"], 1)
        self.assertEqual(snap["settings"]["recycle_seconds"], 60)
        self.assertEqual(snap["invalidations"], 0)

    def test_old_connections_closed_otherwise_are_no_recycles(self):
        e = self.engine(pool_size=1, max_overflow=1, pool_recycle=60)
        stats = dbpool_stats.instrument(e)
        first, overflow = e.connect(), e.connect()
        for c in (first, overflow):
            c.connection._connection_record.starttime -= 61
        first.invalidate()  # old, invalidated, then reopened on the next checkout
        first.close()  # back in the pool's queue, which is then full
        overflow.close()  # old, returned to a full queue: closed and never reconnected
        with e.connect() as c:
            c.execute(text("SELECT 1"))
        snap = stats.snapshot()
        self.assertEqual((snap["connects"], snap["closes"], snap["invalidations"]), (3, 2, 1))
        self.assertEqual(snap["recycles"], 0)

    def test_invalidations(self):
        e = self.engine(pool_size=2)
        stats = dbpool_stats.instrument(e)
        with e.connect() as c:
            c.execute(text("SELECT 1"))
            c.invalidate()
        snap = stats.snapshot()
        self.assertEqual(snap["invalidations"], 1)
        self.assertEqual(snap["pre_ping_failures"], 0)
        raw = e.raw_connection()
        raw.invalidate(soft=True)
        raw.close()
        with e.connect() as c:  # the soft-invalidated connection is replaced here
            c.execute(text("SELECT 1"))
        snap = stats.snapshot()
        self.assertEqual(snap["invalidations"], 1)
        self.assertEqual(snap["soft_invalidations"], 1)
        self.assertEqual(snap["recycles"], 0, "replacement after invalidation is not an age recycle")
        self.assertEqual(snap["connects"], 3)

    def test_engine_dispose_keeps_counting(self):
        e = self.engine(pool_size=2)
        stats = dbpool_stats.instrument(e)
        with e.connect() as c:
            c.execute(text("SELECT 1"))
        old = e.pool
        e.dispose()
        self.assertIsNot(e.pool, old)
        with e.connect() as c:
            c.execute(text("SELECT 1"))
        snap = stats.snapshot()
        self.assertEqual(snap["checkouts"]["count"], 2)
        self.assertEqual(snap["connects"], 2, "pool events survive Pool.recreate()")
        self.assertEqual(snap["status"], status_now(e.pool))

    def test_nullpool_and_odd_pools_never_break_the_application(self):
        e = self.engine(poolclass=NullPool)
        stats = dbpool_stats.instrument(e, name="null")
        for _ in range(3):
            with e.connect() as c:
                self.assertEqual(c.execute(text("SELECT 1")).scalar(), 1)
        snap = stats.snapshot()
        self.assertEqual(snap["pool_class"], "NullPool")
        self.assertEqual(set(snap["status"].values()), {None})
        self.assertIsNone(snap["settings"]["pool_size"])
        self.assertIsNone(snap["settings"]["max_overflow"])
        self.assertIsNone(snap["settings"]["timeout_seconds"])
        self.assertEqual(snap["checkouts"]["count"], 3)
        self.assertEqual(snap["connects"], 3)
        self.assertEqual(snap["closes"], 3)
        self.assertEqual(snap["recycles"], 0)

    def test_broken_stats_code_never_raises_into_checkouts(self):
        e = self.engine(pool_size=1, max_overflow=0, pool_timeout=0.1, pool_recycle=60)
        stats = dbpool_stats.instrument(e, name="broken", leak_threshold=60)

        class Broken:
            """Stands for a bug: every use of it raises."""

            def __getattr__(self, name):
                raise RuntimeError("bug in the stats code")

        broken = Broken()
        # Everything the hooks change: the histograms' sums (after the buckets, so the
        # exception comes half way through a hook), the create histogram, the failure and event
        # counters.
        stats._wait.sum = stats._use.sum = "not a number"
        stats._create = stats._failures = broken
        for attr in ("_connects", "_invalidations", "_soft_invalidations", "_recycles", "_closes"):
            setattr(stats, attr, broken)
        for _ in range(3):
            with e.connect() as c:
                self.assertEqual(c.execute(text("SELECT 1")).scalar(), 1)
        with e.connect():
            with self.assertRaises(exc.TimeoutError):  # the failed checkout's hook is broken too
                e.connect()
        (record,) = e.pool._pool.queue
        record.starttime -= 61  # recycled on the next checkout
        with e.connect() as c:
            self.assertEqual(c.execute(text("SELECT 1")).scalar(), 1)
            c.invalidate()
        raw = e.raw_connection()
        raw.invalidate(soft=True)
        raw.close()
        e.dispose()  # closes
        with e.connect() as c:  # the new pool's hooks hold the same broken objects
            self.assertEqual(c.execute(text("SELECT 1")).scalar(), 1)
        # A broken snapshot leaves the document valid; the other engines still show.
        ok = self.engine(pool_size=1)
        dbpool_stats.instrument(ok, name="ok")
        import json

        doc = json.loads(dbpool_stats.render_json())
        self.assertEqual([i["pool"] for i in doc["instances"]], ["ok"])
        # Pool methods that fail give nulls, not exceptions.
        stats._failures = dict.fromkeys(dbpool_stats.FAILURE_REASONS, 0)
        stats._create = dbpool_stats.histogram.Histogram(dbpool_stats.CREATE_BUCKETS)
        stats._wait.sum = stats._use.sum = 0.0
        e.pool.size = lambda: 1 / 0
        snap = stats.snapshot()
        self.assertIsNone(snap["status"]["pool_size"])
        self.assertIsNone(snap["status"]["total_connections"])

    def test_uninstrument(self):
        e = self.engine(pool_size=1)
        creator = e.pool._invoke_creator
        stats = dbpool_stats.instrument(e)
        self.assertIsNot(e.pool._invoke_creator, creator)
        with e.connect():
            pass
        dbpool_stats.uninstrument(e)
        self.assertNotIn("connect", e.pool.__dict__)
        with e.connect():
            pass
        self.assertEqual(stats.snapshot()["checkouts"]["count"], 1)
        self.assertEqual(stats.snapshot()["use_time"]["count"], 1)
        self.assertEqual(dbpool_stats.snapshot()["instances"], [])
        for attr in ("connect", "_do_get", "_do_return_conn"):
            self.assertNotIn(attr, e.pool.__dict__)
        # _invoke_creator is the pool's own attribute: put back, not removed.
        self.assertIs(e.pool._invoke_creator, creator)
        dbpool_stats.uninstrument(object())  # unknown: ignored

    def test_instrument_rejects_non_engines(self):
        with self.assertRaises(TypeError):
            dbpool_stats.instrument("postgresql://")
