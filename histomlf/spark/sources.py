"""Patch files as a Spark DataFrame `(path, rel, content)`, from any of three sources.

- a Kaggle-layout folder: Spark's `binaryFile` source, every `*.png` below it (`rel` is the
  path below the folder, so the checks can see `<pid>/<0|1>/name`);
- a manifest CSV (`histomlf data scan`'s `manifest.csv`): its paths, read inside the tasks
  (`rel` is null: a manifest says where its files are, it has no layout to check);
- an `s3://bucket/prefix`: the patient prefixes are listed on the driver (one delimited
  listing), then each task lists and reads its own prefixes with boto3, as `data/s3sync.py`
  does (`s3a://` would need Hadoop's AWS jars from Maven). Credentials and endpoint come from
  the same AWS_* / MLFLOW_S3_ENDPOINT_URL variables, which executors must have too.
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from histomlf.data.scan import PATIENT_FOLDER

SOURCE_SCHEMA = "path string, rel string, content binary"
PNG_GLOB = "*.[pP][nN][gG]"


@dataclass(frozen=True)
class Source:
    """What a DATA argument named: its kind (`folder`, `manifest`, `s3`) and resolved location."""

    kind: str
    location: str


def source_of(data: str) -> Source:
    """Classify DATA; a missing local path is a `FileNotFoundError` (one line)."""
    if data.startswith("s3://"):
        from histomlf.data.s3sync import parse_s3_uri

        bucket, prefix = parse_s3_uri(data)
        return Source("s3", f"s3://{bucket}/{prefix}".rstrip("/"))
    if data.startswith("s3a://"):
        raise ValueError(f"use s3://, not s3a:// (read with boto3 in the tasks): {data}")
    path = Path(data).expanduser()
    if not path.exists():
        raise FileNotFoundError(f"data not found: {path}")
    return Source("folder" if path.is_dir() else "manifest", str(path.resolve()))


def read_source(spark: Any, source: Source, partitions: int) -> Any:
    """The source's files as a DataFrame with `SOURCE_SCHEMA`."""
    if source.kind == "folder":
        return _read_folder(spark, source.location)
    if source.kind == "manifest":
        return _read_manifest(spark, source.location, partitions)
    return _read_s3(spark, source.location, partitions)


def _read_folder(spark: Any, root: str) -> Any:
    from pyspark.sql import functions as F

    files = (
        spark.read.format("binaryFile")
        .option("pathGlobFilter", PNG_GLOB)
        .option("recursiveFileLookup", "true")
        .load(root)
    )
    local = F.regexp_replace("path", r"^file:", "")
    return files.select(
        local.alias("path"),
        F.substring(local, len(root) + 2, 1 << 30).alias("rel"),
        "content",
    )


def _read_manifest(spark: Any, manifest: str, partitions: int) -> Any:
    from histomlf.data.manifest import read_manifest

    paths = read_manifest(manifest)["path"].astype(str).tolist()
    if not paths:
        raise ValueError(f"the manifest lists no patches: {manifest}")
    frame = spark.createDataFrame([(p,) for p in paths], "path string")
    return frame.repartition(max(1, min(partitions, len(paths)))).mapInPandas(
        _read_local_files, SOURCE_SCHEMA
    )


def _read_local_files(batches: Iterator[Any]) -> Iterator[Any]:
    """Executor side: each manifest path's bytes (empty bytes when unreadable: the content
    check then quarantines it as an empty file)."""
    import pandas as pd

    for batch in batches:
        contents = []
        for path in batch["path"]:
            try:
                contents.append(Path(path).read_bytes())
            except OSError:
                contents.append(b"")
        yield pd.DataFrame({"path": batch["path"], "rel": None, "content": contents})


def _patient_prefixes(client: Any, bucket: str, prefix: str) -> list[str]:
    """`prefix/<pid>/` and `prefix/<top>/<pid>/` for the non-patient tops (the archive's
    second top folder), from delimited listings: no object is listed on the driver."""

    def children(under: str) -> list[str]:
        found = []
        paginator = client.get_paginator("list_objects_v2")
        for page in paginator.paginate(Bucket=bucket, Prefix=under, Delimiter="/"):
            found += [p["Prefix"] for p in page.get("CommonPrefixes", [])]
        return found

    top = f"{prefix}/" if prefix else ""
    prefixes = []
    for child in children(top):
        name = child[len(top):].rstrip("/")
        if PATIENT_FOLDER.fullmatch(name):
            prefixes.append(child)
        else:
            prefixes += [c for c in children(child)
                         if PATIENT_FOLDER.fullmatch(c[len(child):].rstrip("/"))]
    return prefixes


def _read_s3(spark: Any, uri: str, partitions: int) -> Any:
    from histomlf.data.s3sync import _explain, endpoint_from_env, parse_s3_uri, s3_client

    bucket, prefix = parse_s3_uri(uri)
    try:
        prefixes = _patient_prefixes(s3_client(), bucket, prefix)
    except Exception as error:  # noqa: BLE001 - botocore errors become one line
        raise _explain(error, bucket, endpoint_from_env() or "AWS S3") from error
    if not prefixes:
        raise ValueError(f"no patient folders (<pid>/) under {uri}")
    root_len = len(prefix) + 1 if prefix else 0
    frame = spark.createDataFrame([(bucket, p, root_len) for p in prefixes],
                                  "bucket string, prefix string, root_len int")
    return frame.repartition(max(1, min(partitions, len(prefixes)))).mapInPandas(
        _read_s3_prefixes, SOURCE_SCHEMA
    )


def _read_s3_prefixes(batches: Iterator[Any]) -> Iterator[Any]:
    """Executor side: list each patient prefix and read its PNG objects with boto3."""
    import pandas as pd

    from histomlf.data.s3sync import s3_client

    client = s3_client()
    for batch in batches:
        for bucket, prefix, root_len in batch.itertuples(index=False):
            rows: dict[str, list] = {"path": [], "rel": [], "content": []}
            paginator = client.get_paginator("list_objects_v2")
            for page in paginator.paginate(Bucket=bucket, Prefix=prefix):
                for item in page.get("Contents", []):
                    key = item["Key"]
                    name = key.rsplit("/", 1)[-1]
                    if not name.lower().endswith(".png") or name.startswith((".", "_")):
                        continue
                    body = client.get_object(Bucket=bucket, Key=key)["Body"].read()
                    rows["path"].append(f"s3://{bucket}/{key}")
                    rows["rel"].append(key[root_len:])
                    rows["content"].append(body)
            if rows["path"]:
                yield pd.DataFrame(rows)
