"""Hand memory that parsing freed back to the operating system.

Reading a manifest of 277k rows allocates and frees hundreds of MB of short-lived strings and
buffers; glibc's heap and Arrow's memory pool keep such freed memory mapped, so the process
would carry it through a whole training run. `release_freed_memory` returns it: Arrow's pool
first, then glibc's heap (`malloc_trim`, a no-op elsewhere).
"""

from __future__ import annotations

import ctypes
import ctypes.util
import functools


@functools.cache
def _libc_malloc_trim():
    name = ctypes.util.find_library("c")
    if not name:
        return None
    try:
        return ctypes.CDLL(name).malloc_trim
    except (OSError, AttributeError):  # not glibc (musl, macOS)
        return None


def release_freed_memory() -> None:
    """Return freed heap and Arrow-pool memory to the OS; cheap (milliseconds)."""
    import pyarrow as pa

    pa.default_memory_pool().release_unused()
    trim = _libc_malloc_trim()
    if trim is not None:
        trim(0)
