"""Scoring patches on Spark through the registered pyfunc: `mlflow.pyfunc.spark_udf`.

The model is the same pyfunc `mlflow models serve` runs (decoding, padding, threshold), applied
per Arrow batch by `spark_udf(..., env_manager="local")`: executors use their own Python, which
must import histomlf (see `histomlf.spark.session`). `env_manager="virtualenv"` rebuilds the
model's environment on every executor instead (it downloads Python builds; not tested here).

An alias (`models:/NAME@champion`) is resolved once, before the job, to `models:/NAME/<version>`:
an alias moved while a long job runs must not mix two models in one output.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import mlflow
from mlflow.tracking import MlflowClient

from histomlf.tracking.pyfunc import DEFAULT_LIMITS, IMAGE_COLUMN, SIGNATURE, config_key

# Spark SQL types of the pyfunc signature's output columns (`ColSpec` type -> Spark type).
_SPARK_TYPES = {"double": "double", "long": "bigint", "integer": "int", "float": "float",
                "string": "string", "boolean": "boolean"}


@dataclass(frozen=True)
class ResolvedModel:
    """A model URI pinned to what it meant when the job started."""

    requested: str
    uri: str
    name: str | None = None
    version: str | None = None


def resolve_model(model_uri: str) -> ResolvedModel:
    """`models:/NAME@alias` -> `models:/NAME/<version>`; `models:/NAME/<v>` keeps its version;
    any other URI (`runs:/`, a path, `models:/m-<id>`) is used as given, without a version."""
    if not model_uri.startswith("models:/"):
        return ResolvedModel(model_uri, model_uri)
    body = model_uri[len("models:/"):].strip("/")
    client = MlflowClient()
    if "@" in body:
        name, alias = body.split("@", 1)
        version = client.get_model_version_by_alias(name, alias).version
        return ResolvedModel(model_uri, f"models:/{name}/{version}", name, str(version))
    name, _, version = body.partition("/")
    if version.isdigit():
        client.get_model_version(name, version)  # fails now, not in every task
        return ResolvedModel(model_uri, model_uri, name, version)
    return ResolvedModel(model_uri, model_uri)


def prediction_type() -> str:
    """The UDF's result type, a struct of the signature's outputs, set explicitly:
    `struct<probability:double,label:bigint>`."""
    fields = [f"{spec.name}:{_SPARK_TYPES[spec.type.name]}" for spec in SIGNATURE.outputs.inputs]
    return f"struct<{','.join(fields)}>"


def images_per_call(model_uri: str) -> int:
    """The most images the model's pyfunc accepts in one call (its `serving_max_images`)."""
    from mlflow.models import Model

    flavor = Model.load(model_uri).flavors.get("python_function", {})
    # MLflow writes a pyfunc's model_config under the flavor's `config` key in MLmodel.
    config = flavor.get("config") or flavor.get("model_config") or {}
    return int(config.get(config_key("max_images"), DEFAULT_LIMITS["max_images"]))


def patch_scorer(spark: Any, model_uri: str) -> Any:
    """A pandas UDF: a struct column with one field `image` (base64 PNG/JPEG) in,
    `struct<probability, label>` out."""
    return mlflow.pyfunc.spark_udf(
        spark, model_uri, result_type=prediction_type(), env_manager="local"
    )


def score(frame: Any, scorer: Any, content: str = "content") -> Any:
    """`frame` with `probability` and `label` from the binary image column `content`."""
    from pyspark.sql import functions as F

    request = F.struct(F.base64(content).alias(IMAGE_COLUMN))
    return (
        frame.withColumn("_prediction", scorer(request))
        .withColumn("probability", F.col("_prediction.probability"))
        .withColumn("label", F.col("_prediction.label"))
        .drop("_prediction", content)
    )
