"""Small HTTP helpers shared by the Runtime API server and the gateway (standard library only).

Both servers speak HTTP/1.1 with keep-alive, because awslambdaric and benchmark clients reuse
connections; that only works if every answer carries an exact Content-Length and every request
body is read to its end, which is what these helpers guarantee.
"""

from __future__ import annotations

import sys
from collections.abc import Iterable
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

# A body larger than this is not even read: the connection is closed after the answer.
DRAIN_LIMIT_BYTES = 64 * 1024 * 1024
_CHUNK = 1024 * 1024


class BodyTooLarge(Exception):
    """Raised by `read_body` when a request body is over the caller's limit (body was drained)."""

    def __init__(self, size: int) -> None:
        super().__init__(f"request body of {size} bytes is over the limit")
        self.size = size


class QuietServer(ThreadingHTTPServer):
    """A threaded server whose worker threads never keep the interpreter alive.

    A peer that went away (a killed runtime, an impatient client) is normal here, not an error
    worth a traceback.
    """

    daemon_threads = True
    allow_reuse_address = True
    block_on_close = False

    def handle_error(self, request: Any, client_address: Any) -> None:
        if isinstance(sys.exc_info()[1], (ConnectionError, TimeoutError)):
            return
        super().handle_error(request, client_address)


class FastHandler(BaseHTTPRequestHandler):
    """HTTP/1.1 keep-alive without Nagle: headers and body go out as separate writes, and with
    Nagle on, a delayed ACK would add ~40 ms to every answer."""

    protocol_version = "HTTP/1.1"
    disable_nagle_algorithm = True


def read_body(handler: BaseHTTPRequestHandler, limit: int) -> bytes:
    """Read the request body (Content-Length or chunked); raise `BodyTooLarge` past `limit`.

    An oversize body is drained (up to `DRAIN_LIMIT_BYTES`) so that the client, still sending,
    sees our 413 instead of a reset connection.
    """
    if "chunked" in handler.headers.get("Transfer-Encoding", "").lower():
        return _read_chunked(handler, limit)
    length = int(handler.headers.get("Content-Length") or 0)
    if length < 0:
        raise ValueError("negative Content-Length")
    if length > limit:
        _drain(handler, length)
        raise BodyTooLarge(length)
    return handler.rfile.read(length) if length else b""


def _drain(handler: BaseHTTPRequestHandler, length: int) -> None:
    if length > DRAIN_LIMIT_BYTES:
        handler.close_connection = True
        return
    remaining = length
    while remaining > 0:
        got = handler.rfile.read(min(_CHUNK, remaining))
        if not got:
            break
        remaining -= len(got)


def _read_chunked(handler: BaseHTTPRequestHandler, limit: int) -> bytes:
    parts: list[bytes] = []
    total = 0
    too_large = False
    while True:
        size_line = handler.rfile.readline(1024).split(b";", 1)[0].strip()
        size = int(size_line or b"0", 16)
        if size == 0:
            while handler.rfile.readline(1024) not in (b"\r\n", b"\n", b""):
                pass  # trailers
            break
        chunk = handler.rfile.read(size)
        handler.rfile.readline(8)  # CRLF after the chunk
        total += len(chunk)
        if total > DRAIN_LIMIT_BYTES:
            handler.close_connection = True
            raise BodyTooLarge(total)
        if total > limit:
            too_large = True
            parts.clear()
        elif not too_large:
            parts.append(chunk)
    if too_large:
        raise BodyTooLarge(total)
    return b"".join(parts)


def send(
    handler: BaseHTTPRequestHandler,
    status: int,
    body: bytes = b"",
    headers: Iterable[tuple[str, str]] = (),
    *,
    content_type: str | None = None,
) -> None:
    """Write a complete response with an exact Content-Length (HEAD gets headers only)."""
    handler.send_response(status)
    if content_type is not None:
        handler.send_header("Content-Type", content_type)
    for name, value in headers:
        handler.send_header(name, value)
    handler.send_header("Content-Length", str(len(body)))
    if handler.close_connection:
        handler.send_header("Connection", "close")
    handler.end_headers()
    if body and handler.command != "HEAD":
        handler.wfile.write(body)
