"""examples/loadapp.py with --workers: forked workers in the shared-directory mode."""

import json
import os
import select
import shutil
import signal
import subprocess
import sys
import tempfile
import time
import unittest
import urllib.request

from .support import async_dsn, dsn

LOADAPP = os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "examples", "loadapp.py")


def get(url):
    with urllib.request.urlopen(url, timeout=5) as r:
        return json.loads(r.read())


class LoadAppWorkersTest(unittest.TestCase):
    def run_workers(self, extra):
        d = tempfile.mkdtemp(prefix="loadapp-test-")
        self.addCleanup(shutil.rmtree, d, True)
        p = subprocess.Popen(
            [sys.executable, LOADAPP, "--dsn", async_dsn() if "--async" in extra else dsn(), "--workers", "2", "--concurrency", "2",
             "--query-seconds", "0.01", "--pool-size", "2", "--max-overflow", "1",
             "--listen", "127.0.0.1:0", "--stats-dir", d, "--name", "lw"] + extra,
            stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
        )
        self.addCleanup(lambda: p.poll() is None and (p.kill(), p.wait()))
        self.addCleanup(p.stdout.close)
        # Generous waits: on a loaded machine (make test runs packages side by side) the imports,
        # forks and first logins can take many seconds; a working loadapp ends them early.
        ready, _, _ = select.select([p.stdout], [], [], 60)
        self.assertTrue(ready, "no output from loadapp within 60 s")
        line = p.stdout.readline().decode()
        self.assertTrue(line.startswith("listening on http://127.0.0.1:"), repr(line))
        url = line.split()[-1]
        base = url[: -len("/dbpool")]
        deadline = time.time() + 60
        while True:
            doc = get(url)
            pids = {i["pid"] for i in doc["instances"] if i["checkouts"]["count"] > 0}
            if len(pids) == 2:
                break
            if p.poll() is not None:
                self.fail("loadapp exited: %s" % p.stdout.read().decode(errors="replace"))
            self.assertLess(time.time(), deadline, "two working instances: %s" % json.dumps(doc)[:1500])
            time.sleep(0.1)
        self.assertNotIn(p.pid, pids, "the parent only serves")
        self.assertEqual({i["pool"] for i in doc["instances"]}, {"lw"})
        self.assertEqual(len({i["instance"] for i in doc["instances"]}), 2)
        truth = get(base + "/truth")
        self.assertEqual({w["pid"] for w in truth["workers"]}, pids)
        p.send_signal(signal.SIGTERM)
        out, _ = p.communicate(timeout=15)
        self.assertEqual(p.returncode, 0, out.decode(errors="replace"))
        left = [f for f in os.listdir(d) if not f.startswith(".")]
        self.assertEqual(left, [], "stats files left behind")
        return doc

    def test_sync_workers(self):
        doc = self.run_workers([])
        self.assertEqual({i["pool_class"] for i in doc["instances"]}, {"QueuePool"})

    def test_async_workers(self):
        doc = self.run_workers(["--async"])
        self.assertEqual({i["pool_class"] for i in doc["instances"]}, {"AsyncAdaptedQueuePool"})
