"""A loopback HTTP server for source images (the machine has no internet).

Serves a dict of path -> bytes; a path can also be given a script of statuses to answer
before the body (e.g. [500, 500] then 200), and every request is counted per path.
"""

from __future__ import annotations

import threading
import time
from collections import Counter
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

CONTENT_TYPES = {
    ".jpg": "image/jpeg",
    ".jpeg": "image/jpeg",
    ".png": "image/png",
    ".gif": "image/gif",
    ".webp": "image/webp",
    ".bmp": "image/bmp",
    ".tif": "image/tiff",
    ".tiff": "image/tiff",
}
HOLD_LIMIT = 60.0  # seconds a held answer waits at most, so no thread outlives a test


@dataclass
class Route:
    body: bytes
    content_type: str = "application/octet-stream"
    # Statuses answered, one per request, before the body is served with 200.
    failures: list[int] = field(default_factory=list)
    # Seconds to wait before answering, like a slow origin.
    delay: float = 0.0
    # When set, answers wait until it is (see ImageServer.hold).
    gate: threading.Event | None = None


class SourceHandler(BaseHTTPRequestHandler):
    """HTTP/1.1 with keep-alive, answers sent without Nagle's delay: the headers and the body
    go out in two writes, and the second waited for the client's delayed ACK of the first
    (about 40 ms on Linux loopback) on every request after a connection's first."""

    protocol_version = "HTTP/1.1"
    disable_nagle_algorithm = True

    def log_message(self, format: str, *args: object) -> None:
        """Quiet."""


class QuietServer(ThreadingHTTPServer):
    daemon_threads = True

    def handle_error(self, request: object, client_address: object) -> None:
        """Clients that hang up mid-answer (a killed processor) are not worth a traceback."""


class ImageServer:
    def __init__(self, host: str = "127.0.0.1", port: int = 0) -> None:
        self.routes: dict[str, Route] = {}
        self.hits: Counter[str] = Counter()
        self._lock = threading.Lock()
        server = self

        class Handler(SourceHandler):
            def do_GET(self) -> None:
                path = self.path.split("?", 1)[0]
                with server._lock:
                    server.hits[path] += 1
                    route = server.routes.get(path)
                    status = route.failures.pop(0) if route and route.failures else None
                if route is not None and route.delay:
                    time.sleep(route.delay)
                if route is not None and route.gate is not None:
                    route.gate.wait(HOLD_LIMIT)
                if route is None:
                    self._send(404, b"not found", "text/plain")
                elif status is not None:
                    self._send(status, b"scripted failure", "text/plain")
                else:
                    self._send(200, route.body, route.content_type)

            def _send(self, status: int, body: bytes, content_type: str) -> None:
                self.send_response(status)
                self.send_header("Content-Type", content_type)
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                self.wfile.write(body)

        self._httpd = QuietServer((host, port), Handler)
        bound_host, bound_port = self._httpd.server_address[:2]
        self.host, self.port = str(bound_host), int(bound_port)
        self._thread = threading.Thread(target=self._httpd.serve_forever, daemon=True)

    def url(self, path: str) -> str:
        return f"http://{self.host}:{self.port}{path}"

    def add(
        self, path: str, body: bytes, content_type: str | None = None, delay: float = 0.0
    ) -> str:
        """Serves body at path (after delay seconds); returns its URL."""
        suffix = Path(path).suffix.lower()
        ctype = content_type or CONTENT_TYPES.get(suffix, "application/octet-stream")
        with self._lock:
            self.routes[path] = Route(body, ctype, delay=delay)
        return self.url(path)

    def hold(self, path: str) -> threading.Event:
        """Answers for path wait until the returned event is set (at most HOLD_LIMIT s)."""
        gate = threading.Event()
        with self._lock:
            self.routes[path].gate = gate
        return gate

    def fail_first(self, path: str, *statuses: int) -> None:
        with self._lock:
            self.routes[path].failures.extend(statuses)

    def heal(self, path: str) -> None:
        """Drops the failures still scripted for path: it answers 200 from now on."""
        with self._lock:
            self.routes[path].failures.clear()

    def add_directory(self, directory: Path, prefix: str = "/") -> None:
        for file in sorted(directory.iterdir()):
            if file.suffix.lower() in CONTENT_TYPES:
                self.add(prefix + file.name, file.read_bytes())

    def start(self) -> ImageServer:
        self._thread.start()
        return self

    def stop(self) -> None:
        self._httpd.shutdown()
        self._httpd.server_close()
        self._thread.join(timeout=5)

    def __enter__(self) -> ImageServer:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()
