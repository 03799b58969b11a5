"""Shared test helpers for the data pipeline: a manifest of the sample built from file names
(the scanner is tested on its own) and one drained epoch."""

from __future__ import annotations

import re
from pathlib import Path

import numpy as np
import pandas as pd
from PIL import Image

NAME = re.compile(r"(\d+)_idx5_x(\d+)_y(\d+)_class([01])\.png$")


def sample_rows(root: Path) -> pd.DataFrame:
    records = []
    for path in sorted(root.rglob("*.png")):
        pid, x, y, label = NAME.search(path.name).groups()
        with Image.open(path) as image:
            width, height = image.size
        records.append(
            {
                "path": str(path),
                "patient_id": pid,
                "x": int(x),
                "y": int(y),
                "label": int(label),
                "width": width,
                "height": height,
            }
        )
    return pd.DataFrame(records)


def epoch(dataset) -> tuple[np.ndarray, np.ndarray]:
    """All (images, labels) of one pass over `dataset`, concatenated."""
    pairs = list(dataset.as_numpy_iterator())
    return np.concatenate([x for x, _ in pairs]), np.concatenate([y for _, y in pairs])
