"""Scoring a logged histomlf model (any model URI) on manifest rows through its pyfunc.

Going through the pyfunc means evaluation, batch prediction and the registry gate see the
model exactly as `mlflow models serve` does, decision threshold included.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import mlflow
import numpy as np
import pandas as pd
from tqdm.auto import tqdm

from histomlf.schema import Artifact


def load_model(model_uri: str):
    return mlflow.pyfunc.load_model(model_uri)


def predict_rows(
    model: Any,
    rows: pd.DataFrame,
    *,
    packed: Any = None,
    batch_size: int = 256,
    progress: bool = False,
) -> pd.DataFrame:
    """`probability` and `label` per row, in row order, streamed through the eval pipeline."""
    from histomlf.data.pipeline import make_dataset
    from histomlf.tracking.pyfunc import predict_patches

    dataset = make_dataset(rows, batch_size=batch_size, training=False, packed=packed)
    frames = []
    with tqdm(total=len(rows), unit="patch", disable=not progress, desc="predict") as bar:
        for images, _ in dataset:
            frames.append(predict_patches(model, np.asarray(images)))
            bar.update(len(frames[-1]))
    out = (
        pd.concat(frames, ignore_index=True)
        if frames
        else pd.DataFrame(columns=["probability", "label"])
    )
    if len(out) != len(rows):
        raise RuntimeError(f"got {len(out)} predictions for {len(rows)} rows")
    return out


def keras_model_of(model: Any) -> Any:
    """The Keras model inside a loaded histomlf pyfunc (for Grad-CAM)."""
    return model.unwrap_python_model().keras_model


def model_threshold(model: Any) -> float:
    """The decision threshold a loaded histomlf pyfunc applies (`label = probability >= it`)."""
    return float(model.unwrap_python_model().threshold)


def request_limits(model: Any) -> dict[str, int]:
    """The request limits a loaded histomlf pyfunc enforces (`max_images`, `max_bytes`,
    `max_pixels`), so another front end (the web page) applies the same ones."""
    python_model = model.unwrap_python_model()
    return {key: int(getattr(python_model, key)) for key in ("max_images", "max_bytes",
                                                            "max_pixels")}


def source_run_split(model_uri: str, target_dir: Path) -> Path | None:
    """The patient split file logged by the run that produced `model_uri`, if any."""
    try:
        run_id = mlflow.models.get_model_info(model_uri).run_id
        if not run_id:
            return None
        return Path(
            mlflow.artifacts.download_artifacts(
                run_id=run_id, artifact_path=Artifact.SPLIT, dst_path=str(target_dir)
            )
        )
    except Exception:  # noqa: BLE001 - a model without a logged split is evaluated on given rows
        return None


def logged_model_metadata(model_uri: str) -> dict[str, str]:
    """The `metadata` a model was logged with (backbone, digests, scale, `final`), read from
    its MLmodel file without loading the model; empty when it has none."""
    metadata = mlflow.models.get_model_info(model_uri).metadata or {}
    return {str(key): str(value) for key, value in metadata.items()}
