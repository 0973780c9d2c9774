"""Worker processes: the shared-directory mode and fork handling."""

import json
import os
import signal
import socket
import tempfile
import time
import traceback
import shutil

import dbpool_stats
from sqlalchemy import create_engine, text

from .support import PoolTestCase, dsn

INTERVAL = 0.1


def _child(directory, ready_w, go_r):
    """A forked worker: its own engine in the shared-directory mode, then wait."""
    code = 1
    try:
        dbpool_stats._reset_for_tests()  # forget what the test process instrumented
        e = create_engine(dsn(), pool_size=2)
        dbpool_stats.instrument(e, name="mp", multiprocess_dir=directory, interval=INTERVAL)
        with e.connect() as c:
            c.execute(text("SELECT 1"))

        def on_term(signum, frame):
            dbpool_stats.shutdown()  # what atexit does on a normal exit
            os._exit(0)

        signal.signal(signal.SIGTERM, on_term)
        os.write(ready_w, b"r")
        os.read(go_r, 1)  # returns when the test process closes its end (it died)
        code = 0
    except BaseException:
        traceback.print_exc()
    finally:
        os._exit(code)


class MultiprocessTest(PoolTestCase):
    def setUp(self):
        super().setUp()
        self.dir = tempfile.mkdtemp(prefix="dbpool-stats-test-")
        self.children = []

    def tearDown(self):
        for pid in self.children:
            try:
                os.kill(pid, signal.SIGKILL)
                os.waitpid(pid, 0)
            except OSError:
                pass
        super().tearDown()
        shutil.rmtree(self.dir, ignore_errors=True)

    def files(self):
        return sorted(f for f in os.listdir(self.dir) if f.endswith(dbpool_stats.FILE_SUFFIX))

    def wait_for(self, cond, what, timeout=10):
        deadline = time.time() + timeout
        while True:
            doc = dbpool_stats.snapshot()
            if cond(doc):
                return doc
            if time.time() > deadline:
                self.fail("%s; last document: %s" % (what, json.dumps(doc)[:2000]))
            time.sleep(0.05)

    def test_shared_directory_shows_every_worker_and_drops_dead_ones(self):
        parent = self.engine(pool_size=1)
        dbpool_stats.instrument(parent, name="mp", multiprocess_dir=self.dir, interval=INTERVAL)
        go_r, go_w = os.pipe()
        ready = []
        for _ in range(3):
            r, w = os.pipe()
            pid = os.fork()
            if pid == 0:
                os.close(r)
                os.close(go_w)
                _child(self.dir, w, go_r)
            os.close(w)
            self.children.append(pid)
            ready.append(r)
        os.close(go_r)
        for r in ready:
            self.assertEqual(os.read(r, 1), b"r", "a child failed to start (see its traceback above)")
            os.close(r)
        kids = set(self.children)

        def pids(doc):
            return {i["pid"] for i in doc["instances"]}

        def counted(doc):
            # The first file is written when the first checkout starts, and a file written
            # between the end of the checkout and the connection's return shows count 1 with
            # checked_in 0: wait until both are done.
            return {i["pid"] for i in doc["instances"]
                    if i["checkouts"]["count"] == 1 and i["status"]["checked_in"] == 1}

        doc = self.wait_for(lambda d: kids <= counted(d), "all three children, after their checkout")
        self.assertEqual(pids(doc), kids | {os.getpid()})
        self.assertEqual(len({i["instance"] for i in doc["instances"]}), 4)
        host = socket.gethostname()
        for inst in doc["instances"]:
            self.assertEqual(inst["pool"], "mp")
            self.assertEqual(inst["instance"], "%s:%d" % (host, inst["pid"]))
            if inst["pid"] in kids:
                self.assertEqual(inst["checkouts"]["count"], 1)
                self.assertEqual(inst["status"]["checked_in"], 1)
                self.assertLess(time.time() - inst["collected_at"], 5 * INTERVAL + 1)
        # The test process wrote its own file too (it checked out nothing, but served).
        self.wait_for(lambda d: len(self.files()) == 4, "four files")

        # A killed worker's entry goes away (dead pid on this host), and its file too.
        victim = self.children[0]
        os.kill(victim, signal.SIGKILL)
        os.waitpid(victim, 0)
        self.children.remove(victim)
        doc = self.wait_for(lambda d: victim not in pids(d), "killed child dropped", timeout=3)
        self.assertEqual(pids(doc), set(self.children) | {os.getpid()})
        self.assertNotIn("%s.%d%s" % (host, victim, dbpool_stats.FILE_SUFFIX), self.files())

        # Workers that exit normally remove their own files.
        for pid in list(self.children):
            os.kill(pid, signal.SIGTERM)
            _, status = os.waitpid(pid, 0)
            self.assertEqual(os.waitstatus_to_exitcode(status), 0)
            self.children.remove(pid)
        self.assertEqual(self.files(), ["%s.%d%s" % (host, os.getpid(), dbpool_stats.FILE_SUFFIX)])
        self.assertEqual(pids(dbpool_stats.snapshot()), {os.getpid()})
        dbpool_stats.shutdown()
        self.assertEqual(self.files(), [])
        os.close(go_w)

    def test_stale_and_foreign_files(self):
        dbpool_stats.set_multiprocess_dir(self.dir, interval=INTERVAL)
        inst = {"pool": "x", "instance": "otherhost:1", "pid": 1}

        def write(name, written_at, host="otherhost", pid=1):
            doc = {"format": "dbpool-stats-process", "version": 1, "hostname": host, "pid": pid,
                   "written_at": written_at, "instances": [dict(inst, instance="%s:%d" % (host, pid))]}
            with open(os.path.join(self.dir, name), "w") as f:
                json.dump(doc, f)

        write("otherhost.1" + dbpool_stats.FILE_SUFFIX, time.time())
        write("otherhost.2" + dbpool_stats.FILE_SUFFIX, time.time() - 60, pid=2)  # stale
        with open(os.path.join(self.dir, "garbage" + dbpool_stats.FILE_SUFFIX), "w") as f:
            f.write("{not json")
        with open(os.path.join(self.dir, "unrelated.txt"), "w") as f:
            f.write("x")
        doc = dbpool_stats.snapshot()
        self.assertEqual([i["instance"] for i in doc["instances"]], ["otherhost:1"])
        # Files of other hosts are never removed, only ignored when stale.
        self.assertIn("otherhost.2" + dbpool_stats.FILE_SUFFIX, os.listdir(self.dir))

    def test_what_a_process_serves_is_on_file_first(self):
        # The next scrape may reach a sibling, which serves this process from its file: the
        # file must never be older than what this process served, or its counters would fall.
        e = self.engine(pool_size=1)
        dbpool_stats.instrument(e, name="served", multiprocess_dir=self.dir, interval=3600)
        for _ in range(3):  # the writer thread wrote the file at the first checkout only
            with e.connect() as c:
                c.execute(text("SELECT 1"))
        served = dbpool_stats.snapshot()["instances"]
        self.assertEqual([i["checkouts"]["count"] for i in served], [3])
        self.assertEqual(len(self.files()), 1)
        with open(os.path.join(self.dir, self.files()[0])) as f:
            on_file = json.load(f)["instances"]
        self.assertEqual(on_file, served)

    def test_env_var_turns_the_mode_on(self):
        os.environ[dbpool_stats.ENV_DIR] = self.dir
        try:
            e = self.engine(pool_size=1)
            dbpool_stats.instrument(e, name="env")
            with e.connect():
                pass
            deadline = time.time() + 5
            while not self.files() and time.time() < deadline:
                time.sleep(0.05)
            self.assertEqual(len(self.files()), 1)
            with open(os.path.join(self.dir, self.files()[0])) as f:
                doc = json.load(f)
            self.assertEqual(doc["pid"], os.getpid())
            self.assertEqual([i["pool"] for i in doc["instances"]], ["env"])
        finally:
            del os.environ[dbpool_stats.ENV_DIR]

    def test_fork_resets_counters_and_identity(self):
        e = self.engine(pool_size=2)
        stats = dbpool_stats.instrument(e, name="forked")
        for _ in range(2):
            with e.connect() as c:
                c.execute(text("SELECT 1"))
        r, w = os.pipe()
        pid = os.fork()
        if pid == 0:
            out = {}
            try:
                os.close(r)
                e.dispose(close=False)  # SQLAlchemy's advice for a forked child
                out["after_fork"] = stats.snapshot()
                with e.connect() as c:
                    c.execute(text("SELECT 1"))
                out["after_checkout"] = stats.snapshot()
                out["pid"] = os.getpid()
            except BaseException:
                out["error"] = traceback.format_exc()
            finally:
                os.write(w, json.dumps(out).encode())
                os._exit(0)
        os.close(w)
        self.children.append(pid)
        data = b""
        while True:
            chunk = os.read(r, 65536)
            if not chunk:
                break
            data += chunk
        os.close(r)
        os.waitpid(pid, 0)
        self.children.remove(pid)
        out = json.loads(data)
        self.assertNotIn("error", out, out.get("error"))
        a = out["after_fork"]
        self.assertEqual(a["pid"], out["pid"])
        self.assertNotEqual(a["pid"], os.getpid())
        self.assertTrue(a["instance"].endswith(":%d" % out["pid"]))
        self.assertEqual(a["checkouts"]["count"], 0)
        self.assertEqual(a["connects"], 0)
        self.assertEqual((a["use_time"]["count"], a["create_time"]["count"], a["held_connections"]), (0, 0, 0))
        b = out["after_checkout"]
        self.assertEqual(b["checkouts"]["count"], 1)
        self.assertEqual(b["connects"], 1)
        self.assertEqual((b["use_time"]["count"], b["create_time"]["count"]), (1, 1))
        # The parent's figures are untouched.
        p = stats.snapshot()
        self.assertEqual(p["pid"], os.getpid())
        self.assertEqual(p["checkouts"]["count"], 2)
