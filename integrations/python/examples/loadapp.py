#!/usr/bin/env python3
"""loadapp: a small pooled SQLAlchemy application, instrumented with dbpool_stats.

Used by the Go tests and the demo. It runs N workers that each, in a loop,
check out a connection, run SELECT pg_sleep(S) and return it, and serves on one
listener:

  GET  /dbpool       the dbpool_stats JSON document (the exporter reads this)
  GET  /truth        this process's pool figures measured directly:
                     {"checked_out": pool.checkedout(), "overflow": ..., "checked_in": ...,
                      "timeouts_seen": N, "checkouts_attempted": N, ...}
  POST /hold?n=K     check out K more connections and hold them (answers once held)
  POST /release      return every held connection
  GET  /healthz      "ok"

Once serving it prints one line "listening on http://HOST:PORT/dbpool" to stdout.
With --workers W it forks W worker processes that write their snapshots to a shared
directory (dbpool_stats' multi-process mode); the parent only serves: /dbpool shows
every worker, /truth sums the workers' own figures (each up to 0.5 s old) and
/hold is refused. SIGTERM or SIGINT stops it cleanly and removes its stats files.

A --dsn with the psycopg2 or asyncpg driver (or none: postgres://) gets the driver
that --async asks for; other drivers (postgresql+psycopg: psycopg 3) are kept. Pool settings
default to the DB_* environment variables (DB_POOL_SIZE=10, DB_MAX_OVERFLOW=20,
DB_POOL_TIMEOUT=30, DB_POOL_RECYCLE=3600, DB_POOL_PRE_PING=true, DB_ECHO=false); flags
override them. Run it with a Python that has SQLAlchemy, e.g. the SQLAlchemy 2.0 environment
that `make deps` builds:

  .venv/sa20/bin/python integrations/python/examples/loadapp.py \\
      --dsn postgresql+psycopg2://app:secret@127.0.0.1:5432/app --listen 127.0.0.1:9931 \\
      --concurrency 8 --query-seconds 0.05 --application-name api-0
"""

import argparse
import asyncio
import json
import os
import shutil
import signal
import socket
import sys
import tempfile
import threading
import time
import traceback
import urllib.parse
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, os.path.dirname(HERE))  # integrations/python, for dbpool_stats

import dbpool_stats  # noqa: E402
from sqlalchemy import create_engine, exc, text  # noqa: E402
from sqlalchemy.engine import make_url  # noqa: E402


def env_bool(name, default):
    v = os.environ.get(name)
    if v is None or v.strip() == "":
        return default
    return v.strip().lower() in ("1", "true", "yes", "on")


def env_num(name, default, conv):
    v = os.environ.get(name)
    if v is None or v.strip() == "":
        return default
    return conv(v)


def parse_args(argv):
    p = argparse.ArgumentParser(description="pooled SQLAlchemy load generator with dbpool_stats")
    p.add_argument("--dsn", default=os.environ.get("DATABASE_URL"),
                   help="SQLAlchemy URL (postgres:// URLs get the driver added); default $DATABASE_URL")
    p.add_argument("--async", dest="use_async", action="store_true", help="use create_async_engine (asyncpg)")
    p.add_argument("--pool-size", type=int, default=env_num("DB_POOL_SIZE", 10, int))
    p.add_argument("--max-overflow", type=int, default=env_num("DB_MAX_OVERFLOW", 20, int))
    p.add_argument("--pool-timeout", type=float, default=env_num("DB_POOL_TIMEOUT", 30.0, float))
    p.add_argument("--pool-recycle", type=int, default=env_num("DB_POOL_RECYCLE", 3600, int))
    p.add_argument("--pre-ping", dest="pre_ping", action="store_true", default=env_bool("DB_POOL_PRE_PING", True))
    p.add_argument("--no-pre-ping", dest="pre_ping", action="store_false")
    p.add_argument("--echo", dest="echo", action="store_true", default=env_bool("DB_ECHO", False))
    p.add_argument("--no-echo", dest="echo", action="store_false")
    p.add_argument("--name", default="api", help="pool name in the JSON document")
    p.add_argument("--listen", default="127.0.0.1:0", help="host:port of the listener (port 0: any free)")
    p.add_argument("--concurrency", type=int, default=4, help="workers per process (0: none, only /hold)")
    p.add_argument("--query-seconds", type=float, default=0.05, help="pg_sleep per checkout")
    p.add_argument("--think-seconds", type=float, default=0.0, help="pause between checkouts")
    p.add_argument("--application-name", default="",
                   help="backend application_name; {worker} and {pid} are replaced")
    p.add_argument("--workers", type=int, default=0, help="forked worker processes (0: this process works)")
    p.add_argument("--stats-dir", default="", help="shared directory for --workers (default: a temp dir)")
    a = p.parse_args(argv)
    if not a.dsn:
        p.error("--dsn (or DATABASE_URL) is required")
    if a.concurrency < 0 or a.workers < 0:
        p.error("--concurrency and --workers must not be negative")
    return a


def engine_url_and_args(args, worker):
    """The SQLAlchemy URL with the right driver, plus connect_args for application_name."""
    url = make_url(args.dsn)
    if url.drivername in ("postgres", "postgresql", "postgresql+psycopg2", "postgresql+asyncpg"):
        url = url.set(drivername="postgresql+asyncpg" if args.use_async else "postgresql+psycopg2")
    connect_args = {}
    appname = args.application_name.replace("{worker}", str(worker)).replace("{pid}", str(os.getpid()))
    if url.drivername.endswith("asyncpg"):
        query = dict(url.query)
        sslmode = query.pop("sslmode", None)
        if sslmode is not None:  # asyncpg takes it as ssl=
            connect_args["ssl"] = sslmode if sslmode != "disable" else False
            url = url.set(query=query)
        if appname:
            connect_args["server_settings"] = {"application_name": appname}
    elif appname:
        connect_args["application_name"] = appname
    return url, connect_args


def engine_kwargs(args):
    return dict(
        pool_size=args.pool_size,
        max_overflow=args.max_overflow,
        pool_timeout=args.pool_timeout,
        pool_recycle=args.pool_recycle,
        pool_pre_ping=args.pre_ping,
        echo=args.echo,
    )


class Truth:
    """The application's own counters, independent of dbpool_stats."""

    def __init__(self):
        self.lock = threading.Lock()
        self.timeouts_seen = 0
        self.checkouts_attempted = 0
        self.errors = 0
        self.last_error = ""
        self.held = 0

    def attempt(self):
        with self.lock:
            self.checkouts_attempted += 1

    def timeout(self):
        with self.lock:
            self.timeouts_seen += 1

    def error(self, err):
        with self.lock:
            self.errors += 1
            self.last_error = repr(err)[:300]

    def doc(self, pool):
        with self.lock:
            d = {
                "pid": os.getpid(),
                "timeouts_seen": self.timeouts_seen,
                "checkouts_attempted": self.checkouts_attempted,
                "errors": self.errors,
                "last_error": self.last_error,
                "held": self.held,
            }
        d.update(
            checked_out=pool.checkedout(),
            overflow=pool.overflow(),
            checked_in=pool.checkedin(),
            pool_size=pool.size(),
        )
        return d


# --- the application: sync ---------------------------------------------------------


class SyncApp:
    def __init__(self, args, worker, stats_dir):
        url, connect_args = engine_url_and_args(args, worker)
        self.engine = create_engine(url, connect_args=connect_args, **engine_kwargs(args))
        dbpool_stats.instrument(self.engine, name=args.name, multiprocess_dir=stats_dir or None)
        self.args = args
        self.truth = Truth()
        self.stop = threading.Event()
        self.holds = []  # (release event, thread)
        self.holds_lock = threading.Lock()

    @property
    def pool(self):
        return self.engine.pool

    def start(self):
        for i in range(self.args.concurrency):
            threading.Thread(target=self.work, name="worker-%d" % i, daemon=True).start()

    def work(self):
        q = text("SELECT pg_sleep(:s)")
        while not self.stop.is_set():
            self.truth.attempt()
            try:
                with self.engine.connect() as c:
                    c.execute(q, {"s": self.args.query_seconds})
            except exc.TimeoutError:
                self.truth.timeout()
            except Exception as err:
                self.truth.error(err)
                self.stop.wait(0.2)
            if self.args.think_seconds > 0:
                self.stop.wait(self.args.think_seconds)

    def hold(self, n):
        """Check out n connections in a holder thread; return once they are held."""
        release = threading.Event()
        done = threading.Event()
        result = {}

        def holder():
            conns = []
            try:
                for _ in range(n):
                    self.truth.attempt()
                    try:
                        c = self.engine.connect()
                    except exc.TimeoutError:
                        self.truth.timeout()
                        raise
                    c.execute(text("SELECT 1"))
                    conns.append(c)
                with self.truth.lock:
                    self.truth.held += len(conns)
            except Exception as err:
                result["error"] = repr(err)
                for c in conns:
                    c.close()
                conns = []
            finally:
                done.set()
            release.wait()
            for c in conns:
                c.close()
            with self.truth.lock:
                self.truth.held -= len(conns)

        t = threading.Thread(target=holder, daemon=True)
        t.start()
        done.wait()
        if "error" in result:
            return result["error"]
        with self.holds_lock:
            self.holds.append((release, t))
        return None

    def release(self):
        with self.holds_lock:
            holds, self.holds = self.holds, []
        for ev, t in holds:
            ev.set()
        for ev, t in holds:
            t.join(10)

    def close(self):
        self.stop.set()
        self.release()
        try:
            self.engine.dispose()
        except Exception:
            pass


# --- the application: asyncio -------------------------------------------------------


class AsyncApp:
    def __init__(self, args, worker, stats_dir):
        from sqlalchemy.ext.asyncio import create_async_engine

        url, connect_args = engine_url_and_args(args, worker)
        self.engine = create_async_engine(url, connect_args=connect_args, **engine_kwargs(args))
        dbpool_stats.instrument(self.engine, name=args.name, multiprocess_dir=stats_dir or None)
        self.args = args
        self.truth = Truth()
        self.loop = None
        self.stop = None  # asyncio.Event, made in the loop
        self.tasks = []
        self.holds = []  # (asyncio.Event, task)

    @property
    def pool(self):
        return self.engine.sync_engine.pool

    async def start(self):
        self.loop = asyncio.get_running_loop()
        self.stop = asyncio.Event()
        self.tasks = [asyncio.ensure_future(self.work()) for _ in range(self.args.concurrency)]

    async def work(self):
        q = text("SELECT pg_sleep(:s)")
        while not self.stop.is_set():
            self.truth.attempt()
            try:
                async with self.engine.connect() as c:
                    await c.execute(q, {"s": self.args.query_seconds})
            except exc.TimeoutError:
                self.truth.timeout()
            except asyncio.CancelledError:
                raise
            except Exception as err:
                self.truth.error(err)
                await asyncio.sleep(0.2)
            if self.args.think_seconds > 0:
                await asyncio.sleep(self.args.think_seconds)

    async def _hold(self, n):
        release = asyncio.Event()
        ready = self.loop.create_future()

        async def holder():
            conns = []
            try:
                for _ in range(n):
                    self.truth.attempt()
                    try:
                        c = await self.engine.connect()
                    except exc.TimeoutError:
                        self.truth.timeout()
                        raise
                    await c.execute(text("SELECT 1"))
                    conns.append(c)
                with self.truth.lock:
                    self.truth.held += len(conns)
                ready.set_result(None)
            except Exception as err:
                for c in conns:
                    await c.close()
                ready.set_result(repr(err))
                return
            await release.wait()
            for c in conns:
                await c.close()
            with self.truth.lock:
                self.truth.held -= len(conns)

        task = asyncio.ensure_future(holder())
        err = await ready
        if err is None:
            self.holds.append((release, task))
        return err

    async def _release(self):
        holds, self.holds = self.holds, []
        for ev, _ in holds:
            ev.set()
        for _, t in holds:
            await t

    def hold(self, n):  # from the HTTP thread
        return asyncio.run_coroutine_threadsafe(self._hold(n), self.loop).result(120)

    def release(self):
        asyncio.run_coroutine_threadsafe(self._release(), self.loop).result(60)

    async def close(self):
        self.stop.set()
        for t in self.tasks:
            t.cancel()
        await asyncio.gather(*self.tasks, return_exceptions=True)
        await self._release()
        await self.engine.dispose()


# --- HTTP ---------------------------------------------------------------------------


class Handler(BaseHTTPRequestHandler):
    server_version = "loadapp/1"

    def send(self, code, body, ctype="application/json"):
        if not isinstance(body, bytes):
            body = (json.dumps(body) + "\n").encode()
        self.send_response(code)
        self.send_header("Content-Type", ctype)
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def do_GET(self):
        path = urllib.parse.urlsplit(self.path).path.rstrip("/")
        if path == "/dbpool":
            self.send(200, dbpool_stats.render_json())
        elif path == "/truth":
            self.send(200, self.server.truth())
        elif path == "/healthz":
            self.send(200, b"ok\n", "text/plain")
        else:
            self.send(404, {"error": "not found"})

    def do_POST(self):
        u = urllib.parse.urlsplit(self.path)
        path = u.path.rstrip("/")
        app = self.server.app
        if path in ("/hold", "/release") and app is None:
            self.send(400, {"error": "/hold and /release need --workers 0"})
            return
        if path == "/hold":
            try:
                n = int(urllib.parse.parse_qs(u.query).get("n", ["1"])[0])
            except ValueError:
                self.send(400, {"error": "n must be an integer"})
                return
            if n < 0:
                self.send(400, {"error": "n must not be negative"})
                return
            err = app.hold(n)
            if err:
                self.send(503, {"error": err, "truth": self.server.truth()})
            else:
                self.send(200, self.server.truth())
        elif path == "/release":
            app.release()
            self.send(200, self.server.truth())
        else:
            self.send(404, {"error": "not found"})

    def log_message(self, format, *args):
        pass


class Server(ThreadingHTTPServer):
    daemon_threads = True


def serve(listen, app, truth):
    host, _, port = listen.rpartition(":")
    host = host.strip("[]") or "127.0.0.1"
    srv = Server((host, int(port)), Handler)
    srv.app = app
    srv.truth = truth
    threading.Thread(target=srv.serve_forever, name="http", daemon=True).start()
    h = srv.server_address[0]
    if ":" in h:
        h = "[%s]" % h
    print("listening on http://%s:%d/dbpool" % (h, srv.server_address[1]), flush=True)
    return srv


# --- process modes ------------------------------------------------------------------


def run_sync(args, worker=0, stats_dir=None, listen=True, truth_file=None, parent=None):
    app = SyncApp(args, worker, stats_dir)
    stop = threading.Event()
    signal.signal(signal.SIGTERM, lambda *a: stop.set())
    signal.signal(signal.SIGINT, lambda *a: stop.set())
    app.start()
    srv = serve(args.listen, app, lambda: app.truth.doc(app.pool)) if listen else None
    while not stop.wait(0.5):
        if truth_file:
            write_json(truth_file, app.truth.doc(app.pool))
        if parent is not None and os.getppid() != parent:
            break  # the parent died
    if srv is not None:
        srv.shutdown()
        srv.server_close()
    app.close()
    stop_stats(parent)
    if truth_file:
        remove(truth_file)


def run_async(args, worker=0, stats_dir=None, listen=True, truth_file=None, parent=None):
    async def main():
        app = AsyncApp(args, worker, stats_dir)
        await app.start()
        stop = asyncio.Event()
        loop = asyncio.get_running_loop()
        for sig in (signal.SIGTERM, signal.SIGINT):
            loop.add_signal_handler(sig, stop.set)
        srv = serve(args.listen, app, lambda: app.truth.doc(app.pool)) if listen else None
        while not stop.is_set():
            try:
                await asyncio.wait_for(stop.wait(), 0.5)
            except asyncio.TimeoutError:
                pass
            if truth_file:
                write_json(truth_file, app.truth.doc(app.pool))
            if parent is not None and os.getppid() != parent:
                break
        if srv is not None:
            srv.shutdown()
            srv.server_close()
        await app.close()

    asyncio.run(main())
    stop_stats(parent)
    if truth_file:
        remove(truth_file)


def stop_stats(parent):
    """A worker leaves its final figures for its siblings to serve; a process that is the
    whole application removes its file, since nobody would serve it."""
    if parent is not None:
        dbpool_stats.shutdown()
    else:
        dbpool_stats.set_multiprocess_dir(None)


def write_json(path, doc):
    tmp = path + ".tmp"
    with open(tmp, "w") as f:
        json.dump(doc, f)
    os.replace(tmp, path)


def remove(path):
    try:
        os.remove(path)
    except OSError:
        pass


def run_workers(args):
    own_dir = not args.stats_dir
    stats_dir = args.stats_dir or tempfile.mkdtemp(prefix="loadapp-dbpool-")
    os.makedirs(stats_dir, exist_ok=True)
    truth_dir = os.path.join(stats_dir, ".truth")  # dbpool_stats skips dot names
    os.makedirs(truth_dir, exist_ok=True)
    parent = os.getpid()
    children = []
    for i in range(args.workers):
        pid = os.fork()
        if pid == 0:
            code = 0
            try:
                run = run_async if args.use_async else run_sync
                run(args, worker=i, stats_dir=stats_dir, listen=False,
                    truth_file=os.path.join(truth_dir, "%d.json" % os.getpid()), parent=parent)
            except BaseException:
                traceback.print_exc()
                code = 1
            finally:
                sys.stdout.flush()
                sys.stderr.flush()
                os._exit(code)
        children.append(pid)
    workers = list(children)

    dbpool_stats.set_multiprocess_dir(stats_dir)

    def truth():
        workers = []
        for name in sorted(os.listdir(truth_dir)):
            if not name.endswith(".json"):
                continue
            try:
                with open(os.path.join(truth_dir, name)) as f:
                    workers.append(json.load(f))
            except (OSError, ValueError):
                continue
        keys = ("checked_out", "overflow", "checked_in", "timeouts_seen", "checkouts_attempted", "errors", "held")
        d = {k: sum(w.get(k, 0) for w in workers) for k in keys}
        d["pid"] = os.getpid()
        d["workers"] = workers
        return d

    stop = threading.Event()
    failed = False
    signal.signal(signal.SIGTERM, lambda *a: stop.set())
    signal.signal(signal.SIGINT, lambda *a: stop.set())
    srv = serve(args.listen, None, truth)
    while not stop.wait(0.5):
        for pid in list(children):
            try:
                done, status = os.waitpid(pid, os.WNOHANG)
            except ChildProcessError:
                done, status = pid, 0
            if done:
                children.remove(pid)
                print("worker %d exited (status %d)" % (pid, status), file=sys.stderr, flush=True)
        if not children:
            print("every worker exited; stopping", file=sys.stderr, flush=True)
            failed = True
            break
    srv.shutdown()
    srv.server_close()
    for pid in children:
        try:
            os.kill(pid, signal.SIGTERM)
        except OSError:
            pass
    deadline = time.time() + 10
    for pid in children:
        while True:
            try:
                done, _ = os.waitpid(pid, os.WNOHANG)
            except ChildProcessError:
                break
            if done:
                break
            if time.time() > deadline:
                os.kill(pid, signal.SIGKILL)
                os.waitpid(pid, 0)
                break
            time.sleep(0.05)
    # The whole application stops: nobody is left to serve its workers' final figures.
    dbpool_stats.set_multiprocess_dir(None)
    for pid in workers:
        remove(os.path.join(stats_dir, "%s.%d%s" % (socket.gethostname(), pid, dbpool_stats.FILE_SUFFIX)))
    if own_dir:
        shutil.rmtree(stats_dir, ignore_errors=True)
    return 1 if failed else 0


def main(argv=None):
    args = parse_args(sys.argv[1:] if argv is None else argv)
    if args.workers > 0:
        return run_workers(args)
    elif args.use_async:
        run_async(args, stats_dir=args.stats_dir or None)
    else:
        run_sync(args, stats_dir=args.stats_dir or None)
    return 0


if __name__ == "__main__":
    sys.exit(main())
