"""A PostgreSQL restart and a stopped PostgreSQL, as an instrumented application sees them.

Driven by python_test.go (TestServerRestart), which owns the server: this script prints
"ACTION restart", "ACTION stop" or "ACTION start" and waits for "done" on its standard
input. One sync engine and one async engine, each with pre-ping and 4 pooled connections,
go through four steps:

  warm       hold 4 connections at once, return them
  restarted  (server restarted) hold 4 at once again
  stopped    (server stopped) 5 checkouts, each of which fails
  started    (server started) hold 4 at once

After each step the script notes the instance's snapshot and the errors the application saw;
at the end it prints "RESULT " and one JSON object, and the Go test checks the figures.
(Not named test_*.py: unittest discovery leaves it alone.)
"""

import argparse
import asyncio
import json
import os
import sys

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

import dbpool_stats  # noqa: E402
from sqlalchemy import create_engine, text  # noqa: E402
from sqlalchemy.ext.asyncio import create_async_engine  # noqa: E402

HOLD = 4
FAILING = 5
STEPS = (("warm", None), ("restarted", "restart"), ("stopped", "stop"), ("started", "start"))


def action(name):
    print("ACTION", name, flush=True)
    line = sys.stdin.readline()
    if line.strip() != "done":
        raise SystemExit("restart_scenario: no 'done' after ACTION %s: %r" % (name, line))


def seen(err):
    return {
        "type": "%s.%s" % (type(err).__module__, type(err).__name__),
        # asyncpg raises ConnectionRefusedError; psycopg's OperationalError says it
        "refused": isinstance(err, ConnectionRefusedError) or "connection refused" in str(err).lower(),
    }


def checkouts_sync(engine, n):
    held, errors = [], []
    for _ in range(n):
        try:
            c = engine.connect()
            c.execute(text("SELECT 1"))
            held.append(c)
        except Exception as err:
            errors.append(seen(err))
    for c in held:
        c.close()
    return errors


async def checkouts_async(engine, n):
    held, errors = [], []
    for _ in range(n):
        try:
            c = await engine.connect()
            await c.execute(text("SELECT 1"))
            held.append(c)
        except Exception as err:
            errors.append(seen(err))
    for c in held:
        await c.close()
    return errors


async def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--dsn", required=True, help="sync SQLAlchemy URL")
    ap.add_argument("--async-dsn", required=True, help="async SQLAlchemy URL")
    args = ap.parse_args()
    settings = dict(pool_size=HOLD, max_overflow=0, pool_timeout=10, pool_pre_ping=True)
    sync_engine = create_engine(args.dsn, **settings)
    async_engine = create_async_engine(args.async_dsn, **settings)
    engines = {
        "sync": (dbpool_stats.instrument(sync_engine, name="sync"), sync_engine),
        "async": (dbpool_stats.instrument(async_engine, name="async"), async_engine),
    }
    result = {kind: {} for kind in engines}
    try:
        for step, act in STEPS:
            if act is not None:
                action(act)
            if act in ("restart", "stop"):
                # The event loop stood still while this script waited for "done" (as an
                # application's would not): let asyncpg take in the server's goodbye on every
                # connection before the pre-pings. On SQLAlchemy 1.4 a ping sent while it is
                # still arriving fails with InternalClientError, which is no disconnect there
                # (see test_async.test_pre_ping_failure), and that checkout fails as "other".
                await asyncio.sleep(0.5)
            n = FAILING if step == "stopped" else HOLD
            for kind, (stats, engine) in engines.items():
                if kind == "sync":
                    errors = checkouts_sync(engine, n)
                else:
                    errors = await checkouts_async(engine, n)
                result[kind][step] = {"errors": errors, "snapshot": stats.snapshot()}
    finally:
        sync_engine.dispose()
        await async_engine.dispose()
    print("RESULT " + json.dumps(result), flush=True)


if __name__ == "__main__":
    asyncio.run(main())
