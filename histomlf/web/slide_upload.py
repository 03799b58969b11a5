"""One slide file from a multipart upload, streamed to a private file as it arrives.

OpenSlide needs a path, and a slide is hundreds of MB to several GB, so the body is never held
in memory (the patch routes' `await item.read()` would): `python-multipart`'s push parser sees
each network chunk once and writes the file field's bytes straight to `slide-dir/<name>`
(the folder 0700, the file 0600, created with O_EXCL). The file's bytes are counted as they
arrive and the upload is refused with 413 the moment they pass `max_bytes`, without reading
the rest. Form fields other than the file are ignored (at most 64 KB of them).
"""

from __future__ import annotations

import os
import re
from collections.abc import AsyncIterator
from dataclasses import dataclass
from pathlib import Path

from python_multipart.multipart import MultipartParser, parse_options_header

from histomlf.slides.reader import SLIDE_SUFFIXES
from histomlf.web.limits import MB
from histomlf.web.uploads import UploadError

SLIDE_FIELD = "file"
OTHER_FIELDS_BYTES = 64 * 1024
_UNSAFE = re.compile(r"[^A-Za-z0-9._-]+")


class SlideTooLarge(UploadError):
    def __init__(self, limit: int) -> None:
        super().__init__(
            f"the slide is too large: more than {limit:,} bytes ({limit // MB:,} MB) allowed "
            "on this page; `histomlf web --slide-max-mb` raises the cap, or score it with "
            "`histomlf slide predict`",
            status=413,
        )


@dataclass(frozen=True)
class SavedSlide:
    path: Path
    name: str
    """The uploaded file name, as sent (shown on the page, never used as a path)."""
    size: int


def safe_name(name: str) -> str:
    """A file name for the private copy: the upload's name reduced to `[A-Za-z0-9._-]`, at most
    80 characters, keeping a known slide suffix (OpenSlide picks some formats by it)."""
    stem, suffix = os.path.splitext(os.path.basename(name.replace("\\", "/")))
    suffix = suffix.lower() if suffix.lower() in SLIDE_SUFFIXES else ""
    stem = _UNSAFE.sub("_", stem).strip("._")[: 80 - len(suffix)] or "slide"
    return stem + suffix


async def save_slide(
    content_type: str, body: AsyncIterator[bytes], folder: Path, max_bytes: int
) -> SavedSlide:
    """Stream the multipart `body` into `folder` (which must exist, private); the one file of
    the field `file`. Raises `SlideTooLarge` past `max_bytes`, `UploadError` for a body
    without that file."""
    kind, options = parse_options_header(content_type)
    boundary = options.get(b"boundary")
    if kind != b"multipart/form-data" or not boundary:
        raise UploadError(
            f"send the slide as multipart/form-data in the field {SLIDE_FIELD!r} "
            "(the form on the slide page does)"
        )
    state = _Parts(folder, max_bytes)
    parser = MultipartParser(boundary, state.callbacks())
    try:
        async for chunk in body:
            parser.write(chunk)
            state.raise_pending()
        parser.finalize()
        state.raise_pending()
    except UploadError:
        state.discard()
        raise
    except Exception as error:  # a malformed body: python-multipart's MultipartParseError
        state.discard()
        if type(error).__module__.startswith("python_multipart"):
            raise UploadError(f"unreadable upload: {error}") from None
        raise
    finally:
        state.close()
    if state.saved is None:
        raise UploadError(f"no file in the field {SLIDE_FIELD!r}: choose a slide file")
    return state.saved


class _Parts:
    """The parser's callbacks: headers of each part, the file part's bytes to disk."""

    def __init__(self, folder: Path, max_bytes: int) -> None:
        self.folder, self.max_bytes = folder, max_bytes
        self.field, self.value = b"", b""
        self.headers: dict[bytes, bytes] = {}
        self.file = None
        self.path: Path | None = None
        self.name = ""
        self.size = self.other = 0
        self.saved: SavedSlide | None = None
        self.error: UploadError | None = None

    def callbacks(self) -> dict:
        return {
            "on_part_begin": self._begin,
            "on_header_field": lambda data, start, end: self._grow("field", data[start:end]),
            "on_header_value": lambda data, start, end: self._grow("value", data[start:end]),
            "on_header_end": self._header_end,
            "on_headers_finished": self._headers_finished,
            "on_part_data": self._data,
            "on_part_end": self._end,
        }

    def _grow(self, which: str, data: bytes) -> None:
        setattr(self, which, getattr(self, which) + data)
        self._count_other(len(data))

    def _count_other(self, n: int) -> None:
        self.other += n
        if self.other > OTHER_FIELDS_BYTES and self.error is None:
            self.error = UploadError("the form's other fields are too large: send only the slide",
                                     status=413)

    def _begin(self) -> None:
        self.headers, self.field, self.value = {}, b"", b""

    def _header_end(self) -> None:
        self.headers[self.field.lower()] = self.value
        self.field, self.value = b"", b""

    def _headers_finished(self) -> None:
        _, options = parse_options_header(self.headers.get(b"content-disposition", b""))
        field = options.get(b"name", b"").decode("utf-8", "replace")
        filename = options.get(b"filename")
        if field != SLIDE_FIELD or filename is None:
            return
        if self.path is not None:
            self.error = self.error or UploadError("send one slide file, not several")
            return
        self.name = filename.decode("utf-8", "replace") or "(unnamed file)"
        self.path = self.folder / safe_name(self.name)
        fd = os.open(self.path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
        self.file = os.fdopen(fd, "wb")

    def _data(self, data: bytes, start: int, end: int) -> None:
        if self.file is None:
            self._count_other(end - start)
            return
        self.size += end - start
        if self.size > self.max_bytes:
            if self.error is None:
                self.error = SlideTooLarge(self.max_bytes)
            return
        self.file.write(data[start:end])

    def _end(self) -> None:
        if self.file is not None:
            self.file.close()
            self.file = None
            if self.size == 0:
                self.error = self.error or UploadError(
                    f"no file in the field {SLIDE_FIELD!r}: choose a slide file"
                )
            else:
                self.saved = SavedSlide(self.path, self.name, self.size)

    def raise_pending(self) -> None:
        if self.error is not None:
            raise self.error

    def close(self) -> None:
        if self.file is not None:
            self.file.close()
            self.file = None

    def discard(self) -> None:
        self.close()
        if self.path is not None:
            self.path.unlink(missing_ok=True)
        self.saved = None
