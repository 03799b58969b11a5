"""What the web page sends with every answer, and how many uploads it scores at once.

- `SecurityHeaders`: ASGI middleware that puts the Content-Security-Policy and the other
  security headers on every response, error pages and `/health` included. The page has no
  script, no frame, nothing from another origin, and no inline style: its policy allows only
  its own stylesheet, its own and `data:` images (thumbnails, overlays and the map are inline
  PNGs) and forms posted back to itself. `/docs` (FastAPI's Swagger page) loads its script and
  stylesheet from a CDN and runs one inline script, which gets its own looser policy naming
  that CDN and the script's hash.
- `ScoringSlots`: at most `slots` scoring requests in flight; one more is refused at once
  (`Busy`, which the app answers 503 with `Retry-After`) instead of queueing up memory and
  CPU behind the others. Counted on the event loop (one thread), so a plain counter is exact.
  A slot is taken before the body is read (an upload is held in memory whole) and given back
  when the answer is built; a client that uploads slowly holds its slot meanwhile, which a
  buffering reverse proxy in front (nginx's default) avoids.
"""

from __future__ import annotations

import base64
import contextlib
import hashlib
import re
from collections.abc import AsyncIterator, Iterable
from typing import Any

DEFAULT_SCORING_SLOTS = 2
"""Scoring requests in flight: the model calls are serialised anyway (`Scorer`'s lock), so
more would only hold more uploads in memory on this 2-core machine."""
RETRY_AFTER_S = 5
DEFAULT_SLIDE_MB = 200
MAX_SLIDE_MB = 16 * 1024
"""The slide upload's cap, per file (`histomlf web --slide-max-mb`, up to 16 GB)."""
DEFAULT_SLIDE_SLOTS = 1
"""Slides at once: one slide already keeps both cores busy (two reading threads + the model)."""

PAGE_POLICY = (
    "default-src 'none'; img-src 'self' data:; style-src 'self'; form-action 'self'; "
    "base-uri 'none'; frame-ancestors 'none'"
)
DOCS_CDN = "https://cdn.jsdelivr.net"


def docs_policy(html: str) -> str:
    """The policy for FastAPI's Swagger page `html`: its CDN, and its inline scripts by hash."""
    hashes = " ".join(f"'sha256-{_sha256(body)}'" for body in _inline_scripts(html))
    return (
        f"default-src 'none'; script-src {DOCS_CDN} {hashes}; "
        f"style-src {DOCS_CDN} 'unsafe-inline'; img-src 'self' data: https://fastapi.tiangolo.com; "
        "connect-src 'self'; base-uri 'none'; form-action 'self'; frame-ancestors 'none'"
    )


def security_headers(policy: str) -> list[tuple[bytes, bytes]]:
    return [
        (b"content-security-policy", policy.encode()),
        (b"x-content-type-options", b"nosniff"),
        (b"x-frame-options", b"DENY"),
        (b"referrer-policy", b"no-referrer"),
    ]


class SecurityHeaders:
    """ASGI middleware: the security headers on every HTTP response (`policies` by path)."""

    def __init__(self, app: Any, policies: dict[str, str] | None = None) -> None:
        self.app = app
        self.default = security_headers(PAGE_POLICY)
        self.by_path = {path: security_headers(p) for path, p in (policies or {}).items()}

    async def __call__(self, scope: dict[str, Any], receive: Any, send: Any) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        extra = self.by_path.get(scope.get("path", ""), self.default)
        names = {name for name, _ in extra}

        async def with_headers(message: dict[str, Any]) -> None:
            if message["type"] == "http.response.start":
                kept = [(k, v) for k, v in message.get("headers", ()) if k.lower() not in names]
                message = {**message, "headers": kept + extra}
            await send(message)

        await self.app(scope, receive, with_headers)


class Busy(Exception):
    """Every scoring slot is taken; the app answers 503 with `Retry-After`."""

    def __init__(self, slots: int) -> None:
        super().__init__(
            f"the page is busy scoring {slots} upload{'s' if slots != 1 else ''} "
            f"(its limit at once): try again in {RETRY_AFTER_S} s"
        )
        self.retry_after = RETRY_AFTER_S


class ScoringSlots:
    """At most `slots` scoring requests at once; `take()` raises `Busy` when all are taken."""

    def __init__(self, slots: int = DEFAULT_SCORING_SLOTS) -> None:
        if slots < 1:
            raise ValueError(f"scoring slots must be >= 1, got {slots}")
        self.slots, self.busy = slots, 0

    @contextlib.asynccontextmanager
    async def take(self) -> AsyncIterator[None]:
        if self.busy >= self.slots:
            raise Busy(self.slots)
        self.busy += 1
        try:
            yield
        finally:
            self.busy -= 1


def _inline_scripts(html: str) -> Iterable[str]:
    return re.findall(r"<script>(.*?)</script>", html, flags=re.DOTALL)


def _sha256(text: str) -> str:
    return base64.b64encode(hashlib.sha256(text.encode()).digest()).decode()
