#!/usr/bin/env python3
"""openload: an open-loop load on a pooled SQLAlchemy + asyncpg application with dbpool_stats.

Requests arrive as a Poisson stream of --rate per second whatever the pool does (an open loop, as
with real users: a saturated pool does not slow the arrivals down). Each request checks out a
connection, waiting at most DB_POOL_TIMEOUT, holds it for --hold-seconds running
SELECT pg_sleep(hold), and returns it. The process measures what its callers saw, on its own and
independently of dbpool_stats, and serves on one listener:

  GET  /dbpool    the dbpool_stats JSON document (what the exporter reads)
  GET  /measured  what the callers saw since the last reset (see Measured.doc)
  POST /reset     start measuring afresh
  GET  /healthz   "ok"

Once serving it prints "listening on http://HOST:PORT/dbpool". SIGTERM or SIGINT stops the
arrivals, lets the requests in flight finish (10 s at most) and exits. Pool settings default to
the DB_* environment variables, like examples/loadapp.py, whose URL handling it shares. The
closed-loop acceptance test (acceptance/) runs two of these per phase:

  .venv/sa20/bin/python integrations/python/examples/openload.py \\
      --dsn postgres://app:secret@127.0.0.1:5432/app --rate 40 --hold-seconds 0.15 \\
      --pool-size 2 --max-overflow 0 --pool-timeout 1 --application-name api-1
"""

import argparse
import asyncio
import os
import random
import signal
import sys
import threading
import time
import urllib.parse

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, HERE)

import loadapp  # noqa: E402  (the URL and driver handling; it puts dbpool_stats on the path)
import dbpool_stats  # noqa: E402
from sqlalchemy import exc, text  # noqa: E402
from sqlalchemy.ext.asyncio import create_async_engine  # noqa: E402


def parse_args(argv):
    p = argparse.ArgumentParser(description="open-loop Poisson load on a pooled SQLAlchemy + asyncpg application")
    p.add_argument("--dsn", default=os.environ.get("DATABASE_URL"), help="PostgreSQL URL; default $DATABASE_URL")
    p.add_argument("--rate", type=float, required=True, help="requests per second (Poisson arrivals)")
    p.add_argument("--hold-seconds", type=float, required=True, help="how long each request holds its connection")
    p.add_argument("--pool-size", type=int, default=loadapp.env_num("DB_POOL_SIZE", 10, int))
    p.add_argument("--max-overflow", type=int, default=loadapp.env_num("DB_MAX_OVERFLOW", 20, int))
    p.add_argument("--pool-timeout", type=float, default=loadapp.env_num("DB_POOL_TIMEOUT", 30.0, float))
    p.add_argument("--pool-recycle", type=int, default=loadapp.env_num("DB_POOL_RECYCLE", 3600, int))
    p.add_argument("--pre-ping", dest="pre_ping", action="store_true", default=loadapp.env_bool("DB_POOL_PRE_PING", True))
    p.add_argument("--no-pre-ping", dest="pre_ping", action="store_false")
    p.add_argument("--name", default="api", help="pool name in the JSON document")
    p.add_argument("--listen", default="127.0.0.1:0", help="host:port of the listener (port 0: any free)")
    p.add_argument("--application-name", default="", help="backend application_name; {pid} is replaced")
    p.add_argument("--seed", type=int, default=None, help="seed of the arrival stream (default: random)")
    a = p.parse_args(argv)
    if not a.dsn:
        p.error("--dsn (or DATABASE_URL) is required")
    if a.rate <= 0 or a.hold_seconds < 0:
        p.error("--rate must be positive and --hold-seconds not negative")
    a.use_async, a.echo = True, False  # what loadapp's helpers read
    return a


class Measured:
    """What the callers saw since the last reset, kept by the application itself."""

    def __init__(self, pool_size):
        self.lock = threading.Lock()
        self.pool_size = pool_size
        self.in_use = 0  # connections the requests hold now
        self.reset()

    def reset(self):
        with self.lock:
            now = time.perf_counter()
            self.since = now
            self.last = now
            self.busy = 0.0  # connection-seconds held since the reset
            self.attempts = self.ok = self.timeouts = self.errors = 0
            self.wait_sum = 0.0  # every attempt's wait; a timed-out one waited until it gave up
            self.max_wait = 0.0
            self.hold_sum = 0.0
            self.last_error = ""

    def _advance(self, now):
        self.busy += self.in_use * (now - self.last)
        self.last = now

    def checked_out(self, waited):
        with self.lock:
            self._advance(time.perf_counter())
            self.in_use += 1
            self.attempts += 1
            self.ok += 1
            self.wait_sum += waited
            self.max_wait = max(self.max_wait, waited)

    def returned(self, held):
        with self.lock:
            self._advance(time.perf_counter())
            self.in_use -= 1
            self.hold_sum += held

    def failed(self, waited, timeout, err=None):
        with self.lock:
            self.attempts += 1
            self.wait_sum += waited
            self.max_wait = max(self.max_wait, waited)
            if timeout:
                self.timeouts += 1
            else:
                self.errors += 1
                self.last_error = repr(err)[:300]

    def doc(self):
        with self.lock:
            now = time.perf_counter()
            self._advance(now)
            elapsed = now - self.since
            return {
                "pid": os.getpid(),
                "seconds": elapsed,
                "attempts": self.attempts,
                "ok": self.ok,
                "timeouts": self.timeouts,
                "errors": self.errors,
                "last_error": self.last_error,
                "attempts_per_second": self.attempts / elapsed if elapsed > 0 else 0.0,
                "timeouts_per_second": self.timeouts / elapsed if elapsed > 0 else 0.0,
                "timeout_ratio": self.timeouts / self.attempts if self.attempts else 0.0,
                "mean_wait_seconds": self.wait_sum / self.attempts if self.attempts else 0.0,
                "max_wait_seconds": self.max_wait,
                "mean_hold_seconds": self.hold_sum / self.ok if self.ok else 0.0,
                "mean_in_use": self.busy / elapsed if elapsed > 0 else 0.0,
                "utilization": self.busy / elapsed / self.pool_size if elapsed > 0 and self.pool_size else 0.0,
                "pool_size": self.pool_size,
            }


class App:
    def __init__(self, args):
        url, connect_args = loadapp.engine_url_and_args(args, 0)
        self.engine = create_async_engine(url, connect_args=connect_args, **loadapp.engine_kwargs(args))
        dbpool_stats.instrument(self.engine, name=args.name)
        self.args = args
        self.measured = Measured(args.pool_size)
        self.rng = random.Random(args.seed)
        self.inflight = set()

    async def request(self):
        q = text("SELECT pg_sleep(:s)")
        clock = time.perf_counter
        t0 = clock()
        try:
            conn = await self.engine.connect()
        except exc.TimeoutError:
            self.measured.failed(clock() - t0, timeout=True)
            return
        except Exception as err:  # a refused or broken connect: counted, not fatal
            self.measured.failed(clock() - t0, timeout=False, err=err)
            return
        t1 = clock()
        self.measured.checked_out(t1 - t0)
        try:
            await conn.execute(q, {"s": self.args.hold_seconds})
        except Exception as err:  # the checkout succeeded: the query's failure is no pool figure
            print("query failed: %r" % err, file=sys.stderr, flush=True)
        finally:
            try:
                await conn.close()
            finally:
                self.measured.returned(clock() - t1)

    async def arrivals(self, stop):
        loop = asyncio.get_running_loop()
        due = loop.time()
        while not stop.is_set():
            due += self.rng.expovariate(self.args.rate)
            delay = due - loop.time()
            if delay > 0:
                try:
                    await asyncio.wait_for(stop.wait(), delay)
                    break
                except asyncio.TimeoutError:
                    pass
            # Behind schedule (a busy loop), arrivals fire back to back: the rate holds.
            task = asyncio.ensure_future(self.request())
            self.inflight.add(task)
            task.add_done_callback(self.inflight.discard)


class Handler(loadapp.Handler):
    """loadapp's handler (its send() and quiet log) with openload's endpoints."""

    server_version = "openload/1"

    def do_GET(self):
        path = urllib.parse.urlsplit(self.path).path.rstrip("/")
        if path == "/dbpool":
            self.send(200, dbpool_stats.render_json())
        elif path == "/measured":
            self.send(200, self.server.app.measured.doc())
        elif path == "/healthz":
            self.send(200, b"ok\n", "text/plain")
        else:
            self.send(404, {"error": "not found"})

    def do_POST(self):
        if urllib.parse.urlsplit(self.path).path.rstrip("/") == "/reset":
            self.server.app.measured.reset()
            self.send(200, self.server.app.measured.doc())
        else:
            self.send(404, {"error": "not found"})


async def main(args):
    app = App(args)
    host, _, port = args.listen.rpartition(":")
    srv = loadapp.Server((host.strip("[]") or "127.0.0.1", int(port)), Handler)
    srv.app = app
    threading.Thread(target=srv.serve_forever, name="http", daemon=True).start()
    print("listening on http://%s:%d/dbpool" % srv.server_address[:2], flush=True)
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    await app.arrivals(stop)
    if app.inflight:
        await asyncio.wait(list(app.inflight), timeout=10)
    srv.shutdown()
    srv.server_close()
    await app.engine.dispose()


if __name__ == "__main__":
    asyncio.run(main(parse_args(sys.argv[1:])))
    dbpool_stats.shutdown()
