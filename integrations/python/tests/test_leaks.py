"""Leak detection: connections held past the threshold, with the line that checked them out.

The async test leaves a session idle in a transaction exactly as the seed document's "Bad:
Potential idle-in-transaction" example does, against the real PostgreSQL, and finds its file
and line in the document.
"""

import asyncio
import inspect
import os
import time
import unittest

import dbpool_stats
from dbpool_stats import leaks
from sqlalchemy import create_engine, text
from sqlalchemy.ext.asyncio import AsyncSession, create_async_engine
from sqlalchemy.orm import Session, sessionmaker
from sqlalchemy.pool import NullPool

from .support import PoolTestCase, admin_dsn, async_dsn

QUERY = text("SELECT pg_backend_pid()")


class RequestFailed(Exception):
    pass


async def bad_idle_in_transaction(AsyncSessionLocal, query):
    # The seed document's "Bad: Potential idle-in-transaction", as written there:
    session = AsyncSessionLocal()
    result = await session.execute(query)
    # If exception occurs, connection stays in transaction
    raise RequestFailed("the request failed after its query")


def bad_idle_in_transaction_sync(SessionLocal, query):
    session = SessionLocal()
    result = session.execute(query)  # noqa: F841 - kept in the frame, as in the async one
    raise RequestFailed("the request failed after its query")


def line_of(fn, needle):
    """The line number of the first line of fn's source that contains needle."""
    lines, first = inspect.getsourcelines(fn)
    for i, line in enumerate(lines):
        if needle in line:
            return first + i
    raise AssertionError("%r not in %s" % (needle, fn.__name__))


def innermost_locals(err):
    tb = err.__traceback__
    while tb.tb_next is not None:
        tb = tb.tb_next
    return tb.tb_frame.f_locals


def backend_state(pid):
    admin = create_engine(admin_dsn(), poolclass=NullPool, isolation_level="AUTOCOMMIT")
    try:
        with admin.connect() as c:
            return c.execute(text("SELECT state FROM pg_stat_activity WHERE pid = :p"), {"p": pid}).scalar()
    finally:
        admin.dispose()


class LeakDetectionTest(PoolTestCase):
    def wait_for_leaks(self, stats, n):
        """The snapshot once it counts n leaked connections (the threshold is 0.2 s)."""
        deadline = time.monotonic() + 20
        while True:
            snap = stats.snapshot()
            if snap["leaks"]["count"] == n:
                return snap
            self.assertLess(time.monotonic(), deadline, "leaks: %r" % (snap["leaks"],))
            time.sleep(0.05)

    def check_site(self, site, fn, needle):
        self.assertEqual(site["file"], __file__)
        self.assertEqual(site["line"], line_of(fn, needle))
        self.assertEqual(site["function"], fn.__name__)
        self.assertEqual(site["count"], 1)
        self.assertGreater(site["oldest_seconds"], 0.2)

    def test_seed_bad_example_is_found_with_its_file_and_line(self):
        async def main():
            ae = create_async_engine(async_dsn(), pool_size=2, max_overflow=0)
            AsyncSessionLocal = sessionmaker(ae, class_=AsyncSession, expire_on_commit=False)
            try:
                stats = dbpool_stats.instrument(ae, name="api", leak_threshold=0.2)
                # Good: returned at once; never a leak.
                async with AsyncSessionLocal() as session:
                    await session.execute(QUERY)
                try:
                    await bad_idle_in_transaction(AsyncSessionLocal, QUERY)
                except RequestFailed as e:
                    # Its traceback holds the frame and so the session, as an error reporter
                    # that keeps the exception does: the connection stays checked out.
                    failed = e
                pid = innermost_locals(failed)["result"].scalar()
                loop = asyncio.get_running_loop()
                state = await loop.run_in_executor(None, backend_state, pid)
                self.assertEqual(state, "idle in transaction")
                snap = await loop.run_in_executor(None, self.wait_for_leaks, stats, 1)
                await innermost_locals(failed)["session"].close()
                return snap, stats.snapshot()
            finally:
                await ae.dispose()

        snap, after = asyncio.run(asyncio.wait_for(main(), 60))
        lk = snap["leaks"]
        self.assertEqual((lk["threshold_seconds"], lk["count"], len(lk["sites"])), (0.2, 1, 1))
        self.check_site(lk["sites"][0], bad_idle_in_transaction, "result = await session.execute(query)")
        self.assertNotIn("stack", lk["sites"][0])
        self.assertEqual(snap["held_connections"], 1)
        self.assertGreater(snap["longest_held_seconds"], 0.2)
        self.assertEqual(after["leaks"], {"threshold_seconds": 0.2, "count": 0, "sites": []})
        self.assertEqual(after["held_connections"], 0)

    def test_sync_session_with_full_stack(self):
        e = self.engine(pool_size=2)
        SessionLocal = sessionmaker(e, class_=Session)
        stats = dbpool_stats.instrument(e, leak_threshold=0.2, leak_stack=True)
        try:
            bad_idle_in_transaction_sync(SessionLocal, QUERY)
        except RequestFailed as err:
            failed = err
        snap = self.wait_for_leaks(stats, 1)
        (site,) = snap["leaks"]["sites"]
        self.check_site(site, bad_idle_in_transaction_sync, "result = session.execute(query)")
        stack = site["stack"]
        self.assertLessEqual(len(stack), leaks.STACK_LIMIT)
        self.assertEqual(stack[0], {k: site[k] for k in ("file", "line", "function")})
        # Then this test method, which called it.
        self.assertEqual(stack[1]["function"], "LeakDetectionTest.test_sync_session_with_full_stack")
        self.assertEqual(stack[1]["line"], line_of(self.test_sync_session_with_full_stack, "bad_idle_in_transaction_sync("))
        innermost_locals(failed)["session"].close()
        self.assertEqual(stats.snapshot()["leaks"]["count"], 0)

    def test_held_below_the_threshold_is_no_leak(self):
        e = self.engine(pool_size=1)
        stats = dbpool_stats.instrument(e, leak_threshold=3600)
        with e.connect():
            snap = stats.snapshot()
        self.assertEqual(snap["held_connections"], 1)
        self.assertEqual(snap["leaks"], {"threshold_seconds": 3600.0, "count": 0, "sites": []})

    def test_off_by_default(self):
        e = self.engine(pool_size=1)
        stats = dbpool_stats.instrument(e)
        self.assertIsNone(stats.leak_threshold)
        with e.connect():
            snap = stats.snapshot()
        # Not observed: null, not 0.
        self.assertEqual(snap["leaks"], {"threshold_seconds": None, "count": None, "sites": []})
        self.assertEqual(snap["held_connections"], 1)


class LeakSettingsTest(PoolTestCase):
    def setUp(self):
        super().setUp()
        self.env = {k: os.environ.pop(k) for k in (leaks.ENV_LEAK_THRESHOLD, leaks.ENV_LEAK_STACK) if k in os.environ}

    def tearDown(self):
        for k in (leaks.ENV_LEAK_THRESHOLD, leaks.ENV_LEAK_STACK):
            os.environ.pop(k, None)
        os.environ.update(self.env)
        super().tearDown()

    def test_environment(self):
        os.environ[leaks.ENV_LEAK_THRESHOLD] = "30"
        os.environ[leaks.ENV_LEAK_STACK] = "1"
        stats = dbpool_stats.instrument(self.engine(), name="env")
        self.assertEqual((stats.leak_threshold, stats.leak_stack), (30.0, True))
        # An argument wins over the environment; 0 is off.
        stats = dbpool_stats.instrument(self.engine(), name="arg", leak_threshold=0, leak_stack=False)
        self.assertEqual((stats.leak_threshold, stats.leak_stack), (None, False))

    def test_bad_values_name_the_setting(self):
        cases = [
            ({leaks.ENV_LEAK_THRESHOLD: "soon"}, {}, "DBPOOL_STATS_LEAK_THRESHOLD='soon'"),
            ({leaks.ENV_LEAK_THRESHOLD: "-5"}, {}, "DBPOOL_STATS_LEAK_THRESHOLD='-5'"),
            ({leaks.ENV_LEAK_STACK: "maybe"}, {}, "DBPOOL_STATS_LEAK_STACK='maybe'"),
            ({}, {"leak_threshold": float("inf")}, "leak_threshold=inf"),
            ({}, {"leak_threshold": "x"}, "leak_threshold='x'"),
            ({}, {"leak_threshold": True}, "leak_threshold=True"),
        ]
        for env, kw, want in cases:
            with self.subTest(want=want):
                os.environ.update(env)
                try:
                    with self.assertRaises(ValueError) as cm:
                        dbpool_stats.instrument(self.engine(), **kw)
                    self.assertIn(want, str(cm.exception))
                finally:
                    for k in env:
                        del os.environ[k]
        self.assertEqual(dbpool_stats.snapshot()["instances"], [], "a refused setting instruments nothing")


def _site_a():
    pass


def _site_b():
    pass


def _site_c():
    pass


class ReportTest(unittest.TestCase):
    """leaks.report(), the pure function from held connections to the document's object."""

    def test_report(self):
        a, b, c = (f.__code__ for f in (_site_a, _site_b, _site_c))
        now = 1000.0
        held = [
            (now - 5, (a, 0)),
            (now - 50, (a, 0)),
            (now - 7, (b, 0)),
            (now - 90, (c, 0)),
            (now - 70, None),  # no frame outside the skipped modules
            (now - 1, (c, 0)),  # below the threshold
        ]

        def where(code):
            return {"file": __file__, "line": code.co_firstlineno, "function": code.co_name}

        cases = [
            ("off", None, 10, {"threshold_seconds": None, "count": None, "sites": []}),
            ("nothing held long", 100, 10, {"threshold_seconds": 100.0, "count": 0, "sites": []}),
            ("by count, then by oldest", 2, 10, {"threshold_seconds": 2.0, "count": 5, "sites": [
                dict(where(a), count=2, oldest_seconds=50.0),
                dict(where(c), count=1, oldest_seconds=90.0),
                {"file": None, "line": None, "function": None, "count": 1, "oldest_seconds": 70.0},
                dict(where(b), count=1, oldest_seconds=7.0),
            ]}),
            ("top 2 sites, every leak counted", 2, 2, {"threshold_seconds": 2.0, "count": 5, "sites": [
                dict(where(a), count=2, oldest_seconds=50.0),
                dict(where(c), count=1, oldest_seconds=90.0),
            ]}),
            ("threshold is exclusive", 50, 10, {"threshold_seconds": 50.0, "count": 2, "sites": [
                dict(where(c), count=1, oldest_seconds=90.0),
                {"file": None, "line": None, "function": None, "count": 1, "oldest_seconds": 70.0},
            ]}),
        ]
        for name, threshold, top, want in cases:
            with self.subTest(name):
                self.assertEqual(leaks.report(held, now, threshold, top=top), want)

    def test_stack(self):
        a, b = _site_a.__code__, _site_b.__code__
        got = leaks.report([(0.0, (a, 0, ((a, 0), (b, 0))))], 10.0, 1)
        (site,) = got["sites"]
        self.assertEqual([f["function"] for f in site["stack"]], ["_site_a", "_site_b"])
