"""Leak detection: connections held longer than a threshold, and where the application took them.

Like HikariCP's leakDetectionThreshold, but read when the document is made instead of by a
timer per checkout: every checked-out connection is already in PoolStats' table of held
connections with its checkout time, and those older than the threshold are the leaks. With
detection on, each checkout also notes its site: the first frame above the checkout that is
not in a module of SQLAlchemy, asyncio, greenlet, contextlib or this package, as (code object,
line), which costs a walk over those frames and no string. A full stack is kept only when asked
(leak_stack=True), because building it costs a walk to the top on every checkout.

SQLAlchemy's asyncio layer runs its sync code in a greenlet that the awaiting coroutine
switched to; the walk goes on in the greenlet that switched (its gr_frame), where the
application's coroutine is.
"""

import dis
import math
import os

try:
    from greenlet import getcurrent as _getcurrent
except ImportError:  # SQLAlchemy without its asyncio extra: no greenlets to cross
    _getcurrent = None

ENV_LEAK_THRESHOLD = "DBPOOL_STATS_LEAK_THRESHOLD"
ENV_LEAK_STACK = "DBPOOL_STATS_LEAK_STACK"
#: Off (as HikariCP's leakDetectionThreshold): noting the site walks SQLAlchemy's frames on
#: every checkout, which costs more than all the other timings together (README.md, "Leak
#: detection"). Hold times and the longest hold are recorded without it.
DEFAULT_LEAK_THRESHOLD = None
#: Sites per pool in the document, the most frequent first.
LEAK_SITES = 10
#: Frames of a full stack (leak_stack=True), from the site outwards.
STACK_LIMIT = 32

#: Modules whose frames are never a checkout's site: by module name, as SQLAlchemy finds the
#: first frame outside itself for its warnings (its generated decorators have no file).
_INTERNAL_MODULES = frozenset(("sqlalchemy", "asyncio", "greenlet", "contextlib", __name__.split(".")[0]))

#: co_filename -> True when frames of that file are skipped. Keyed by file name, whose hash a
#: str keeps, where a code object's is computed anew on every lookup.
_internal_files = {}
#: id(code) -> (code, skipped) for code without a file ("<string>": SQLAlchemy's generated
#: decorators, or any exec), judged by its module; the code is kept so that its id stays its own.
_internal_codes = {}

try:  # the greenlet in which SQLAlchemy's asyncio layer runs its sync code
    from sqlalchemy.util._concurrency_py3k import _AsyncIoGreenlet
except Exception:  # no greenlet installed, or a SQLAlchemy that moved it
    _AsyncIoGreenlet = None


def _is_internal(frame):
    """Whether frame belongs to a skipped module, remembered per file or, for code without a
    file, per code object."""
    code = frame.f_code
    name = code.co_filename
    pseudo = name.startswith("<")
    if pseudo:
        known = _internal_codes.get(id(code))
        if known is not None:
            return known[1]
    module = frame.f_globals.get("__name__") or ""
    v = module.split(".", 1)[0] in _INTERNAL_MODULES
    cache = _internal_codes if pseudo else _internal_files
    if len(cache) > 10000:  # code made at run time must not grow these forever
        cache.clear()
    if pseudo:
        _internal_codes[id(code)] = (code, v)
    else:
        _internal_files[name] = v
    return v


def _switched_from(g):
    """The greenlet that switched to g (None: the current one) and its frame; (None, None) when
    there is none (outside greenlets)."""
    if _getcurrent is None:
        return None, None
    g = (g or _getcurrent()).parent
    if g is None:
        return None, None
    return g, g.gr_frame


def checkout_site(frame):
    """(code, instruction offset) of the first frame from frame outwards that is the
    application's, or None.

    Inside SQLAlchemy's asyncio greenlet the walk starts at once in the coroutine that awaited
    SQLAlchemy: that greenlet runs SQLAlchemy's sync code (and the application's only through
    run_sync(), whose checkouts are then placed at the run_sync() call).
    """
    internal = _internal_files
    f = frame
    g = None
    if _AsyncIoGreenlet is not None:
        g = _getcurrent()
        if type(g) is _AsyncIoGreenlet:
            g, f = _switched_from(g)
    while True:
        while f is not None:
            skip = internal.get(f.f_code.co_filename)
            if skip is None:
                skip = _is_internal(f)
            if not skip:
                # The instruction, not f_lineno, which decodes the line table: the report
                # turns it into a line for the few connections that leak.
                return f.f_code, f.f_lasti
            f = f.f_back
        g, f = _switched_from(g)
        if f is None:
            return None


def _frames(frame):
    """frame and its callers, across greenlets, from where checkout_site() starts."""
    f, g = frame, None
    if _AsyncIoGreenlet is not None and type(_getcurrent()) is _AsyncIoGreenlet:
        g, f = _switched_from(None)
    while f is not None:
        while f is not None:
            yield f
            f = f.f_back
        g, f = _switched_from(g)


def checkout_site_and_stack(frame):
    """checkout_site() plus the stack from the site outwards: (code, offset, ((code, offset), ...))."""
    site = checkout_site(frame)
    if site is None:
        return None
    stack = []
    for f in _frames(frame):
        # The frames before the site are all skipped ones: the first with its code is the site.
        if stack or f.f_code is site[0]:
            stack.append((f.f_code, f.f_lasti))
            if len(stack) == STACK_LIMIT:
                break
    return site[0], site[1], tuple(stack)


def _line(code, offset):
    """The source line of the instruction at offset in code, as f_lineno would have said."""
    line = None
    for start, lineno in dis.findlinestarts(code):
        if start > offset:
            break
        if lineno is not None:
            line = lineno
    return line if line is not None else code.co_firstlineno


def _where(code, offset):
    return {
        "file": code.co_filename,
        "line": _line(code, offset),
        "function": getattr(code, "co_qualname", code.co_name),  # co_qualname: Python 3.11+
    }


def report(held, now, threshold, top=LEAK_SITES):
    """The document's "leaks" object from held: [(checkout time, site or None)] on now's clock."""
    if not threshold:  # not observed: null, not a made-up 0
        return {"threshold_seconds": None, "count": None, "sites": []}
    count = 0
    by_site = {}  # (file, line, function) or None -> [count, oldest age, where, stack]
    for t, site in held:
        age = now - t
        if age <= threshold:
            continue
        count += 1
        where = _where(site[0], site[1]) if site is not None else None
        key = tuple(where.values()) if where is not None else None
        s = by_site.get(key)
        if s is None:
            s = by_site[key] = [0, -1.0, where, None]
        s[0] += 1
        if age > s[1]:
            s[1] = age
            s[3] = site[2] if site is not None and len(site) > 2 else None
    sites = []
    for n, oldest, where, stack in sorted(by_site.values(), key=lambda s: (-s[0], -s[1]))[:top]:
        entry = dict(where) if where is not None else {"file": None, "line": None, "function": None}
        entry["count"] = n
        entry["oldest_seconds"] = oldest
        if stack is not None:
            entry["stack"] = [_where(c, o) for c, o in stack]
        sites.append(entry)
    return {"threshold_seconds": float(threshold), "count": count, "sites": sites}


def threshold_from(value):
    """The leak threshold in seconds (None: off) from instrument()'s argument, else the
    environment, else the default (off). Raises ValueError naming the setting and its value."""
    setting = "leak_threshold"
    if value is None:
        env = os.environ.get(ENV_LEAK_THRESHOLD, "").strip()
        if not env:
            return DEFAULT_LEAK_THRESHOLD
        setting, value = ENV_LEAK_THRESHOLD, env
    try:
        seconds = float(value)
    except (TypeError, ValueError):
        seconds = float("nan")
    if isinstance(value, bool) or math.isnan(seconds) or math.isinf(seconds) or seconds < 0:
        raise ValueError(
            "dbpool_stats: %s=%r: want a number of seconds >= 0 (0 turns leak detection off)" % (setting, value)
        )
    return seconds or None


def stack_from(value):
    """Whether checkouts keep a full stack: instrument()'s argument, else the environment."""
    if value is not None:
        return bool(value)
    env = os.environ.get(ENV_LEAK_STACK, "").strip().lower()
    if env in ("", "0", "false", "no", "off"):
        return False
    if env in ("1", "true", "yes", "on"):
        return True
    raise ValueError("dbpool_stats: %s=%r: want 1 or 0" % (ENV_LEAK_STACK, os.environ[ENV_LEAK_STACK]))
