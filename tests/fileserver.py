"""A real HTTP file server on 127.0.0.1 for tests: serves bytes by path, honours Range requests, and can be
told to break a transfer off (once) or to ignore Range, the way real servers misbehave."""

from __future__ import annotations

import re
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer


class FileServer:
    """Serves `files` (URL path -> bytes) until closed; `requests` logs (path, Range header, status).

    Attributes:
        break_after: path -> byte count; the next response for that path sends only that many bytes of the
            body it announced and then closes the connection (used once, then forgotten).
        ignore_range: paths served whole (200) even when a Range is asked for.
    """

    def __init__(self, files: dict[str, bytes]):
        self.files = dict(files)
        self.break_after: dict[str, int] = {}
        self.ignore_range: set[str] = set()
        self.requests: list[tuple[str, str | None, int]] = []
        self._server = ThreadingHTTPServer(("127.0.0.1", 0), self._handler())
        self._thread = threading.Thread(target=self._server.serve_forever, daemon=True)
        self._thread.start()

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self._server.server_address[1]}"

    def close(self) -> None:
        self._server.shutdown()
        self._server.server_close()

    def __enter__(self) -> "FileServer":
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    def _handler(self):
        server = self

        class Handler(BaseHTTPRequestHandler):
            def log_message(self, *args) -> None:  # keep test output clean
                pass

            def do_GET(self) -> None:
                path = self.path.split("?")[0]
                wanted = self.headers.get("Range")
                body = server.files.get(path)
                if body is None:
                    server.requests.append((path, wanted, 404))
                    self.send_error(404, "Not Found")
                    return
                start = 0
                match = re.fullmatch(r"bytes=(\d+)-", wanted or "")
                if match and path not in server.ignore_range:
                    start = int(match.group(1))
                    if start >= len(body):
                        server.requests.append((path, wanted, 416))
                        self.send_response(416)
                        self.send_header("Content-Range", f"bytes */{len(body)}")
                        self.end_headers()
                        return
                status = 206 if start else 200
                server.requests.append((path, wanted, status))
                self.send_response(status)
                self.send_header("Content-Length", str(len(body) - start))
                self.send_header("Accept-Ranges", "bytes")
                if start:
                    self.send_header("Content-Range", f"bytes {start}-{len(body) - 1}/{len(body)}")
                self.end_headers()
                cut = server.break_after.pop(path, None)
                self.wfile.write(body[start:] if cut is None else body[start : start + cut])
                if cut is not None:
                    self.wfile.flush()
                    self.close_connection = True

        return Handler
