"""A real HTTP server for tests, threaded, on 127.0.0.1 (a free port), with the behaviours a
URL input meets: ETag and 304, redirects, a 404, a 503 that clears, a slow body, a body cut short, a gzipped
body, Basic auth.

``HTTPFiles`` serves ``files`` (path -> bytes) and counts, per path, the requests and the
body bytes sent, so a test can assert that nothing was fetched again.
"""

from __future__ import annotations

import base64
import gzip
import hashlib
import threading
import time
from collections import Counter
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import pytest


class HTTPFiles:
    def __init__(self) -> None:
        self.files: dict[str, bytes] = {}
        self.requests: Counter[str] = Counter()
        self.sent: Counter[str] = Counter()  # body bytes sent per path
        self.fail_first: dict[str, int] = {}  # path -> how many 503s before it serves
        self.slow: dict[str, float] = {}  # path -> seconds between 64 KiB chunks
        self.redirects: dict[str, str] = {}  # path -> location
        self.auth: dict[str, str] = {}  # path -> "user:password" required
        self.started: Counter[str] = Counter()  # bodies begun per path
        self.cut: dict[str, int] = {}  # path -> how many bodies end half-way (then closed)
        self.gzipped: set[str] = set()  # paths served with Content-Encoding: gzip
        self.lock = threading.Lock()
        self.server = ThreadingHTTPServer(("127.0.0.1", 0), self._handler())
        self.server.daemon_threads = True
        self.thread = threading.Thread(target=self.server.serve_forever, daemon=True)

    @property
    def base(self) -> str:
        return f"http://127.0.0.1:{self.server.server_address[1]}"

    def url(self, path: str) -> str:
        return self.base + path

    def _handler(self) -> type[BaseHTTPRequestHandler]:
        files = self

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def log_message(self, *args: object) -> None:
                pass

            def do_HEAD(self) -> None:
                self.serve(body=False)

            def do_GET(self) -> None:
                self.serve(body=True)

            def serve(self, body: bool) -> None:
                path = self.path.split("?", 1)[0]
                with files.lock:
                    files.requests[path] += 1
                    left = files.fail_first.get(path, 0)
                    if left:
                        files.fail_first[path] = left - 1
                if path in files.redirects:
                    return self.empty(302, Location=files.redirects[path])
                if left:
                    return self.empty(503)
                need = files.auth.get(path)
                if need is not None:
                    given = self.headers.get("Authorization", "")
                    if given != "Basic " + base64.b64encode(need.encode()).decode():
                        return self.empty(401)
                data = files.files.get(path)
                if data is None:
                    return self.empty(404)
                etag = '"' + hashlib.sha256(data).hexdigest()[:16] + '"'
                if self.headers.get("If-None-Match") == etag:
                    return self.empty(304, ETag=etag)
                self.send_response(200)
                if path in files.gzipped:
                    data = gzip.compress(data)
                    self.send_header("Content-Encoding", "gzip")
                self.send_header("Content-Length", str(len(data)))
                self.send_header("ETag", etag)
                self.end_headers()
                if not body:
                    return
                with files.lock:
                    files.started[path] += 1
                    cut = files.cut.get(path, 0)
                    if cut:
                        files.cut[path] = cut - 1
                if cut:  # half the body promised, then the connection closed
                    self.wfile.write(data[: len(data) // 2])
                    self.close_connection = True
                    return
                delay = files.slow.get(path, 0.0)
                step = 64 * 1024
                for i in range(0, len(data), step):
                    try:
                        self.wfile.write(data[i : i + step])
                    except (BrokenPipeError, ConnectionResetError):
                        return
                    with files.lock:
                        files.sent[path] += len(data[i : i + step])
                    if delay:
                        time.sleep(delay)

            def empty(self, code: int, **headers: str) -> None:
                self.send_response(code)
                for k, v in headers.items():
                    self.send_header(k, v)
                self.send_header("Content-Length", "0")
                self.end_headers()

        return Handler

    def start(self) -> None:
        self.thread.start()

    def stop(self) -> None:
        self.server.shutdown()
        self.server.server_close()


@pytest.fixture
def http_files() -> Iterator[HTTPFiles]:
    server = HTTPFiles()
    server.start()
    yield server
    server.stop()
