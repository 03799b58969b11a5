"""The web page's documented caps, and the request-size guard that enforces the byte cap.

The caps sit above the benchmark's 1,000-patch patient zip (about 6 MB) with room to spare: a
patient folder of the Kaggle set holds at most a few thousand patches. Scoring is chunked below
the served model's own `max_images` (1,024 by default), so one upload of 5,000 files is five
pyfunc calls, each within the model's limit.

`BodyLimit` refuses a request whose `Content-Length` exceeds the cap before reading it, and
counts bytes while the body streams in (a chunked request has no length to trust): past the cap
it raises `RequestTooLarge` from inside the form parser, which the app turns into a 413 page.
(Starlette >= 1.10 ships a similar `RequestBodyLimitMiddleware`; this one runs on the older
Starlette that MLflow may bring, and its message states the cap.)
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import Any

from starlette.exceptions import HTTPException

MB = 1024 * 1024


@dataclass(frozen=True)
class Limits:
    """What one request may hold."""

    request_bytes: int = 100 * MB
    """The whole HTTP body (the files plus multipart framing)."""
    files: int = 5_000
    """Files in one multipart upload."""
    zip_members: int = 5_000
    """Entries in one patient zip (folders included)."""
    zip_bytes: int = 100 * MB
    """Total uncompressed size of a patient zip, from its directory, before extraction."""
    zip_ratio: float = 100.0
    """Largest uncompressed/compressed ratio of one zip member (PNGs barely compress)."""
    slide_cells: int = 1_000
    """Largest span of a patient's patch positions, in 50-px cells per side (50,000 px)."""
    chunk: int = 512
    """Patches per pyfunc call (also capped by the model's own `max_images`)."""
    overlays: int = 100
    """Grad-CAM overlays drawn per page (every file is scored; the rest show no overlay)."""


class RequestTooLarge(HTTPException):
    """The request body is over `Limits.request_bytes`; the app answers 413."""

    def __init__(self, limit: int, seen: int | None = None) -> None:
        size = f"{seen:,} bytes" if seen is not None else "more"
        cap = f"{limit:,} bytes allowed" + (f" ({limit // MB} MB)" if limit >= MB else "")
        super().__init__(
            413, f"the upload is too large: {size} > {cap}; send fewer or smaller files"
        )


Reply = Callable[[dict[str, Any], HTTPException], Awaitable[Callable[..., Awaitable[None]]]]


class BodyLimit:
    """ASGI middleware: at most `limit` body bytes per HTTP request (413 otherwise).

    `reply(scope, error)` builds the response sent when the declared `Content-Length` is over
    the cap (no body byte is read then). `by_path` gives routes of their own cap (the slide
    upload's), exact paths only.
    """

    def __init__(self, app: Any, limit: int, reply: Reply,
                 by_path: dict[str, int] | None = None) -> None:
        self.app, self.limit, self.reply = app, limit, reply
        self.by_path = dict(by_path or {})

    async def __call__(self, scope: dict[str, Any], receive: Any, send: Any) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        limit = self.by_path.get(scope.get("path", ""), self.limit)
        declared = _content_length(scope)
        if declared is not None and declared > limit:
            response = await self.reply(scope, RequestTooLarge(limit, declared))
            await response(scope, receive, send)
            return
        seen = 0

        async def counted() -> dict[str, Any]:
            nonlocal seen
            message = await receive()
            if message["type"] == "http.request":
                seen += len(message.get("body", b""))
                if seen > limit:
                    raise RequestTooLarge(limit)
            return message

        await self.app(scope, counted, send)


def _content_length(scope: dict[str, Any]) -> int | None:
    for key, value in scope.get("headers", ()):
        if key == b"content-length":
            try:
                return int(value)
            except ValueError:
                return None
    return None
