"""The JSON document and the ways to serve it: a dict, bytes, WSGI, ASGI, or a listener thread.

The document is a contract with dbpool_exporter; README.md next to this package
describes every field ("format": "dbpool-stats", "version": 1).
"""

import json
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

from . import __version__  # set in __init__.py before it imports this module
from .registry import REGISTRY

FORMAT = "dbpool-stats"
FORMAT_VERSION = 1
DEFAULT_PATH = "/dbpool"


def snapshot():
    """The whole JSON document as a dict: this process's live instances, plus its
    siblings' in the shared-directory mode, and the final entries of siblings that exited."""
    if not REGISTRY.active:
        try:
            REGISTRY.activate()
        except Exception:
            pass
    now = time.time()
    shared = REGISTRY.shared
    instances = None
    if shared is not None:
        # What this process serves goes to its file first. The next scrape may reach a
        # sibling, which serves this process from that file: were the file older than this
        # answer, the exporter would see this process's counters fall.
        try:
            instances = shared.write(REGISTRY)
        except Exception:
            pass
    if instances is None:
        instances = REGISTRY.snapshots()
    exited = []
    try:
        if shared is not None:
            live, exited = shared.siblings(REGISTRY, now)
            instances.extend(live)
    except Exception:
        pass
    return {"format": FORMAT, "version": FORMAT_VERSION, "generated_at": now, "instances": instances, "exited": exited}


def render_json():
    """The JSON document as bytes (UTF-8), for an application's own route."""
    try:
        doc = snapshot()
    except Exception:
        doc = {"format": FORMAT, "version": FORMAT_VERSION, "generated_at": time.time(), "instances": [], "exited": []}
    return json.dumps(doc, separators=(",", ":")).encode("utf-8")


_HEADERS = (("Content-Type", "application/json"), ("Cache-Control", "no-store"))


def wsgi_app(environ, start_response):
    """WSGI application serving the document on every path it is mounted at."""
    method = environ.get("REQUEST_METHOD", "GET")
    if method not in ("GET", "HEAD"):
        start_response("405 Method Not Allowed", [("Allow", "GET, HEAD"), ("Content-Length", "0")])
        return [b""]
    body = render_json()
    start_response("200 OK", list(_HEADERS) + [("Content-Length", str(len(body)))])
    return [b"" if method == "HEAD" else body]


async def asgi_app(scope, receive, send):
    """ASGI application serving the document, e.g. app.mount("/dbpool", asgi_app)."""
    kind = scope.get("type")
    if kind == "lifespan":
        while True:
            msg = await receive()
            if msg.get("type") == "lifespan.startup":
                await send({"type": "lifespan.startup.complete"})
            elif msg.get("type") == "lifespan.shutdown":
                await send({"type": "lifespan.shutdown.complete"})
                return
    if kind != "http":
        return
    method = scope.get("method", "GET")
    if method not in ("GET", "HEAD"):
        await send(
            {
                "type": "http.response.start",
                "status": 405,
                "headers": [(b"allow", b"GET, HEAD"), (b"content-length", b"0")],
            }
        )
        await send({"type": "http.response.body", "body": b""})
        return
    body = render_json()
    headers = [(k.lower().encode(), v.encode()) for k, v in _HEADERS]
    headers.append((b"content-length", str(len(body)).encode()))
    await send({"type": "http.response.start", "status": 200, "headers": headers})
    await send({"type": "http.response.body", "body": b"" if method == "HEAD" else body})


class _Handler(BaseHTTPRequestHandler):
    server_version = "dbpool_stats/" + __version__

    def _serve(self, head):
        path = self.path.split("?", 1)[0]
        want = self.server.dbpool_path
        if path != want and path != want + "/":
            body = b"not found; the pool statistics are at " + want.encode() + b"\n"
            self.send_response(404)
            self.send_header("Content-Type", "text/plain; charset=utf-8")
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            if not head:
                self.wfile.write(body)
            return
        body = render_json()
        self.send_response(200)
        for k, v in _HEADERS:
            self.send_header(k, v)
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        if not head:
            self.wfile.write(body)

    def do_GET(self):
        self._serve(False)

    def do_HEAD(self):
        self._serve(True)

    def log_message(self, format, *args):
        pass


class _Server(ThreadingHTTPServer):
    daemon_threads = True
    allow_reuse_address = True


def start_http_server(port=9931, addr="127.0.0.1", path=DEFAULT_PATH):
    """Serve the document at http://addr:port/path from a daemon thread.

    Returns the server; server.server_port is the bound port (port=0 picks a free
    one), server.url the full URL, server.shutdown() stops it.
    """
    if not path.startswith("/"):
        path = "/" + path
    path = path.rstrip("/") or "/"
    srv = _Server((addr, port), _Handler)
    srv.dbpool_path = path
    host = srv.server_address[0]
    if ":" in host:
        host = "[%s]" % host
    srv.url = "http://%s:%d%s" % (host, srv.server_address[1], path)
    t = threading.Thread(target=srv.serve_forever, name="dbpool-stats-http", daemon=True)
    t.start()
    return srv
