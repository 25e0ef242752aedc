"""Limits on a request's head (request line and headers) for uvicorn's httptools protocol.

httptools has no limit on the size of a header, nor uvicorn a timeout for headers that
arrive slowly: an unauthenticated client could make the server parse a 64 MiB header (seconds
of CPU while every other client waits) or hold connections open with a byte a minute. This
subclass counts the bytes of each request's head as they arrive and refuses more than
``MAX_HEAD_BYTES`` with 431, and closes a connection whose head is not complete
``HEAD_TIMEOUT_S`` after its first byte with 408. Bodies are not counted here (the API caps
those itself), and nothing is added to a request once its head is complete.
"""

from __future__ import annotations

import asyncio
from typing import Any

from uvicorn.protocols.http.httptools_impl import HttpToolsProtocol

MAX_HEAD_BYTES = 32 * 1024  # request line + headers; browsers send a few KiB at most
HEAD_TIMEOUT_S = 10.0


def _answer(status: bytes, message: bytes) -> bytes:
    return (
        b"HTTP/1.1 " + status + b"\r\ncontent-type: application/json\r\n"
        b"content-length: "
        + str(len(message)).encode()
        + b"\r\nconnection: close\r\n\r\n"
        + message
    )


TOO_LARGE = _answer(
    b"431 Request Header Fields Too Large",
    b'{"error": {"type": "headers_too_large", "message": "the request line and headers may '
    b'have at most 32768 bytes"}}',
)
TOO_SLOW = _answer(
    b"408 Request Timeout",
    b'{"error": {"type": "headers_timeout", "message": "the request headers took too long"}}',
)


class GuardedHttpToolsProtocol(HttpToolsProtocol):
    """uvicorn's httptools protocol with a size limit and a timeout on request heads."""

    max_head_bytes = MAX_HEAD_BYTES
    head_timeout_s = HEAD_TIMEOUT_S

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self._in_head = True  # until this request's headers are complete
        self._head_bytes = 0
        self._head_timer: asyncio.TimerHandle | None = None

    def data_received(self, data: bytes) -> None:
        if not self._in_head:
            super().data_received(data)
            return
        self._head_bytes += len(data)
        if self._head_timer is None:
            self._head_timer = self.loop.call_later(self.head_timeout_s, self._head_too_slow)
        super().data_received(data)
        # Checked after parsing: a chunk that completes the head may carry body bytes too.
        if self._in_head and self._head_bytes > self.max_head_bytes:
            self._refuse(TOO_LARGE)

    def on_headers_complete(self) -> None:
        self._in_head = False
        self._stop_timer()
        super().on_headers_complete()

    def on_message_complete(self) -> None:
        super().on_message_complete()
        self._in_head, self._head_bytes = True, 0  # the next request on this connection

    def connection_lost(self, exc: Exception | None) -> None:
        self._stop_timer()
        super().connection_lost(exc)

    def _stop_timer(self) -> None:
        if self._head_timer is not None:
            self._head_timer.cancel()
            self._head_timer = None

    def _head_too_slow(self) -> None:
        self._head_timer = None
        if self._in_head and not self.transport.is_closing():
            self._refuse(TOO_SLOW)

    def _refuse(self, answer: bytes) -> None:
        self._stop_timer()
        self._in_head = False  # nothing more of this connection is parsed
        if not self.transport.is_closing():
            self.transport.write(answer)
            self.transport.close()
