"""A bound on the request head (request line + headers) for uvicorn's httptools parser.

uvicorn bounds h11's buffer (``h11_max_incomplete_event_size``) but httptools buffers a head
of any size: an 8 MiB header was accepted. This protocol counts the bytes fed while a head is
incomplete and answers ``431`` (and closes) once they exceed the limit, so a client can make
the server hold at most the limit plus one read chunk.
"""

from __future__ import annotations

from typing import Any

from uvicorn.protocols.http.httptools_impl import HttpToolsProtocol

REFUSAL = b"Request header fields too large."


class BoundedHttpToolsProtocol(HttpToolsProtocol):
    max_head_bytes = 64 << 10  # overridden per server by ``bounded_httptools``

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self._head_bytes = 0
        self._in_head = True

    def on_message_begin(self) -> None:
        super().on_message_begin()
        self._in_head, self._head_bytes = True, 0

    def on_headers_complete(self) -> None:
        self._in_head = False
        super().on_headers_complete()

    def data_received(self, data: bytes) -> None:
        super().data_received(data)
        if not self._in_head or self.transport.is_closing():
            return
        self._head_bytes += len(data)
        if self._head_bytes > self.max_head_bytes:
            self.transport.write(
                b"HTTP/1.1 431 Request Header Fields Too Large\r\n"
                b"content-type: text/plain; charset=utf-8\r\n"
                b"content-length: " + str(len(REFUSAL)).encode() + b"\r\n"
                b"connection: close\r\n\r\n" + REFUSAL
            )
            self.transport.close()


def bounded_httptools(max_head_bytes: int) -> type[BoundedHttpToolsProtocol]:
    """The protocol class for one server's limit (uvicorn instantiates it per connection)."""
    return type("BoundedHttpTools", (BoundedHttpToolsProtocol,), {"max_head_bytes": max_head_bytes})
