"""A local HTTP server for shard tests: 127.0.0.1 only, Range requests, connections cut on a plan,
and a request loop that stops by itself (after ``max_requests`` or ``deadline_s``) if a test never
closes it."""
from __future__ import annotations

import http.server
import re
import threading
import time
from pathlib import Path


class ShardServer:
    """Serves the files of ``root``. ``cuts[name]`` lists, per request for that file, the file byte
    at which to close the connection (None: send it all); later requests get everything.
    ``requests`` logs (name, range start, bytes sent) per request (range start -1: not found)."""

    def __init__(self, root: Path, cuts: dict[str, list[int | None]] | None = None, max_requests: int = 500,
                 deadline_s: float = 80.0) -> None:
        self.root, self.cuts = root, {name: list(plan) for name, plan in (cuts or {}).items()}
        self.requests: list[tuple[str, int, int]] = []
        self._lock = threading.Lock()
        self._stop = threading.Event()
        self._httpd = http.server.ThreadingHTTPServer(("127.0.0.1", 0), self._handler_class())
        self._httpd.timeout = 0.1  # handle_request returns this often to check the stop conditions
        self.url = f"http://127.0.0.1:{self._httpd.server_address[1]}"
        self._thread = threading.Thread(target=self._serve, args=(max_requests, deadline_s), daemon=True)
        self._thread.start()

    def _serve(self, max_requests: int, deadline_s: float) -> None:
        deadline = time.monotonic() + deadline_s
        while not self._stop.is_set() and len(self.requests) < max_requests and time.monotonic() < deadline:
            self._httpd.handle_request()
        self._httpd.server_close()

    def close(self) -> None:
        self._stop.set()
        self._thread.join(timeout=5)

    def _next_cut(self, name: str) -> int | None:
        with self._lock:
            plan = self.cuts.get(name)
            return plan.pop(0) if plan else None

    def _handler_class(self) -> type:
        server = self

        class Handler(http.server.BaseHTTPRequestHandler):
            def do_GET(self) -> None:  # noqa: N802 - http.server's naming
                name = self.path.lstrip("/")
                path = server.root / name
                if "/" in name or not path.is_file():
                    with server._lock:
                        server.requests.append((name, -1, 0))
                    self.send_error(404)
                    return
                data = path.read_bytes()
                match = re.fullmatch(r"bytes=(\d+)-", self.headers.get("Range", ""))
                start = int(match.group(1)) if match else 0
                body = data[start:]
                self.send_response(206 if match else 200)
                if match:
                    self.send_header("Content-Range", f"bytes {start}-{len(data) - 1}/{len(data)}")
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                cut = server._next_cut(name)
                sent = body if cut is None else data[start:max(start, cut)]
                self.wfile.write(sent)
                with server._lock:
                    server.requests.append((name, start, len(sent)))
                self.close_connection = True  # a cut response ends here: the client sees a short body

            def log_message(self, *args: object) -> None:  # keep test output quiet
                pass

        return Handler
