"""Datasets on S3: mirror an `s3://bucket/prefix` into a local cache, or push a folder up.

Sync is incremental: the size and ETag of every downloaded object are kept in a small index
file (`.s3sync-index.json` in the local copy), and an object whose size and ETag are unchanged
is not downloaded again. Downloads run in parallel threads and land atomically (temporary file,
then rename), so an interrupted sync never leaves a half-written patch. Endpoint and keys come
from the standard AWS variables plus `MLFLOW_S3_ENDPOINT_URL`/`AWS_ENDPOINT_URL`; errors are one
line (missing bucket, refused key, unreachable endpoint), with short connect timeouts and few
retries so a bad setting fails in seconds.

Whoever can write to the bucket must not be able to write or delete anything outside the cache:
every key is turned into a path by `key_to_relpath` (plain segments only, nothing absolute,
empty, `.` or `..`), its target must still resolve inside the local copy (a symlink there that
points out is not followed), a refused key is a warning naming it, and a sync deletes only files
its own index recorded as written inside the cache.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import re
import sys
import tempfile
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from urllib.parse import urlparse

from histomlf.errors import UserError

INDEX_NAME = ".s3sync-index.json"
_DRIVE = re.compile(r"^[A-Za-z]:")
log = logging.getLogger(__name__)


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
    refused: int = 0


class UnsafeKey(ValueError):
    """An S3 key that does not map to a path inside the local copy; the message says why."""


def key_to_relpath(key: str, prefix: str) -> str:
    """The path, relative to the local copy of `prefix`, that the object `key` is written to.

    AWS S3 keeps keys as written, so `p//etc/x`, `/etc/x` (empty prefix) or `p/a/../../x` are
    real keys; each is refused (`UnsafeKey`) rather than mapped anywhere: the relative path
    must be non-empty, made of plain segments (no empty, `.` or `..` segment, no backslash,
    NUL or drive letter), and not the sync's own index file. A key ending in `/` is a folder
    marker, not a file.
    """
    if prefix:
        if not key.startswith(f"{prefix}/"):
            raise UnsafeKey(f"not under the prefix {prefix}/")
        rel = key[len(prefix) + 1:]
    else:
        rel = key
    if not rel or rel.endswith("/"):
        raise UnsafeKey("a folder marker, not a file")
    if "\\" in rel or "\0" in rel:
        raise UnsafeKey("a backslash or NUL in the path")
    parts = rel.split("/")
    if any(part in ("", ".", "..") for part in parts):
        raise UnsafeKey("an empty, '.' or '..' path segment (or an absolute path)")
    if _DRIVE.match(parts[0]):
        raise UnsafeKey("a drive letter")
    if rel == INDEX_NAME:
        raise UnsafeKey("the name of the sync's own index file")
    return rel


def _target_inside(local_dir: Path, rel: str) -> Path | None:
    """`local_dir / rel` when it resolves inside `local_dir` (already resolved), else None.

    `resolve()` follows every symlink on the way, so a link inside the cache that points out
    of it makes its target refused instead of written through.
    """
    target = local_dir / rel
    try:
        inside = target.resolve().is_relative_to(local_dir)
    except (OSError, RuntimeError, ValueError):
        return None
    return target if inside else None


def _refuse(stats: SyncStats, key: str, why: str) -> None:
    stats.refused += 1
    log.warning("s3 sync: refused key %r: %s; nothing written", key, why)


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
        index = json.loads(path.read_text())
    except (OSError, ValueError):
        return {}
    return index if isinstance(index, dict) else {}


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
    if prefix:
        try:
            key_to_relpath(prefix, "")
        except UnsafeKey as why:
            raise S3SyncError(f"unusable prefix in {uri}: {why}") from None
    local_dir = Path(cache_dir).expanduser().resolve() / bucket / prefix
    local_dir.mkdir(parents=True, exist_ok=True)
    root = local_dir.resolve()
    index_path = local_dir / INDEX_NAME
    index = _load_index(index_path)
    client = s3_client(endpoint_url, max_pool=workers)
    try:
        objects = list(_list(client, bucket, prefix))
    except Exception as exc:
        raise _explain(exc, bucket, endpoint) from exc

    stats = SyncStats()
    todo = []
    listed: set[str] = set()
    for obj in objects:
        key = obj["Key"]
        if key.endswith("/"):
            continue  # a folder marker (as the S3 console makes them), not a file
        stats.objects += 1
        try:
            rel = key_to_relpath(key, prefix)
        except UnsafeKey as why:
            _refuse(stats, key, str(why))
            continue
        target = _target_inside(root, rel)
        if target is None:
            _refuse(stats, key, f"its path leads out of {local_dir} (through a symlink)")
            continue
        listed.add(rel)
        seen = index.get(rel)
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

    def fetch(item: tuple[dict, str]) -> tuple[str, dict | None]:
        obj, rel = item
        target = root / rel
        target.parent.mkdir(parents=True, exist_ok=True)
        # checked again once the folders exist: a link made since the listing is not followed
        if _target_inside(root, rel) is None:
            _refuse(stats, obj["Key"], f"its path leads out of {local_dir} (through a symlink)")
            return rel, None
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
                bar.update(1)
                if entry is None:
                    listed.discard(rel)
                    continue
                index[rel] = entry
                stats.transferred += 1
                stats.bytes += entry["size"]
    except S3SyncError:
        raise
    except Exception as exc:
        raise _explain(exc, bucket, endpoint) from exc
    finally:
        bar.close()
        _atomic_json(index_path, index)

    for rel in [r for r in index if r not in listed]:
        del index[rel]
        _remove_recorded(root, rel, stats)
    _atomic_json(index_path, index)
    return local_dir, stats


def _remove_recorded(local_dir: Path, rel: str, stats: SyncStats) -> None:
    """Delete the file the index recorded for a key that is gone, only if it is one this sync
    could have written: a plain relative path that still resolves inside the local copy (an
    index written by an older version may hold paths that never lay inside it)."""
    try:
        key_to_relpath(rel, "")
    except UnsafeKey as why:
        log.warning("s3 sync: not deleting %r recorded in the index: %s", rel, why)
        return
    target = _target_inside(local_dir, rel)
    if target is None:
        log.warning("s3 sync: not deleting %r: it leads out of %s", rel, local_dir)
        return
    target.unlink(missing_ok=True)
    stats.removed += 1


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
