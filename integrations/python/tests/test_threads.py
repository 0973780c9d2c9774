"""The hot path takes no lock: its counts must still be exact when threads switch all the time."""

import sys
import threading

import dbpool_stats

from .support import PoolTestCase


class ThreadSwitchTest(PoolTestCase):
    def test_counts_are_exact_with_threads_switching_every_microsecond(self):
        # Eight real connections and eight threads that check them out and in with no I/O in
        # between (no reset on return), so that threads switch in the pool and in the hooks,
        # not only at I/O. (A hook that released the GIL half way through an update loses
        # thousands of counts here.)
        e = self.engine(pool_size=8, max_overflow=0, pool_timeout=120, pool_reset_on_return=None)
        stats = dbpool_stats.instrument(e, leak_threshold=3600)  # the site capture runs too
        threads, rounds = 8, 1500
        errors = []

        def worker():
            try:
                for _ in range(rounds):
                    c = e.pool.connect()
                    for _ in range(100):  # Python work while held, where most switches land
                        pass
                    c.close()
            except Exception as err:  # pragma: no cover - reported below
                errors.append(repr(err))

        switch = sys.getswitchinterval()
        sys.setswitchinterval(1e-6)
        try:
            ts = [threading.Thread(target=worker) for _ in range(threads)]
            for t in ts:
                t.start()
            for t in ts:
                t.join(120)
        finally:
            sys.setswitchinterval(switch)
        self.assertEqual(errors, [])
        snap = stats.snapshot()
        n = threads * rounds
        co, use = snap["checkouts"], snap["use_time"]
        self.assertEqual((co["count"], co["failed"]), (n, 0))
        self.assertEqual(use["count"], n)
        self.assertHistogram(co)
        self.assertHistogram(use, dbpool_stats.USE_BUCKETS)
        self.assertEqual((snap["held_connections"], snap["pending_checkouts"]), (0, 0))
        # As many connections as the threads needed at once, each opened once.
        self.assertEqual(snap["connects"], snap["create_time"]["count"])
        self.assertLessEqual(snap["connects"], 8)
