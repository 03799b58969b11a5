"""The served model: an MLflow pyfunc that takes base64 PNG/JPEG patches and returns IDC scores.

`mlflow models serve` and `mlflow.pyfunc.load_model` both go through `IdcPatchClassifier`:
request rows are validated and padded by `histomlf.serving` (the same `pad_to_patch` as
training), the saved `.keras` model is called through `histomlf.models.inference`'s compiled
graphs over fixed padded batch sizes (eager calls and `model.predict` are slow on small batches,
mlflow issue 5259; batch 1 is traced when the model loads, the other sizes on first use), and the
decision threshold chosen at training time turns each probability into a label. Bad input
becomes an `MlflowException(INVALID_PARAMETER_VALUE)`, the only kind whose message the scoring
server passes on to the client (as an HTTP 400).
"""

from __future__ import annotations

import importlib
import importlib.metadata
import math
import os
import tempfile
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import mlflow
import numpy as np
import pandas as pd
from mlflow.exceptions import MlflowException
from mlflow.models import ModelSignature
from mlflow.models.model import ModelInfo
from mlflow.protos.databricks_pb2 import INVALID_PARAMETER_VALUE
from mlflow.types import ColSpec, Schema

from histomlf.serving.inputs import (
    DEFAULT_MAX_BYTES,
    DEFAULT_MAX_IMAGES,
    DEFAULT_MAX_PIXELS,
    InvalidPatchInput,
    encode_png_base64,
    images_from_arrays,
    images_from_base64,
)

IMAGE_COLUMN = "image"
MODEL_ARTIFACT = "keras_model"
# Set on Spark executors (`histomlf.spark.session.executor_env`): keep each loaded Keras model and
# its traced predictor for the life of the Python worker. In `local[N]` mode MLflow's
# `spark_udf` calls `mlflow.pyfunc.load_model` in every task (its `SparkModelCache` serves only
# cluster mode), so without this every task re-loads the model and re-traces its graphs.
PROCESS_CACHE_ENV = "HISTOMLF_PYFUNC_PROCESS_CACHE"
_PROCESS_CACHE: dict[tuple[str, int, int], tuple[Any, Any]] = {}
PACKAGE_DIR = Path(__file__).resolve().parents[1]
DEFAULT_LIMITS = {
    "max_images": DEFAULT_MAX_IMAGES,
    "max_bytes": DEFAULT_MAX_BYTES,
    "max_pixels": DEFAULT_MAX_PIXELS,
    "batch_size": 256,
}

SIGNATURE = ModelSignature(
    inputs=Schema([ColSpec("string", IMAGE_COLUMN)]),
    outputs=Schema([ColSpec("double", "probability"), ColSpec("long", "label")]),
)

# Models from code: the logged model names the class instead of pickling an instance.
_MODEL_CODE = """\
import mlflow

from histomlf.tracking.pyfunc import IdcPatchClassifier

mlflow.models.set_model(IdcPatchClassifier())
"""

# Requirements pinned to what is installed, so `log_model` need not infer them in a subprocess.
_PINNED_DISTRIBUTIONS = ("keras", "mlflow", "pillow", "numpy", "pandas", "cloudpickle")
_TENSORFLOW_DISTRIBUTIONS = ("tensorflow-cpu", "tensorflow")


class IdcPatchClassifier(mlflow.pyfunc.PythonModel):
    """Base64 PNG/JPEG patches (or uint8 arrays) in; `probability` and `label` out.

    `model_config` holds `serving_threshold` (required; label = probability >= threshold)
    and request limits `serving_max_images`, `serving_max_bytes`, `serving_max_pixels` and the
    scoring `serving_batch_size`. The prefix matters: MLflow logs `model_config` as run params,
    and bare names (`batch_size`) would collide with the training run's own params.
    """

    def load_context(self, context: mlflow.pyfunc.PythonModelContext) -> None:
        import keras

        from histomlf.models.inference import CompiledPredictor, buckets_up_to

        config = dict(context.model_config or {})
        self.threshold = _check_threshold(config.get(config_key("threshold")))
        limits = {
            key: int(config.get(config_key(key), default))
            for key, default in DEFAULT_LIMITS.items()
        }
        self.max_images, self.max_bytes = limits["max_images"], limits["max_bytes"]
        self.max_pixels, self.batch_size = limits["max_pixels"], limits["batch_size"]
        path = context.artifacts[MODEL_ARTIFACT]
        key = (os.path.realpath(path), os.stat(path).st_mtime_ns, self.batch_size)
        cache = os.environ.get(PROCESS_CACHE_ENV) == "1"
        if cache and key in _PROCESS_CACHE:
            self.keras_model, self.predictor = _PROCESS_CACHE[key]
            return
        _register_custom_layers()
        self.keras_model = keras.saving.load_model(path, compile=False)
        self.predictor = CompiledPredictor(self.keras_model, buckets_up_to(self.batch_size))
        self.predictor.warm((1,))
        if cache:
            _PROCESS_CACHE[key] = (self.keras_model, self.predictor)

    def predict(
        self,
        context: mlflow.pyfunc.PythonModelContext | None,
        model_input: pd.DataFrame,
        params: dict[str, Any] | None = None,
    ) -> pd.DataFrame:
        """Score a DataFrame with a string column `image` (base64 PNG/JPEG) or uint8 arrays.

        Arrays (one `[N, H, W, 3]` uint8 array or a list of HxWx3 ones) are accepted by the
        Python object itself; `PyFuncModel.predict` enforces the string signature first, so
        use `predict_patches` for arrays. Invalid rows raise `MlflowException` naming the row.
        """
        try:
            batch = self.to_batch(model_input)
        except InvalidPatchInput as error:
            raise MlflowException(str(error), error_code=INVALID_PARAMETER_VALUE) from error
        probability = self.score(batch)
        return pd.DataFrame(
            {
                "probability": probability.astype(np.float64),
                "label": (probability >= self.threshold).astype(np.int64),
            }
        )

    def to_batch(self, model_input: Any) -> np.ndarray:
        """Validate and pad a request into a `[N, 50, 50, 3]` uint8 batch."""
        if isinstance(model_input, pd.DataFrame):
            if IMAGE_COLUMN not in model_input.columns:
                raise InvalidPatchInput(
                    f"expected a column {IMAGE_COLUMN!r} of base64 PNG/JPEG strings, "
                    f"got columns {list(map(str, model_input.columns))}"
                )
            return images_from_base64(
                model_input[IMAGE_COLUMN].tolist(),
                max_bytes=self.max_bytes,
                max_pixels=self.max_pixels,
                max_images=self.max_images,
            )
        if isinstance(model_input, np.ndarray | list | tuple):
            return images_from_arrays(
                model_input, max_pixels=self.max_pixels, max_images=self.max_images
            )
        raise InvalidPatchInput(
            f"expected a DataFrame with column {IMAGE_COLUMN!r} or uint8 arrays, "
            f"got {type(model_input).__name__}"
        )

    def score(self, batch: np.ndarray) -> np.ndarray:
        """IDC probabilities `[N]` for a padded uint8 batch, through the compiled predictor."""
        return self.predictor(batch).astype(np.float64)


def predict_patches(
    model: mlflow.pyfunc.PyFuncModel | IdcPatchClassifier,
    images: np.ndarray | Sequence[np.ndarray] | pd.DataFrame,
) -> pd.DataFrame:
    """Score uint8 arrays (or an `image` DataFrame) with a loaded model, skipping the signature.

    `PyFuncModel.predict` checks input against the string signature, which arrays can't pass;
    this goes to the `IdcPatchClassifier` underneath with the same validation and output.
    """
    python_model = model if isinstance(model, IdcPatchClassifier) else model.unwrap_python_model()
    if not isinstance(python_model, IdcPatchClassifier):
        raise TypeError(f"not an IDC patch classifier: {type(python_model).__name__}")
    return python_model.predict(None, images)


def pinned_requirements() -> list[str]:
    """`name==version` for TensorFlow, Keras, MLflow, Pillow, NumPy, pandas, as installed."""
    requirements = []
    for distribution in _TENSORFLOW_DISTRIBUTIONS:
        try:
            requirements.append(f"{distribution}=={importlib.metadata.version(distribution)}")
            break
        except importlib.metadata.PackageNotFoundError:
            continue
    for distribution in _PINNED_DISTRIBUTIONS:
        requirements.append(f"{distribution}=={importlib.metadata.version(distribution)}")
    return requirements


def example_input() -> pd.DataFrame:
    """A one-row request (a synthetic pink 50x50 patch), logged as the model's input example."""
    patch = np.zeros((50, 50, 3), dtype=np.uint8)
    patch[..., 0], patch[..., 1], patch[..., 2] = 230, 160, 200
    patch[10:40, 10:40] = (150, 60, 140)
    return pd.DataFrame({IMAGE_COLUMN: [encode_png_base64(patch)]})


def log_patch_classifier(
    keras_model: Any,
    *,
    name: str = "model",
    threshold: float,
    registered_model_name: str | None = None,
    extra_pip_requirements: Sequence[str] | None = None,
    metadata: dict[str, Any] | None = None,
    limits: dict[str, int] | None = None,
) -> ModelInfo:
    """Log a Keras model (or a `.keras` path) as an `IdcPatchClassifier` pyfunc model.

    Logs into the active run if there is one. The model is logged "from code" (a two-line
    script naming the class, no pickle) and the histomlf package travels as `code_paths`, so a
    fresh environment imports the same classifier; `limits` overrides the request limits
    (`max_images`, `max_bytes`, `max_pixels`, `batch_size`) stored in `model_config`.
    """
    unknown = sorted(set(limits or {}) - set(DEFAULT_LIMITS))
    if unknown:
        raise MlflowException(
            f"unknown limit(s) {', '.join(unknown)}; known: {', '.join(DEFAULT_LIMITS)}",
            error_code=INVALID_PARAMETER_VALUE,
        )
    # Every key is logged: `load_model(model_config=...)` may only override logged keys.
    settings = {"threshold": _check_threshold(threshold), **DEFAULT_LIMITS, **(limits or {})}
    model_config = {config_key(key): value for key, value in settings.items()}
    with tempfile.TemporaryDirectory() as tmp:
        if isinstance(keras_model, str | Path):
            model_path = str(keras_model)
        else:
            model_path = str(Path(tmp) / "model.keras")
            keras_model.save(model_path)
        code_file = Path(tmp) / "idc_patch_classifier.py"
        code_file.write_text(_MODEL_CODE)
        return mlflow.pyfunc.log_model(
            name=name,
            python_model=str(code_file),
            artifacts={MODEL_ARTIFACT: model_path},
            code_paths=[str(PACKAGE_DIR)],
            pip_requirements=[*pinned_requirements(), *(extra_pip_requirements or [])],
            signature=SIGNATURE,
            input_example=example_input(),
            model_config=model_config,
            registered_model_name=registered_model_name,
            metadata=metadata,
        )


def config_key(name: str) -> str:
    """The `model_config` key of a serving setting (`threshold` -> `serving_threshold`)."""
    return f"serving_{name}"


def _check_threshold(value: Any) -> float:
    try:
        threshold = float(value)
    except (TypeError, ValueError):
        threshold = math.nan
    if not 0.0 <= threshold <= 1.0:
        raise MlflowException(
            f"the decision threshold must be a number in [0, 1], got {value!r}",
            error_code=INVALID_PARAMETER_VALUE,
        )
    return threshold


_CUSTOM_LAYER_MODULES = ("histomlf.models.heads", "histomlf.models.averaging")


def _register_custom_layers() -> None:
    """Import histomlf's modules of custom layers, if present, so they can be deserialized."""
    for module in _CUSTOM_LAYER_MODULES:
        try:
            importlib.import_module(module)
        except ModuleNotFoundError as error:
            if error.name not in ("histomlf", "histomlf.models", module):
                raise
