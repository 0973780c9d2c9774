"""The endpoint: own listener, WSGI and ASGI apps, and the package install."""

import asyncio
import io
import json
import os
import shutil
import subprocess
import sys
import tempfile
import urllib.error
import urllib.request
from wsgiref.util import setup_testing_defaults

import dbpool_stats
from sqlalchemy import text

from .support import PoolTestCase

HERE = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


class EndpointTest(PoolTestCase):
    def check_doc(self, body, pools):
        doc = json.loads(body)
        self.assertEqual(doc["format"], "dbpool-stats")
        self.assertEqual(doc["version"], 1)
        self.assertIsInstance(doc["generated_at"], float)
        self.assertEqual(doc["exited"], [])  # a single process: no sibling exited
        self.assertEqual(sorted(i["pool"] for i in doc["instances"]), sorted(pools))
        keys = {
            "pool", "instance", "pid", "pool_class", "collected_at", "settings", "status",
            "pending_checkouts", "longest_checkout_wait_seconds", "checkouts", "connects",
            "invalidations", "recycles", "pre_ping_failures", "use_time", "create_time",
            "held_connections", "longest_held_seconds", "leaks",
        }
        for inst in doc["instances"]:
            self.assertLessEqual(keys, set(inst), "missing: %s" % (keys - set(inst)))
            self.assertEqual(
                set(inst["settings"]),
                {"pool_size", "max_overflow", "timeout_seconds", "recycle_seconds", "pre_ping", "echo"},
            )
            self.assertEqual(
                set(inst["status"]),
                {"pool_size", "max_overflow", "checked_out", "checked_in", "overflow", "total_connections"},
            )
            self.assertLessEqual({"count", "failed", "sum_seconds", "buckets", "timeouts", "failures"}, set(inst["checkouts"]))
            self.assertEqual(list(inst["checkouts"]["failures"]), ["timeout", "connect", "cancelled", "other"])
            self.assertEqual(set(inst["use_time"]), {"count", "sum_seconds", "buckets"})
            self.assertEqual(set(inst["create_time"]), {"count", "failed", "sum_seconds", "buckets"})
            self.assertEqual(set(inst["leaks"]), {"threshold_seconds", "count", "sites"})
        return doc

    def test_http_listener(self):
        e = self.engine(pool_size=2)
        dbpool_stats.instrument(e, name="api")
        with e.connect() as c:
            c.execute(text("SELECT 1"))
        srv = dbpool_stats.start_http_server(port=0, addr="127.0.0.1")
        try:
            self.assertEqual(srv.url, "http://127.0.0.1:%d/dbpool" % srv.server_port)
            with urllib.request.urlopen(srv.url, timeout=5) as r:
                self.assertEqual(r.status, 200)
                self.assertEqual(r.headers["Content-Type"], "application/json")
                doc = self.check_doc(r.read(), ["api"])
            self.assertEqual(doc["instances"][0]["checkouts"]["count"], 1)
            self.assertEqual(doc["instances"][0]["status"]["checked_in"], 1)
            with urllib.request.urlopen(srv.url + "/?x=1", timeout=5) as r:
                self.check_doc(r.read(), ["api"])
            with self.assertRaises(urllib.error.HTTPError) as cm:
                urllib.request.urlopen("http://127.0.0.1:%d/metrics" % srv.server_port, timeout=5)
            self.assertEqual(cm.exception.code, 404)
        finally:
            srv.shutdown()
            srv.server_close()

    def test_wsgi_app(self):
        dbpool_stats.instrument(self.engine(), name="w")
        environ = {}
        setup_testing_defaults(environ)
        got = {}

        def start_response(status, headers):
            got["status"], got["headers"] = status, dict(headers)

        body = b"".join(dbpool_stats.wsgi_app(environ, start_response))
        self.assertEqual(got["status"], "200 OK")
        self.assertEqual(got["headers"]["Content-Type"], "application/json")
        self.assertEqual(int(got["headers"]["Content-Length"]), len(body))
        self.check_doc(body, ["w"])
        environ["REQUEST_METHOD"] = "POST"
        environ["wsgi.input"] = io.BytesIO(b"")
        dbpool_stats.wsgi_app(environ, start_response)
        self.assertTrue(got["status"].startswith("405"))

    def test_asgi_app(self):
        dbpool_stats.instrument(self.engine(), name="a")
        sent = []

        async def receive():
            return {"type": "http.request", "body": b"", "more_body": False}

        async def send(msg):
            sent.append(msg)

        scope = {"type": "http", "method": "GET", "path": "/", "root_path": "/dbpool", "headers": []}
        asyncio.run(dbpool_stats.asgi_app(scope, receive, send))
        self.assertEqual(sent[0]["type"], "http.response.start")
        self.assertEqual(sent[0]["status"], 200)
        self.assertIn((b"content-type", b"application/json"), sent[0]["headers"])
        self.check_doc(sent[1]["body"], ["a"])
        # render_json() for an application's own route
        self.check_doc(dbpool_stats.render_json(), ["a"])

    def test_pip_install(self):
        """pip install --no-build-isolation works offline (the environment's pinned setuptools)."""
        tmp = tempfile.mkdtemp()
        try:
            src = os.path.join(tmp, "src")
            os.mkdir(src)
            shutil.copytree(os.path.join(HERE, "dbpool_stats"), os.path.join(src, "dbpool_stats"))
            for f in ("pyproject.toml", "README.md"):
                shutil.copy(os.path.join(HERE, f), src)
            target = os.path.join(tmp, "target")
            r = subprocess.run(
                [sys.executable, "-m", "pip", "install", "--quiet", "--no-build-isolation", "--no-index",
                 "--no-deps", "--target", target, src],
                stdout=subprocess.PIPE, stderr=subprocess.STDOUT, timeout=120,
            )
            self.assertEqual(r.returncode, 0, r.stdout.decode(errors="replace"))
            r = subprocess.run(
                [sys.executable, "-c", "import dbpool_stats; print(dbpool_stats.__file__, dbpool_stats.FORMAT_VERSION)"],
                cwd=tmp, env=dict(os.environ, PYTHONPATH=target), stdout=subprocess.PIPE,
                stderr=subprocess.STDOUT, timeout=60,
            )
            self.assertEqual(r.returncode, 0, r.stdout.decode(errors="replace"))
            self.assertTrue(r.stdout.decode().startswith(target), r.stdout)
        finally:
            shutil.rmtree(tmp, ignore_errors=True)
