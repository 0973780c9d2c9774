"""Worker processes: the shared-directory mode and fork handling."""

import json
import os
import signal
import socket
import tempfile
import time
import traceback
import shutil
import subprocess
import sys

import dbpool_stats
from sqlalchemy import create_engine, text

from .support import PoolTestCase, dsn

INTERVAL = 0.1
HERE = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def _checkout(e):
    with e.connect() as c:
        c.execute(text("SELECT 1"))


def _child(directory, ready_w, go_r, written, unwritten):
    """A forked worker: its own engine in the shared-directory mode, whose file shows written
    checkouts; then unwritten more checkouts that no file shows before it exits."""
    code = 1
    try:
        dbpool_stats._reset_for_tests()  # forget what the test process instrumented
        e = create_engine(dsn(), pool_size=2)
        # The writer thread writes once, at the first checkout; then only what it serves.
        dbpool_stats.instrument(e, name="mp", multiprocess_dir=directory, interval=3600)
        for _ in range(written):
            _checkout(e)
        dbpool_stats.snapshot()  # what a process serves goes to its file first
        for _ in range(unwritten):
            _checkout(e)

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

    def file_of(self, pid):
        with open(os.path.join(self.dir, "%s.%d%s" % (socket.gethostname(), pid, dbpool_stats.FILE_SUFFIX))) as f:
            return json.load(f)

    def wait_for(self, cond, what, timeout=10):
        deadline = time.time() + timeout
        while True:
            doc = dbpool_stats.snapshot()
            if cond(doc):
                return doc
            if time.time() > deadline:
                self.fail("%s; last document: %s" % (what, json.dumps(doc)[:2000]))
            time.sleep(0.05)

    def check_exited(self, entry, checkouts):
        """entry is the final one of a process: its counters, and the gauges of no pool."""
        self.assertEqual(entry["checkouts"]["count"], checkouts)
        self.assertEqual(entry["use_time"]["count"], checkouts)
        self.assertIsInstance(entry["exited_at"], float)
        st = entry["status"]
        self.assertEqual((st["checked_out"], st["checked_in"], st["total_connections"], st["overflow"]), (0, 0, 0, -2))
        self.assertEqual((entry["pending_checkouts"], entry["held_connections"]), (0, 0))
        self.assertEqual((entry["longest_checkout_wait_seconds"], entry["longest_held_seconds"]), (0.0, 0.0))

    def test_shared_directory_shows_every_worker_and_what_exited_ones_left(self):
        parent = self.engine(pool_size=1)
        dbpool_stats.instrument(parent, name="mp", multiprocess_dir=self.dir, interval=INTERVAL)
        # The children write rarely: their files must not count as stale meanwhile.
        dbpool_stats.set_multiprocess_dir(self.dir, interval=INTERVAL, stale_after=60)
        go_r, go_w = os.pipe()
        ready = []
        for _ in range(3):
            r, w = os.pipe()
            pid = os.fork()
            if pid == 0:
                os.close(r)
                os.close(go_w)
                _child(self.dir, w, go_r, written=2, unwritten=1)
            os.close(w)
            self.children.append(pid)
            ready.append(r)
        os.close(go_r)
        for r in ready:
            self.assertEqual(os.read(r, 1), b"r", "a child failed to start (see its traceback above)")
            os.close(r)
        kids = set(self.children)

        def pids(entries):
            return {i["pid"] for i in entries}

        def counts(entries):
            return {i["pid"]: i["checkouts"]["count"] for i in entries}

        doc = self.wait_for(lambda d: kids <= pids(d["instances"]), "all three children")
        self.assertEqual(pids(doc["instances"]), kids | {os.getpid()})
        self.assertEqual(doc["exited"], [])
        self.assertEqual(len({i["instance"] for i in doc["instances"]}), 4)
        host = socket.gethostname()
        for inst in doc["instances"]:
            self.assertEqual(inst["pool"], "mp")
            self.assertEqual(inst["instance"], "%s:%d" % (host, inst["pid"]))
            if inst["pid"] in kids:
                # What each child served last: its third checkout is on no file.
                self.assertEqual(inst["checkouts"]["count"], 2)
                self.assertEqual(inst["status"]["checked_in"], 1)
        self.assertEqual(len(self.files()), 4)

        # A killed worker's last figures become its final ones: the first sibling that sees
        # its pid dead marks its file exited. What it did since its last write is lost.
        killed, marked, stopped = self.children
        os.kill(killed, signal.SIGKILL)
        os.waitpid(killed, 0)
        doc = dbpool_stats.snapshot()
        self.assertNotIn(killed, pids(doc["instances"]))
        self.assertEqual(counts(doc["exited"]), {killed: 2})
        self.check_exited(doc["exited"][0], 2)
        on_file = self.file_of(killed)
        self.assertEqual(on_file["exited_at"], doc["exited"][0]["exited_at"])
        # gunicorn's child_exit hook after that changes nothing.
        dbpool_stats.mark_process_dead(killed)
        self.assertEqual(self.file_of(killed), on_file)

        # The hook marks a killed worker's file before any sibling reads it.
        os.kill(marked, signal.SIGKILL)
        os.waitpid(marked, 0)
        dbpool_stats.mark_process_dead(marked)
        self.assertIsInstance(self.file_of(marked)["exited_at"], float)
        self.check_exited(self.file_of(marked)["instances"][0], 2)

        # A worker that exits normally leaves its final figures, all of them.
        os.kill(stopped, signal.SIGTERM)
        _, status = os.waitpid(stopped, 0)
        self.assertEqual(os.waitstatus_to_exitcode(status), 0)
        self.children = []
        self.check_exited(self.file_of(stopped)["instances"][0], 3)
        doc = dbpool_stats.snapshot()
        self.assertEqual(pids(doc["instances"]), {os.getpid()})
        self.assertEqual(counts(doc["exited"]), {killed: 2, marked: 2, stopped: 3})
        for entry in doc["exited"]:
            self.assertEqual(entry["instance"], "%s:%d" % (host, entry["pid"]))
        dbpool_stats.shutdown()
        self.assertIsInstance(self.file_of(os.getpid())["exited_at"], float)
        self.assertEqual(len(self.files()), 4)
        os.close(go_w)

    def test_a_normal_exit_leaves_the_final_figures(self):
        # A real interpreter that exits: atexit writes its final file, with every checkout,
        # although its writer thread wrote only at the first one.
        script = (
            "import sys, dbpool_stats\n"
            "from sqlalchemy import create_engine, text\n"
            "e = create_engine(sys.argv[1], pool_size=2)\n"
            "dbpool_stats.instrument(e, name='exiting', multiprocess_dir=sys.argv[2], interval=3600)\n"
            "for _ in range(5):\n"
            "    with e.connect() as c:\n"
            "        c.execute(text('SELECT 1'))\n"
            "print(__import__('os').getpid())\n"
        )
        out = subprocess.run([sys.executable, "-c", script, dsn(), self.dir], cwd=HERE, check=True,
                             capture_output=True, text=True, timeout=60).stdout
        pid = int(out.strip())
        dbpool_stats.set_multiprocess_dir(self.dir, interval=INTERVAL)
        doc = dbpool_stats.snapshot()
        self.assertEqual(doc["instances"], [])
        self.assertEqual([(i["pool"], i["pid"]) for i in doc["exited"]], [("exiting", pid)])
        self.check_exited(doc["exited"][0], 5)

    def test_exited_files_are_served_for_a_bounded_time(self):
        dbpool_stats.set_multiprocess_dir(self.dir, interval=INTERVAL, keep_exited=60)
        now = time.time()
        inst = {"pool": "x", "pid": 1, "checkouts": {"count": 1}}

        def write(pid, exited_at):
            doc = {"format": "dbpool-stats-process", "version": 1, "hostname": "otherhost", "pid": pid,
                   "written_at": exited_at, "exited_at": exited_at,
                   "instances": [dict(inst, instance="otherhost:%d" % pid, pid=pid, exited_at=exited_at)]}
            with open(os.path.join(self.dir, "otherhost.%d%s" % (pid, dbpool_stats.FILE_SUFFIX)), "w") as f:
                json.dump(doc, f)

        n = dbpool_stats.MAX_EXITED_FILES + 3
        for pid in range(1, n + 1):
            write(pid, now - pid * 0.1)  # pid 1 exited last
        write(n + 1, now - 61)  # exited longer ago than keep_exited
        doc = dbpool_stats.snapshot()
        self.assertEqual(doc["instances"], [])
        self.assertEqual(sorted(i["pid"] for i in doc["exited"]), list(range(1, dbpool_stats.MAX_EXITED_FILES + 1)))
        # The oldest beyond the bound and the expired one are removed, not only skipped.
        self.assertEqual(len(self.files()), dbpool_stats.MAX_EXITED_FILES)
        self.assertNotIn("otherhost.%d%s" % (n + 1, dbpool_stats.FILE_SUFFIX), self.files())

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
