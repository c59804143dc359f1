"""Request body limits enforced while the body arrives, never after it was buffered.

``BodyLimitMiddleware`` (plain ASGI, like ``RequestIdMiddleware``) wraps ``receive``: the first
read of a body whose ``Content-Length`` exceeds the path's limit raises ``RequestTooLarge``
without reading a byte, and a body streamed without (or beyond) its declared length is
counted chunk by chunk. The error surfaces in the handler that reads the body, so the app's
one error handler renders it in the protocol's shape (IMM JSON, MNS XML, Model Hub JSON)
with HTTP 413. Handlers run their body-free authentication checks before reading, so an
unsigned request is refused before any of its body is read.
"""

from __future__ import annotations

from collections.abc import Callable

from starlette.types import ASGIApp, Message, Receive, Scope, Send

from pipeline.errors import RequestTooLarge

LimitFor = Callable[[str], int | None]  # path → byte limit (None: the route has its own)


class BodyLimitMiddleware:
    def __init__(self, app: ASGIApp, limit_for: LimitFor) -> None:
        self.app = app
        self.limit_for = limit_for

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        limit = self.limit_for(scope["path"]) if scope["type"] == "http" else None
        if limit is None:
            await self.app(scope, receive, send)
            return
        declared = _content_length(scope)
        received = 0

        async def limited() -> Message:
            nonlocal received
            if declared is not None and declared > limit:
                raise _too_large(limit)
            message = await receive()
            if message["type"] == "http.request":
                received += len(message.get("body", b""))
                if received > limit:
                    raise _too_large(limit)
            return message

        await self.app(scope, limited, send)


def _content_length(scope: Scope) -> int | None:
    for name, value in scope["headers"]:
        if name == b"content-length":
            try:
                return int(value)
            except ValueError:
                return None  # uvicorn refuses a malformed length before we see it
    return None


def _too_large(limit: int) -> RequestTooLarge:
    return RequestTooLarge(f"The request body exceeds this endpoint's limit of {limit} bytes.")
