"""Datasets on S3: mirror an `s3://bucket/prefix` into a local cache, or push a folder up.

Sync is incremental: the size and ETag of every downloaded object are kept in a small index
file (`.s3sync-index.json` in the local copy), and an object whose size and ETag are unchanged
is not downloaded again. Downloads run in parallel threads and land atomically (temporary file,
then rename), so an interrupted sync never leaves a half-written patch. Endpoint and keys come
from the standard AWS variables plus `MLFLOW_S3_ENDPOINT_URL`/`AWS_ENDPOINT_URL`; errors are one
line (missing bucket, refused key, unreachable endpoint), with short connect timeouts and few
retries so a bad setting fails in seconds.
"""

from __future__ import annotations

import hashlib
import json
import os
import sys
import tempfile
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from urllib.parse import urlparse

from histomlf.errors import UserError

INDEX_NAME = ".s3sync-index.json"


class S3SyncError(UserError, RuntimeError):
    """S3 cannot be used as asked; the message is one line saying why."""


@dataclass
class SyncStats:
    """What a sync or push did."""

    objects: int = 0
    transferred: int = 0
    skipped: int = 0
    removed: int = 0
    bytes: int = 0


def parse_s3_uri(uri: str) -> tuple[str, str]:
    """`s3://bucket/some/prefix` -> ("bucket", "some/prefix") (no leading/trailing slash)."""
    parsed = urlparse(uri)
    if parsed.scheme != "s3" or not parsed.netloc:
        raise S3SyncError(f"not an S3 URI (expected s3://bucket/prefix): {uri}")
    return parsed.netloc, parsed.path.strip("/")


def endpoint_from_env() -> str | None:
    """The endpoint from `MLFLOW_S3_ENDPOINT_URL`, `AWS_ENDPOINT_URL_S3` or `AWS_ENDPOINT_URL`."""
    for name in ("MLFLOW_S3_ENDPOINT_URL", "AWS_ENDPOINT_URL_S3", "AWS_ENDPOINT_URL"):
        if os.environ.get(name):
            return os.environ[name]
    return None


def s3_client(endpoint_url: str | None = None, *, max_pool: int = 16):
    """A boto3 S3 client with a 3 s connect timeout and 2 attempts at most.

    A fresh session each time: boto3's default session caches the first credentials it found,
    so later changes to the AWS_* variables would be ignored.
    """
    import boto3
    from botocore.config import Config

    return boto3.session.Session().client(
        "s3",
        endpoint_url=endpoint_url or endpoint_from_env(),
        config=Config(
            connect_timeout=3, read_timeout=60, retries={"max_attempts": 2, "mode": "standard"},
            max_pool_connections=max_pool,
        ),
    )


_CODES = {
    "NoSuchBucket": "bucket {bucket} does not exist",
    "InvalidAccessKeyId": "the S3 access key is unknown to {endpoint} (check AWS_ACCESS_KEY_ID)",
    "SignatureDoesNotMatch": "the S3 secret key was refused by {endpoint} "
    "(check AWS_SECRET_ACCESS_KEY)",
    "AccessDenied": "access to s3://{bucket} is denied for this S3 key",
    "403": "access to s3://{bucket} is denied for this S3 key",
    "404": "bucket {bucket} does not exist",
}


def _explain(exc: Exception, bucket: str, endpoint: str) -> S3SyncError:
    from botocore.exceptions import (
        ClientError,
        ConnectTimeoutError,
        EndpointConnectionError,
        NoCredentialsError,
    )

    if isinstance(exc, ClientError):
        code = str(exc.response.get("Error", {}).get("Code", ""))
        text = _CODES.get(code, "S3 request failed ({code}): {message}")
        message = exc.response.get("Error", {}).get("Message", "")
        return S3SyncError(
            text.format(bucket=bucket, endpoint=endpoint, code=code, message=message)
        )
    if isinstance(exc, (EndpointConnectionError, ConnectTimeoutError)):
        return S3SyncError(
            f"cannot reach the S3 endpoint {endpoint} (check MLFLOW_S3_ENDPOINT_URL / "
            "AWS_ENDPOINT_URL)"
        )
    if isinstance(exc, NoCredentialsError):
        return S3SyncError("no S3 credentials: set AWS_ACCESS_KEY_ID and AWS_SECRET_ACCESS_KEY")
    return S3SyncError(f"S3 error: {str(exc).splitlines()[0] if str(exc) else type(exc).__name__}")


def _list(client, bucket: str, prefix: str) -> Iterator[dict]:
    paginator = client.get_paginator("list_objects_v2")
    for page in paginator.paginate(Bucket=bucket, Prefix=f"{prefix}/" if prefix else ""):
        yield from page.get("Contents", [])


def _progress_bar(total: int, desc: str, enabled: bool | None):
    if enabled is None:
        enabled = sys.stderr.isatty()
    from tqdm import tqdm

    return tqdm(total=total, desc=desc, unit="file", disable=not enabled, leave=False)


def _load_index(path: Path) -> dict[str, dict]:
    try:
        return json.loads(path.read_text())
    except (OSError, ValueError):
        return {}


def _atomic_json(path: Path, data: dict) -> None:
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.")
    with os.fdopen(fd, "w") as fh:
        json.dump(data, fh, sort_keys=True)
    os.replace(tmp, path)


def sync_s3_prefix(
    uri: str,
    cache_dir: str | Path,
    *,
    endpoint_url: str | None = None,
    workers: int = 8,
    progress: bool | None = None,
) -> tuple[Path, SyncStats]:
    """Mirror `uri` into `cache_dir/<bucket>/<prefix>`; return that folder and what was done.

    Objects with the size and ETag recorded at the last sync (and still present locally) are
    skipped; files of objects deleted from the bucket are removed. `progress=None` shows a
    bar only on a terminal.
    """
    bucket, prefix = parse_s3_uri(uri)
    endpoint = endpoint_url or endpoint_from_env() or "AWS S3"
    local_dir = Path(cache_dir).expanduser().resolve() / bucket / prefix
    local_dir.mkdir(parents=True, exist_ok=True)
    index_path = local_dir / INDEX_NAME
    index = _load_index(index_path)
    client = s3_client(endpoint_url, max_pool=workers)
    try:
        objects = [o for o in _list(client, bucket, prefix) if not o["Key"].endswith("/")]
    except Exception as exc:
        raise _explain(exc, bucket, endpoint) from exc

    stats = SyncStats(objects=len(objects))
    todo = []
    for obj in objects:
        rel = obj["Key"][len(prefix) + 1:] if prefix else obj["Key"]
        if not rel or rel == INDEX_NAME or ".." in Path(rel).parts:
            continue
        seen = index.get(rel)
        target = local_dir / rel
        if (
            seen
            and seen.get("etag") == obj["ETag"]
            and seen.get("size") == obj["Size"]
            and target.is_file()
            and target.stat().st_size == obj["Size"]
        ):
            stats.skipped += 1
        else:
            todo.append((obj, rel))

    def fetch(item: tuple[dict, str]) -> tuple[str, dict]:
        obj, rel = item
        target = local_dir / rel
        target.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(dir=target.parent, prefix=f".{target.name}.", suffix=".part")
        try:
            with os.fdopen(fd, "wb") as fh:
                client.download_fileobj(bucket, obj["Key"], fh)
            os.replace(tmp, target)
        except BaseException:
            Path(tmp).unlink(missing_ok=True)
            raise
        return rel, {"etag": obj["ETag"], "size": obj["Size"]}

    bar = _progress_bar(len(todo), f"sync {uri}", progress)
    try:
        with ThreadPoolExecutor(max_workers=max(1, workers)) as pool:
            for rel, entry in pool.map(fetch, todo):
                index[rel] = entry
                stats.transferred += 1
                stats.bytes += entry["size"]
                bar.update(1)
    except S3SyncError:
        raise
    except Exception as exc:
        raise _explain(exc, bucket, endpoint) from exc
    finally:
        bar.close()
        _atomic_json(index_path, index)

    listed = {o["Key"][len(prefix) + 1:] if prefix else o["Key"] for o in objects}
    for rel in [r for r in index if r not in listed]:
        (local_dir / rel).unlink(missing_ok=True)
        del index[rel]
        stats.removed += 1
    _atomic_json(index_path, index)
    return local_dir, stats


def _md5(path: Path) -> str:
    digest = hashlib.md5(usedforsecurity=False)
    with open(path, "rb") as fh:
        for block in iter(lambda: fh.read(1 << 20), b""):
            digest.update(block)
    return f'"{digest.hexdigest()}"'


def push_dir(
    local_dir: str | Path,
    uri: str,
    *,
    endpoint_url: str | None = None,
    workers: int = 8,
    progress: bool | None = None,
) -> SyncStats:
    """Upload every file under `local_dir` to `uri`, skipping objects with the same size and
    MD5 ETag (files are sent in one part each so their ETag is their MD5)."""
    root = Path(local_dir)
    if not root.is_dir():
        raise S3SyncError(f"not a folder: {root}")
    bucket, prefix = parse_s3_uri(uri)
    endpoint = endpoint_url or endpoint_from_env() or "AWS S3"
    client = s3_client(endpoint_url, max_pool=workers)
    try:
        remote = {o["Key"]: o for o in _list(client, bucket, prefix)}
    except Exception as exc:
        raise _explain(exc, bucket, endpoint) from exc

    files = sorted(
        p for p in root.rglob("*")
        if p.is_file() and p.name != INDEX_NAME and not p.name.endswith(".part")
    )
    stats = SyncStats(objects=len(files))

    def send(path: Path) -> int:
        rel = path.relative_to(root).as_posix()
        key = f"{prefix}/{rel}" if prefix else rel
        seen = remote.get(key)
        size = path.stat().st_size
        if seen and seen["Size"] == size and seen["ETag"] == _md5(path):
            return -1
        with open(path, "rb") as fh:
            client.put_object(Bucket=bucket, Key=key, Body=fh)
        return size

    bar = _progress_bar(len(files), f"push {uri}", progress)
    try:
        with ThreadPoolExecutor(max_workers=max(1, workers)) as pool:
            for sent in pool.map(send, files):
                if sent < 0:
                    stats.skipped += 1
                else:
                    stats.transferred += 1
                    stats.bytes += sent
                bar.update(1)
    except Exception as exc:
        raise _explain(exc, bucket, endpoint) from exc
    finally:
        bar.close()
    return stats
