"""SQLAlchemy connection pool statistics as JSON, for dbpool_exporter.

Two lines in a service::

    import dbpool_stats
    dbpool_stats.instrument(engine, name="api")   # create_engine() or create_async_engine()
    dbpool_stats.start_http_server(port=9931, addr="127.0.0.1")   # GET /dbpool

or serve ``render_json()`` / ``wsgi_app`` / ``asgi_app`` on the application's own
path. The JSON document is a contract with dbpool_exporter; README.md next to
this package describes every field ("format": "dbpool-stats", "version": 1).

Only SQLAlchemy (1.4 or 2.0) and the standard library are used. Nothing in
this package raises into the application's checkouts: every hook swallows its
own errors, and a failed hook only makes the figures less complete.

The modules: stats (recording one pool: hooks on the pool instance and its events),
histogram (bucket bounds and counts), leaks (leak detection: checkout sites and the report),
multiprocess (the shared directory of worker processes, forks), exposition (the document and
its endpoints), registry (the process's one mutable state).
"""

# Before the imports: exposition reads it.
__version__ = "0.4.0"

from .exposition import FORMAT, FORMAT_VERSION, asgi_app, render_json, snapshot, start_http_server, wsgi_app  # noqa: E402
from .multiprocess import mark_process_dead, set_multiprocess_dir, shutdown  # noqa: E402
from .histogram import BUCKETS, CREATE_BUCKETS, USE_BUCKETS  # noqa: E402
from .leaks import DEFAULT_LEAK_THRESHOLD, ENV_LEAK_STACK, ENV_LEAK_THRESHOLD  # noqa: E402
from .stats import FAILURE_REASONS, PoolStats, instrument, uninstrument  # noqa: E402

# Outside __all__ but importable from here as they were before the modules split: the
# defaults and environment variable names of the shared-directory mode, and the tests' reset.
from .exposition import DEFAULT_PATH  # noqa: E402, F401
from .multiprocess import DEFAULT_INTERVAL, ENV_DIR, ENV_INTERVAL, FILE_SUFFIX, STALE_INTERVALS  # noqa: E402, F401
from .multiprocess import DEFAULT_KEEP_EXITED, MAX_EXITED_FILES  # noqa: E402, F401
from .stats import _reset_for_tests  # noqa: E402, F401

__all__ = [
    "BUCKETS",
    "CREATE_BUCKETS",
    "DEFAULT_LEAK_THRESHOLD",
    "ENV_LEAK_STACK",
    "ENV_LEAK_THRESHOLD",
    "FAILURE_REASONS",
    "FORMAT",
    "FORMAT_VERSION",
    "USE_BUCKETS",
    "PoolStats",
    "asgi_app",
    "instrument",
    "mark_process_dead",
    "render_json",
    "set_multiprocess_dir",
    "shutdown",
    "snapshot",
    "start_http_server",
    "uninstrument",
    "wsgi_app",
]
