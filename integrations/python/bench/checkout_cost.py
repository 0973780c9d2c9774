"""What dbpool_stats adds to a checkout and checkin, next to the bare pool.

Runs a QueuePool over a stub DBAPI driver (no server, no network: only the pool's own work and
the instrumentation's are timed), once bare and once per instrumented variant, in alternating
rounds within one run, so that the load of a shared machine falls on every variant alike. Each
round times N `pool.connect().close()` per variant; the table shows the median over the rounds
of the time per checkout+checkin, and "added": the median over the rounds of (variant - bare
of the same round). Prints figures next to the target and asserts nothing.

Time is the thread's CPU time (time.thread_time()): what a checkout costs the application's
process. Wall time is printed too, but on a shared machine it also counts the time other
processes held the CPU, which doubles single rounds at random; CPU time does not.

Two call depths: "direct" calls pool.connect() from the benchmark loop; "orm depth" calls it
through 10 frames of a module named as SQLAlchemy's (Session.execute() has 7 on SQLAlchemy
1.4, 9 on 2.0), so that leak detection's walk to the application's frame pays what it pays
under an ORM session.

--baseline DIR adds the dbpool_stats package in DIR (e.g. an older version, from
`git archive`) as one more variant of the same run, imported under another name.

    .venv/sa20/bin/python integrations/python/bench/checkout_cost.py [--rounds 60] [--ops 2000]
"""

import argparse
import gc
import importlib.util
import os
import platform
import statistics
import sys
import time

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, os.path.dirname(HERE))  # dbpool_stats from this checkout

import sqlalchemy  # noqa: E402
from sqlalchemy.pool import QueuePool  # noqa: E402

import dbpool_stats  # noqa: E402

#: Issue 15: instrumentation, with the hold, connect and outcome timings, adds at most this
#: much per checkout and checkin, where the bare pool took 5.5 us.
TARGET_ADDED_US = 1.5
TARGET_BARE_US = 5.5


class StubCursor:
    def execute(self, *a, **kw):
        return None

    def fetchall(self):
        return []

    def close(self):
        pass


class StubConnection:
    """A DBAPI connection that does nothing: what QueuePool calls on checkout and checkin."""

    def cursor(self):
        return StubCursor()

    def commit(self):
        pass

    def rollback(self):
        pass

    def close(self):
        pass


def stub_connect():
    return StubConnection()


def new_pool():
    # The seed's settings but pre-ping (the stub has no dialect to ping with).
    return QueuePool(stub_connect, pool_size=5, max_overflow=10, timeout=30, recycle=3600)


DEPTH = 10
# Frames that are SQLAlchemy's to leak detection's walk: code of a module named as one of
# SQLAlchemy's, with a file in its directory (which is never written).
_src = ["def frame0(pool):\n    pool.connect().close()\n"]
for _i in range(1, DEPTH + 1):
    _src.append("def frame%d(pool):\n    frame%d(pool)\n" % (_i, _i - 1))
_ns = {"__name__": "sqlalchemy.orm.dbpool_stats_benchmark"}
exec(compile("".join(_src), os.path.join(os.path.dirname(sqlalchemy.__file__), "orm", "dbpool_stats_benchmark.py"), "exec"), _ns)
through_sqlalchemy = _ns["frame%d" % DEPTH]


def run_direct(pool, n):
    """(CPU seconds, wall seconds) per checkout+checkin of n."""
    c0, w0 = time.thread_time(), time.perf_counter()
    for _ in range(n):
        pool.connect().close()
    return (time.thread_time() - c0) / n, (time.perf_counter() - w0) / n


def run_deep(pool, n):
    f = through_sqlalchemy
    c0, w0 = time.thread_time(), time.perf_counter()
    for _ in range(n):
        f(pool)
    return (time.thread_time() - c0) / n, (time.perf_counter() - w0) / n


def load_baseline(path):
    """The dbpool_stats package in path, imported as dbpool_stats_baseline."""
    spec = importlib.util.spec_from_file_location(
        "dbpool_stats_baseline", os.path.join(path, "__init__.py"), submodule_search_locations=[path]
    )
    mod = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = mod
    spec.loader.exec_module(mod)
    return mod


def variants(baseline):
    """(label, package or None for the bare pool, instrument() keyword arguments)."""
    out = [("bare QueuePool", None, {})]
    if baseline is not None:
        out.append(("baseline dbpool_stats %s" % baseline.__version__, baseline, {}))
    out += [
        ("instrumented (default: leak detection off)", dbpool_stats, {}),
        ("instrumented, leak detection on", dbpool_stats, {"leak_threshold": 60}),
        ("instrumented, leak detection on, full stacks", dbpool_stats, {"leak_threshold": 60, "leak_stack": True}),
    ]
    return out


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--rounds", type=int, default=60)
    ap.add_argument("--ops", type=int, default=2000, help="checkout+checkin per variant and round")
    ap.add_argument("--baseline", metavar="DIR", help="another dbpool_stats package directory to compare")
    args = ap.parse_args()
    baseline = load_baseline(os.path.abspath(args.baseline)) if args.baseline else None

    cases = []  # (depth label, variant label, pool, runner)
    for depth, runner in (("direct", run_direct), ("orm depth", run_deep)):
        for i, (label, package, kw) in enumerate(variants(baseline)):
            pool = new_pool()
            if package is not None:
                package.instrument(pool, name="bench-%d-%d" % (len(cases), i), **kw)
            runner(pool, 200)  # warm up: open the connection, specialise the bytecode
            cases.append((depth, label, pool, runner))

    times = {(d, l): [] for d, l, _, _ in cases}
    for r in range(args.rounds):
        gc.collect()
        k = r % len(cases)
        for depth, label, pool, runner in cases[k:] + cases[:k]:  # a different first case each round
            times[(depth, label)].append(runner(pool, args.ops))

    print("dbpool_stats %s: cost per checkout+checkin, QueuePool(pool_size=5, max_overflow=10, recycle=3600) "
          "over a stub DBAPI driver" % dbpool_stats.__version__)
    print("SQLAlchemy %s, Python %s; %d rounds x %d checkout+checkin per variant, interleaved; medians over "
          "the rounds; load average at the end %s" % (sqlalchemy.__version__, platform.python_version(), args.rounds,
                                                      args.ops, " ".join("%.1f" % x for x in os.getloadavg())))
    bare_here = statistics.median(c for c, _ in times[("direct", "bare QueuePool")])
    scaled = TARGET_ADDED_US * bare_here * 1e6 / TARGET_BARE_US
    print("target: added CPU <= +%.1f us (where the bare pool took %.1f us; scaled to this machine's bare pool: "
          "<= +%.2f us)" % (TARGET_ADDED_US, TARGET_BARE_US, scaled))
    print()
    print("%-9s %-45s %9s %9s %9s %9s   %s" % ("stack", "variant", "CPU/op", "added", "wall/op", "added", "target"))

    def us(x):
        return "%.2f us" % (x * 1e6)

    def plus(x):
        return "%+.2f us" % (x * 1e6)

    for depth in ("direct", "orm depth"):
        bare = times[(depth, "bare QueuePool")]
        for d, label, _, _ in cases:
            if d != depth:
                continue
            t = times[(d, label)]
            cpu = statistics.median(c for c, _ in t)
            wall = statistics.median(w for _, w in t)
            if label == "bare QueuePool":
                print("%-9s %-45s %9s %9s %9s %9s" % (depth, label, us(cpu), "-", us(wall), "-"))
                continue
            added_cpu = statistics.median(a[0] - b[0] for a, b in zip(t, bare)) * 1e6
            added_wall = statistics.median(a[1] - b[1] for a, b in zip(t, bare))
            if added_cpu <= min(TARGET_ADDED_US, scaled):
                verdict = "meets both"
            elif added_cpu <= TARGET_ADDED_US:
                verdict = "meets +%.1f us, not the scaled one" % TARGET_ADDED_US
            else:
                verdict = "above"
            print("%-9s %-45s %9s %9s %9s %9s   %s" % (depth, label, us(cpu), "%+.2f us" % added_cpu, us(wall),
                                                  plus(added_wall), verdict))


if __name__ == "__main__":
    main()
