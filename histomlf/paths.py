"""Where histomlf keeps derived files: `$HISTOMLF_CACHE`, else `./.histomlf-cache`.

Never beside the data, which may be read-only.
"""

from __future__ import annotations

import os
from pathlib import Path


def cache_root() -> Path:
    """The root of histomlf's cache (scans, packed patches, synthetic sets, work dirs)."""
    return Path(os.environ.get("HISTOMLF_CACHE") or Path.cwd() / ".histomlf-cache").resolve()
