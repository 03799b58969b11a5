"""The outputs of a Spark scoring job under one folder, and what says which model wrote them.

```
OUT/patches/patient_id=<pid>/part-*.parquet   one row per patch: path, x, y, true_label,
                                              probability, label (+ patient_id from the folder)
OUT/patches/_common_metadata                  the schema with the model's URI and version
OUT/patients.parquet                          per patient: patches, mean_probability,
                                              predicted_positive, predicted_positive_fraction
OUT/quarantine.parquet                        path, reason: the files that were not scored
```

The model's URI and version are written into the Parquet metadata twice: as Spark column
metadata of `probability` (kept in every part file's footer, seen by `spark.read.parquet`) and
as key-value metadata of `_common_metadata`, `patients.parquet` and `quarantine.parquet`
(seen by pyarrow and pandas). `patients.parquet` is the table the in-process `histomlf predict`
writes as `<stem>.patients.csv`, with the same columns.
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from pathlib import Path
from typing import Any

PATCHES_DIR = "patches"
PATIENTS_FILE = "patients.parquet"
QUARANTINE_FILE = "quarantine.parquet"
COMMON_METADATA = "_common_metadata"
METADATA_KEY = "histomlf"
PATIENT_COLUMNS = ("patient_id", "patches", "mean_probability", "predicted_positive",
                   "predicted_positive_fraction")


def write_patches(scored: Any, out_dir: Path, metadata: Mapping[str, str]) -> Path:
    """Write the scored rows partitioned by patient; returns the dataset's folder."""
    from pyspark.sql import functions as F

    target = out_dir / PATCHES_DIR
    tagged = scored.withColumn(
        "probability", F.col("probability").alias("probability", metadata={METADATA_KEY: dict(
            metadata)})
    )
    tagged.write.mode("overwrite").partitionBy("patient_id").parquet(str(target))
    _write_common_metadata(target, metadata)
    return target


def _write_common_metadata(target: Path, metadata: Mapping[str, str]) -> None:
    import pyarrow.parquet as pq

    part = next(target.glob("patient_id=*/*.parquet"), None)
    if part is None:
        return
    schema = pq.read_schema(part)
    merged = {**(schema.metadata or {}), METADATA_KEY.encode(): json.dumps(dict(metadata)).encode()}
    pq.write_metadata(schema.with_metadata(merged), target / COMMON_METADATA)


def patient_summary(spark: Any, patches_dir: Path) -> Any:
    """The per-patient table from the written patches (pandas, sorted like the in-process one)."""
    from pyspark.sql import functions as F

    table = spark.read.parquet(str(patches_dir))
    summary = table.groupBy("patient_id").agg(
        F.count("path").alias("patches"),
        F.mean("probability").alias("mean_probability"),
        F.sum("label").alias("predicted_positive"),
    ).withColumn("predicted_positive_fraction", F.col("predicted_positive") / F.col("patches"))
    frame = summary.toPandas()
    frame["patient_id"] = frame["patient_id"].astype(str)
    frame["_pid"] = frame["patient_id"].astype("int64")
    return frame.sort_values("_pid").drop(columns="_pid").reset_index(drop=True)[
        list(PATIENT_COLUMNS)
    ]


def write_table(frame: Any, path: Path, metadata: Mapping[str, str]) -> Path:
    """One Parquet file from a pandas frame, with the model in its key-value metadata."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    table = pa.Table.from_pandas(frame, preserve_index=False)
    merged = {**(table.schema.metadata or {}),
              METADATA_KEY.encode(): json.dumps(dict(metadata)).encode()}
    pq.write_table(table.replace_schema_metadata(merged), path)
    return path


def read_model_metadata(path: Path) -> dict[str, str]:
    """What a job's output says about its model (from `_common_metadata` or a table file)."""
    import pyarrow.parquet as pq

    target = path / COMMON_METADATA if path.is_dir() else path
    raw = (pq.read_schema(target).metadata or {}).get(METADATA_KEY.encode())
    return json.loads(raw) if raw else {}
