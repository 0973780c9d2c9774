"""The one registry of a process: everything dbpool_stats keeps between calls.

REGISTRY holds the instrumented pools, the process's identity (pid, hostname, and whether
it is an instance yet) and, in the shared-directory mode, the directory and its writer
thread (multiprocess.SharedDirectory). The other modules read and change it; nothing else
in the package is mutable state.
"""

import logging
import os
import socket
import threading

log = logging.getLogger("dbpool_stats")


def hostname():
    try:
        return socket.gethostname() or "localhost"
    except Exception:  # pragma: no cover - never expected
        return "localhost"


class Registry:
    """The instrumented pools of this process, its identity and its shared directory."""

    def __init__(self):
        self.lock = threading.RLock()
        self.pools = []  # PoolStats, in instrument() order
        #: multiprocess.SharedDirectory while the shared-directory mode is on, else None
        self.shared = None
        self._new_identity()

    def _new_identity(self):
        self.pid = os.getpid()
        self.hostname = hostname()
        # active: this process checked out a connection or served the endpoint, so it is a
        # real instance and writes its file (a preloading gunicorn master that only
        # imported the app is not).
        self.active = False

    def activate(self):
        """This process is an instance: from now on it writes its file, if there is a directory."""
        with self.lock:
            if self.active:
                return
            self.active = True
            if self.shared is not None:
                self.shared.start_writer(self)

    def find(self, target):
        """The PoolStats recording target (an Engine or a Pool), or None."""
        for s in self.pools:
            if s._target is target:
                return s
        return None

    def snapshots(self):
        """The entries of this process's instruments, live; a failing one is left out."""
        with self.lock:
            pools = list(self.pools)
        out = []
        for s in pools:
            try:
                out.append(s.snapshot())
            except Exception:
                log.debug("dbpool_stats: snapshot failed", exc_info=True)
        return out

    def after_fork_in_child(self):
        """A forked child is a new instance: new pid, not active, counters from zero."""
        self.lock = threading.RLock()  # another thread may have held it at the fork
        self._new_identity()
        for s in self.pools:
            try:
                s._reset()
            except Exception:
                pass


REGISTRY = Registry()
