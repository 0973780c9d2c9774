"""Hold time (use_time), connect time (create_time) and why checkouts failed, against the real
PostgreSQL (and a port where nothing listens, which is what a stopped server looks like)."""

import asyncio
import time

import dbpool_stats
from sqlalchemy import create_engine, event, text
from sqlalchemy.ext.asyncio import create_async_engine

from .support import PoolTestCase, async_dsn, dsn, refused_port, with_port

clock = time.perf_counter  # the clock dbpool_stats times with


def no_failures(**got):
    return dict(dict.fromkeys(dbpool_stats.FAILURE_REASONS, 0), **got)


def refused(err):
    """asyncpg raises ConnectionRefusedError itself; psycopg and psycopg2 an OperationalError
    that SQLAlchemy wraps, saying "Connection refused"."""
    return isinstance(err, ConnectionRefusedError) or "connection refused" in str(err).lower()


class HoldTimeTest(PoolTestCase):
    def test_hold_time_is_checkout_to_checkin(self):
        e = self.engine(pool_size=2)
        stats = dbpool_stats.instrument(e)
        inner = outer = 0.0
        for sql in ("SELECT pg_sleep(0.3)", "SELECT 1", "SELECT 1"):
            t0 = clock()
            c = e.connect()
            t1 = clock()
            c.execute(text(sql))
            t2 = clock()
            c.close()
            t3 = clock()
            inner += t2 - t1  # surely held: after connect() returned, before close() began
            outer += t3 - t0  # held at most: from before connect() to after close()
        use = stats.snapshot()["use_time"]
        self.assertEqual(use["count"], 3)
        self.assertGreaterEqual(use["sum_seconds"], inner)
        self.assertLessEqual(use["sum_seconds"], outer)
        self.assertHistogram(use, dbpool_stats.USE_BUCKETS)
        le_025 = [b["count"] for b in use["buckets"] if b["le"] == 0.25][0]
        self.assertLessEqual(le_025, 2, "the hold over pg_sleep(0.3) is above 0.25 s")

    def test_connections_held_now(self):
        e = self.engine(pool_size=2)
        stats = dbpool_stats.instrument(e)
        snap = stats.snapshot()
        self.assertEqual((snap["held_connections"], snap["longest_held_seconds"]), (0, 0.0))
        t0 = clock()
        first = e.connect()
        t1 = clock()
        second = e.connect()
        try:
            t2 = clock()
            snap = stats.snapshot()
            t3 = clock()
            self.assertEqual(snap["held_connections"], 2)
            self.assertEqual(snap["use_time"]["count"], 0, "a hold is observed when it ends")
            self.assertGreaterEqual(snap["longest_held_seconds"], t2 - t1)
            self.assertLessEqual(snap["longest_held_seconds"], t3 - t0)
        finally:
            first.close()
            second.close()
        snap = stats.snapshot()
        self.assertEqual((snap["held_connections"], snap["longest_held_seconds"]), (0, 0.0))
        self.assertEqual(snap["use_time"]["count"], 2)

    def test_detach_ends_the_hold(self):
        e = self.engine(pool_size=1)
        stats = dbpool_stats.instrument(e)
        raw = e.raw_connection()
        self.assertEqual(stats.snapshot()["held_connections"], 1)
        raw.detach()  # the connection leaves the pool: its slot is free again
        snap = stats.snapshot()
        self.assertEqual(snap["held_connections"], 0)
        self.assertEqual(snap["use_time"]["count"], 1)
        raw.close()
        self.assertEqual(stats.snapshot()["use_time"]["count"], 1, "closing a detached connection is no checkin")


class CreateTimeTest(PoolTestCase):
    def test_create_time_of_each_new_connection(self):
        e = self.engine(pool_size=2, max_overflow=0)
        stats = dbpool_stats.instrument(e)
        t0 = clock()
        a, b = e.connect(), e.connect()
        t1 = clock()
        a.close()
        b.close()
        with e.connect():  # from the pool: nothing opened
            pass
        snap = stats.snapshot()
        cr = snap["create_time"]
        self.assertEqual((cr["count"], cr["failed"]), (2, 0))
        self.assertEqual(snap["connects"], 2)
        self.assertGreater(cr["sum_seconds"], 0)
        # Both connects happened within those two checkouts.
        self.assertLessEqual(cr["sum_seconds"], t1 - t0)
        self.assertHistogram(cr, dbpool_stats.CREATE_BUCKETS)
        self.assertEqual(cr["buckets"][-1]["count"], 2)


class FailedCheckoutTest(PoolTestCase):
    def assert_refused(self, snap, n):
        self.assertEqual(snap["checkouts"]["count"], n)
        self.assertEqual(snap["checkouts"]["failed"], n)
        self.assertEqual(snap["checkouts"]["failures"], no_failures(connect=n))
        self.assertEqual(snap["checkouts"]["timeouts"], 0)
        self.assertEqual((snap["create_time"]["count"], snap["create_time"]["failed"]), (n, n))
        self.assertEqual(snap["connects"], 0)
        self.assertEqual((snap["held_connections"], snap["pending_checkouts"]), (0, 0))
        self.assertEqual(snap["use_time"]["count"], 0)

    def test_refused_connects_are_connect_failures(self):
        e = create_engine(with_port(dsn(), refused_port()), pool_size=2)
        self._engines.append(e)
        stats = dbpool_stats.instrument(e)
        for _ in range(3):
            with self.assertRaises(Exception) as cm:
                e.connect()
            self.assertTrue(refused(cm.exception), repr(cm.exception))
        self.assert_refused(stats.snapshot(), 3)

    def test_refused_connects_are_connect_failures_async(self):
        async def main():
            ae = create_async_engine(with_port(async_dsn(), refused_port()), pool_size=2)
            try:
                stats = dbpool_stats.instrument(ae)
                for _ in range(3):
                    with self.assertRaises(Exception) as cm:
                        await ae.connect()
                    self.assertTrue(refused(cm.exception), repr(cm.exception))
                return stats.snapshot()
            finally:
                await ae.dispose()

        self.assert_refused(asyncio.run(asyncio.wait_for(main(), 30)), 3)

    def test_other_failures(self):
        e = self.engine(pool_size=1)
        stats = dbpool_stats.instrument(e)

        @event.listens_for(e, "checkout")
        def refuse(dbapi_connection, record, proxy):
            raise RuntimeError("a checkout listener that fails")

        with self.assertRaises(RuntimeError):
            e.connect()
        co = stats.snapshot()["checkouts"]
        self.assertEqual(co["failures"], no_failures(other=1))
        self.assertEqual((co["count"], co["failed"]), (1, 1))

    def test_cancelled_while_waiting(self):
        async def main():
            ae = create_async_engine(async_dsn(), pool_size=1, max_overflow=0, pool_timeout=30)
            try:
                stats = dbpool_stats.instrument(ae)
                held = await ae.connect()
                waiter = asyncio.ensure_future(ae.connect())
                while stats.snapshot()["pending_checkouts"] == 0:
                    await asyncio.sleep(0.01)
                waiter.cancel()
                with self.assertRaises(asyncio.CancelledError):
                    await waiter
                await held.close()
                return stats.snapshot()
            finally:
                await ae.dispose()

        snap = asyncio.run(asyncio.wait_for(main(), 30))
        self.assertEqual(snap["checkouts"]["failures"], no_failures(cancelled=1))
        self.assertEqual((snap["checkouts"]["count"], snap["pending_checkouts"]), (2, 0))
        self.assertEqual(snap["use_time"]["count"], 1)
