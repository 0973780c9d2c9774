"""Shared helpers: the real PostgreSQL's DSNs come from the environment.

DBPOOL_TEST_DSN         a sync URL, postgresql+psycopg://... or +psycopg2 (the application role)
DBPOOL_TEST_ASYNC_DSN   an async URL, postgresql+asyncpg://... or +psycopg_async (the same role)
DBPOOL_TEST_ADMIN_DSN   a sync URL of a superuser, for pg_terminate_backend

integrations/python/python_test.go starts a throw-away server and sets them, once per
pinned environment and driver. A missing variable is a failure, not a skip.
"""

import os
import socket
import time
import unittest

import dbpool_stats
from sqlalchemy import create_engine, text
from sqlalchemy.engine import make_url
from sqlalchemy.pool import NullPool


def env(name):
    v = os.environ.get(name)
    if not v:
        raise AssertionError("%s is not set (run the tests through `go test ./integrations/python/`)" % name)
    return v


def dsn():
    return env("DBPOOL_TEST_DSN")


def async_dsn():
    return env("DBPOOL_TEST_ASYNC_DSN")


def admin_dsn():
    return env("DBPOOL_TEST_ADMIN_DSN")


def refused_port():
    """A local TCP port where nothing listens: connecting there is refused, as it is while
    PostgreSQL is down."""
    s = socket.socket()
    try:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]
    finally:
        s.close()


def with_port(url, port):
    """url (a SQLAlchemy URL string) with another port."""
    return make_url(url).set(port=port).render_as_string(hide_password=False)


def terminate(pid):
    """pg_terminate_backend(pid) as the superuser, and wait until the backend is gone."""
    # AUTOCOMMIT: inside one transaction pg_stat_activity is a cached snapshot.
    admin = create_engine(admin_dsn(), poolclass=NullPool, isolation_level="AUTOCOMMIT")
    try:
        with admin.connect() as c:
            ok = c.execute(text("SELECT pg_terminate_backend(:p)"), {"p": pid}).scalar()
            assert ok, "pg_terminate_backend(%d) returned false" % pid
            deadline = time.time() + 5
            while time.time() < deadline:
                n = c.execute(text("SELECT count(*) FROM pg_stat_activity WHERE pid = :p"), {"p": pid}).scalar()
                if n == 0:
                    return
                time.sleep(0.02)
            raise AssertionError("backend %d still there after pg_terminate_backend" % pid)
    finally:
        admin.dispose()


class PoolTestCase(unittest.TestCase):
    """Starts every test with no instrumented engine; disposes the engines it made."""

    def setUp(self):
        dbpool_stats._reset_for_tests()
        self._engines = []

    def tearDown(self):
        dbpool_stats._reset_for_tests()
        for e in self._engines:
            try:
                e.dispose()
            except Exception:
                pass

    def engine(self, **kw):
        e = create_engine(dsn(), **kw)
        self._engines.append(e)
        return e

    def assertHistogram(self, co, bounds=dbpool_stats.BUCKETS):
        """Cumulative finite buckets with exactly the contract's bounds, monotone, <= count."""
        self.assertEqual([b["le"] for b in co["buckets"]], list(bounds))
        if bounds is dbpool_stats.BUCKETS:
            self.assertEqual(
                [b["le"] for b in co["buckets"]],
                [0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30],
            )
        else:
            self.assertEqual(
                [b["le"] for b in co["buckets"]],
                [0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60],
            )
        counts = [b["count"] for b in co["buckets"]]
        self.assertEqual(counts, sorted(counts), "buckets must be cumulative: %r" % counts)
        self.assertLessEqual(counts[-1], co["count"])
        self.assertGreaterEqual(co["sum_seconds"], 0)
