"""create_async_engine() (AsyncAdaptedQueuePool) against the real PostgreSQL."""

import asyncio

import dbpool_stats
from sqlalchemy import exc, text
from sqlalchemy.ext.asyncio import create_async_engine

from .support import PoolTestCase, async_dsn, terminate
from .test_sync import status_now


class AsyncEngineTest(PoolTestCase):
    def run_async(self, coro):
        return asyncio.run(asyncio.wait_for(coro, 30))

    def test_status_equals_pool_while_connections_are_held(self):
        async def main():
            ae = create_async_engine(async_dsn(), pool_size=2, max_overflow=3, pool_timeout=4)
            try:
                stats = dbpool_stats.instrument(ae, name="async")
                pool = ae.sync_engine.pool
                held = []
                for k in (1, 2, 4):
                    while len(held) < k:
                        c = await ae.connect()
                        await c.execute(text("SELECT 1"))
                        held.append(c)
                    snap = stats.snapshot()
                    self.assertEqual(snap["status"], status_now(pool), "holding %d" % k)
                    self.assertEqual(snap["status"]["checked_out"], k)
                for c in held:
                    await c.close()
                snap = stats.snapshot()
                self.assertEqual(snap["status"], status_now(pool))
                self.assertEqual(snap["pool_class"], "AsyncAdaptedQueuePool")
                self.assertEqual(snap["settings"]["timeout_seconds"], 4.0)
                self.assertEqual(snap["checkouts"]["count"], 4)
                self.assertEqual(snap["connects"], 4)
            finally:
                await ae.dispose()

        self.run_async(main())

    def test_timeouts_under_task_load(self):
        async def main():
            ae = create_async_engine(async_dsn(), pool_size=1, max_overflow=0, pool_timeout=0.2)
            try:
                stats = dbpool_stats.instrument(ae, name="async-tight")
                seen = {"timeouts": 0, "ok": 0, "other": []}
                tasks, rounds = 6, 4

                async def worker():
                    for _ in range(rounds):
                        try:
                            async with ae.connect() as c:
                                await c.execute(text("SELECT pg_sleep(0.15)"))
                            seen["ok"] += 1
                        except exc.TimeoutError:
                            seen["timeouts"] += 1
                        except Exception as err:  # pragma: no cover
                            seen["other"].append(repr(err))

                await asyncio.gather(*(worker() for _ in range(tasks)))
                self.assertEqual(seen["other"], [])
                self.assertGreater(seen["timeouts"], 0)
                snap = stats.snapshot()
                co = snap["checkouts"]
                self.assertEqual(co["count"], tasks * rounds)
                self.assertEqual(co["timeouts"], seen["timeouts"])
                self.assertEqual(co["failed"], seen["timeouts"])
                self.assertEqual(co["failures"], {"timeout": seen["timeouts"], "connect": 0, "cancelled": 0, "other": 0})
                self.assertEqual(snap["use_time"]["count"], seen["ok"])
                self.assertHistogram(co)
                self.assertEqual(co["buckets"][-1]["count"], co["count"])
                le_01 = [b["count"] for b in co["buckets"] if b["le"] == 0.1][0]
                self.assertLessEqual(le_01, co["count"] - co["timeouts"])
                self.assertEqual(snap["pending_checkouts"], 0)
            finally:
                await ae.dispose()

        self.run_async(main())

    def test_pending_checkouts_seen_from_another_task(self):
        async def main():
            ae = create_async_engine(async_dsn(), pool_size=1, max_overflow=0, pool_timeout=5)
            try:
                stats = dbpool_stats.instrument(ae)
                held = await ae.connect()
                await held.execute(text("SELECT 1"))

                async def waiter():
                    async with ae.connect() as c:
                        await c.execute(text("SELECT 1"))

                t = asyncio.ensure_future(waiter())
                await asyncio.sleep(0.3)
                snap = stats.snapshot()
                self.assertEqual(snap["pending_checkouts"], 1)
                self.assertGreaterEqual(snap["longest_checkout_wait_seconds"], 0.25)
                await held.close()
                await t
                self.assertEqual(stats.snapshot()["pending_checkouts"], 0)
            finally:
                await ae.dispose()

        self.run_async(main())

    def test_pre_ping_failure(self):
        async def main():
            ae = create_async_engine(async_dsn(), pool_size=1, max_overflow=0, pool_pre_ping=True)
            try:
                stats = dbpool_stats.instrument(ae)
                async with ae.connect() as c:
                    pid = (await c.execute(text("SELECT pg_backend_pid()"))).scalar()
                await asyncio.get_running_loop().run_in_executor(None, terminate, pid)
                # Let asyncpg take in the server's goodbye (the FATAL and the closed socket)
                # before the pre-ping: if the ping is sent while that is still arriving,
                # SQLAlchemy 1.4's asyncpg adapter sees InternalClientError ("another
                # operation is in progress"), which it does not count as a disconnect, and
                # the checkout fails instead of being pre-pinged and replaced.
                await asyncio.sleep(0.5)
                async with ae.connect() as c:
                    pid2 = (await c.execute(text("SELECT pg_backend_pid()"))).scalar()
                self.assertNotEqual(pid, pid2)
                snap = stats.snapshot()
                self.assertEqual(snap["pre_ping_failures"], 1)
                self.assertEqual(snap["invalidations"], 1)
                self.assertEqual(snap["connects"], 2)
            finally:
                await ae.dispose()

        self.run_async(main())
