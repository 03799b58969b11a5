"""Datasets on S3 against the stack's real SeaweedFS: push, incremental sync, one-line errors;
hostile keys (as AWS S3 keeps them) against a listing fed to the sync."""

from __future__ import annotations

import hashlib
import json
import logging
import shutil
import time
from pathlib import Path

import pytest
from click.testing import CliRunner

from histomlf.cli.data_s3 import push
from histomlf.data import s3sync
from histomlf.data.s3sync import (
    INDEX_NAME,
    S3SyncError,
    UnsafeKey,
    key_to_relpath,
    push_dir,
    sync_s3_prefix,
)
from histomlf.stack.processes import free_port

pytest_plugins = ["stack_fixtures"]


@pytest.fixture
def small_dataset(idc_sample: Path, tmp_path: Path) -> Path:
    """Six real patches of two patients in the Kaggle layout."""
    root = tmp_path / "dataset"
    for patient in sorted(p for p in idc_sample.iterdir() if p.is_dir())[:2]:
        for label in ("0", "1"):
            for png in sorted((patient / label).glob("*.png"))[:2 if label == "0" else 1]:
                target = root / patient.name / label / png.name
                target.parent.mkdir(parents=True, exist_ok=True)
                shutil.copyfile(png, target)
    return root


@pytest.fixture
def s3_env(tracking_stack, monkeypatch):
    for name, value in tracking_stack.s3_env().items():
        monkeypatch.setenv(name, value)
    return tracking_stack


def _files(root: Path) -> dict[str, bytes]:
    return {p.relative_to(root).as_posix(): p.read_bytes()
            for p in root.rglob("*") if p.is_file() and p.name != INDEX_NAME}


@pytest.mark.slow
def test_push_then_incremental_sync(s3_env, small_dataset: Path, tmp_path: Path) -> None:
    uri = f"s3://{s3_env.bucket}/datasets/idc-mini"
    n = len(_files(small_dataset))
    assert n >= 4
    pushed = push_dir(small_dataset, uri, progress=False)
    assert (pushed.transferred, pushed.skipped) == (n, 0)
    assert push_dir(small_dataset, uri, progress=False).skipped == n

    cache = tmp_path / "cache"
    local, stats = sync_s3_prefix(uri, cache, progress=False)
    assert local == cache / s3_env.bucket / "datasets" / "idc-mini"
    assert (stats.transferred, stats.skipped) == (n, 0)
    assert _files(local) == _files(small_dataset)

    again = sync_s3_prefix(uri, cache, progress=False)[1]
    assert (again.transferred, again.skipped) == (0, n)

    changed = sorted(small_dataset.rglob("*.png"))[0]
    changed.write_bytes(changed.read_bytes() + b"\0")
    assert push_dir(small_dataset, uri, progress=False).transferred == 1
    third = sync_s3_prefix(uri, cache, progress=False)[1]
    assert (third.transferred, third.skipped) == (1, n - 1)
    assert _files(local) == _files(small_dataset)

    gone = sorted(small_dataset.rglob("*.png"))[-1].relative_to(small_dataset).as_posix()
    s3_env.s3_client().delete_object(Bucket=s3_env.bucket, Key=f"datasets/idc-mini/{gone}")
    fourth = sync_s3_prefix(uri, cache, progress=False)[1]
    assert (fourth.transferred, fourth.removed) == (0, 1)
    assert not (local / gone).exists()
    assert not list(local.rglob("*.part"))


@pytest.mark.slow
def test_cli_push(s3_env, small_dataset: Path) -> None:
    uri = f"s3://{s3_env.bucket}/datasets/cli"
    result = CliRunner().invoke(push, [str(small_dataset), uri])
    assert result.exit_code == 0, result.output
    assert "uploaded" in result.output
    assert s3_env.bucket_keys("datasets/cli/")


@pytest.mark.slow
def test_missing_bucket_and_refused_keys_are_one_line_errors(
    s3_env, monkeypatch, tmp_path: Path
) -> None:
    with pytest.raises(S3SyncError, match="bucket no-such-bucket does not exist"):
        sync_s3_prefix("s3://no-such-bucket/x", tmp_path, progress=False)
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", "y" * 40)
    with pytest.raises(S3SyncError, match="secret key was refused"):
        sync_s3_prefix(f"s3://{s3_env.bucket}/datasets", tmp_path, progress=False)
    monkeypatch.setenv("AWS_ACCESS_KEY_ID", "HMNOSUCHKEY0000000000")
    with pytest.raises(S3SyncError, match="access key is unknown"):
        push_dir(tmp_path, f"s3://{s3_env.bucket}/datasets", progress=False)


def test_unreachable_endpoint_fails_within_seconds(monkeypatch, tmp_path: Path) -> None:
    monkeypatch.setenv("AWS_ACCESS_KEY_ID", "k")
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", "s")
    monkeypatch.setenv("AWS_DEFAULT_REGION", "us-east-1")
    endpoint = f"http://127.0.0.1:{free_port()}"
    started = time.monotonic()
    with pytest.raises(S3SyncError, match="cannot reach the S3 endpoint"):
        sync_s3_prefix("s3://b/p", tmp_path, endpoint_url=endpoint, progress=False)
    assert time.monotonic() - started < 10


def test_not_an_s3_uri(tmp_path: Path) -> None:
    with pytest.raises(S3SyncError, match="not an S3 URI"):
        sync_s3_prefix("/local/path", tmp_path)


# ---------------------------------------------------------------- hostile keys


@pytest.mark.parametrize(
    ("key", "prefix", "rel"),
    [
        ("p/a/b.png", "p", "a/b.png"),
        ("p/x", "p", "x"),
        ("x.png", "", "x.png"),
        ("p/q/a..b/c.png", "p/q", "a..b/c.png"),
    ],
)
def test_key_to_relpath_keeps_plain_keys(key: str, prefix: str, rel: str) -> None:
    assert key_to_relpath(key, prefix) == rel


@pytest.mark.parametrize(
    ("key", "prefix"),
    [
        ("p//abs", "p"),
        ("p//tmp/pwned.png", "p"),
        ("/abs", ""),
        ("p/a/../../x", "p"),
        ("p/../x", "p"),
        ("p/./x", "p"),
        ("p/", "p"),
        ("p", "p"),
        ("", ""),
        ("p/a//b", "p"),
        ("p/a/", "p"),
        ("p/..", "p"),
        ("p/a\\..\\..\\x", "p"),
        ("C:/Windows/x", ""),
        ("p/x\0y", "p"),
        ("q/x", "p"),
        ("px/y", "p"),
        (f"p/{INDEX_NAME}", "p"),
    ],
)
def test_key_to_relpath_refuses_keys_that_leave_the_cache(key: str, prefix: str) -> None:
    with pytest.raises(UnsafeKey):
        key_to_relpath(key, prefix)


class _ListingS3:
    """Stands in for the boto3 client with a listing as AWS S3 returns it: keys kept exactly
    as written (SeaweedFS would collapse `//`, so the real store cannot serve these keys)."""

    def __init__(self, objects: dict[str, bytes]) -> None:
        self.objects = objects
        self.downloaded: list[str] = []

    def get_paginator(self, name: str):
        assert name == "list_objects_v2"
        return self

    def paginate(self, Bucket: str, Prefix: str):  # noqa: N803 (boto3's names)
        yield {"Contents": [
            {"Key": k, "Size": len(v), "ETag": f'"{hashlib.md5(v).hexdigest()}"'}
            for k, v in sorted(self.objects.items()) if k.startswith(Prefix)
        ]}

    def download_fileobj(self, bucket: str, key: str, fh) -> None:
        self.downloaded.append(key)
        fh.write(self.objects[key])


@pytest.fixture
def listing(monkeypatch):
    def feed(objects: dict[str, bytes]) -> _ListingS3:
        fake = _ListingS3(objects)
        monkeypatch.setattr(s3sync, "s3_client", lambda *a, **k: fake)
        return fake
    return feed


def test_sync_writes_nothing_outside_its_cache(listing, tmp_path: Path, caplog) -> None:
    cache, outside = tmp_path / "cache", tmp_path / "outside"
    outside.mkdir()
    local = cache / "b" / "p"
    local.mkdir(parents=True)
    (local / "link").symlink_to(outside, target_is_directory=True)
    (local / "file-link.png").symlink_to(outside / "victim.png")
    (outside / "victim.png").write_bytes(b"precious")
    hostile = {
        f"p/{outside}/abs.png": b"pwned",           # p//tmp/.../abs.png
        "p/a/../../../../outside/dots.png": b"pwned",
        "p/./dot.png": b"pwned",
        "p/link/through-link.png": b"pwned",        # a symlink inside the cache pointing out
        "p/file-link.png": b"pwned",
        "p/a\\..\\..\\back.png": b"pwned",
    }
    fake = listing({"p/ok/a.png": b"fine", "p/": b"", **hostile})
    caplog.set_level(logging.WARNING, logger="histomlf.data.s3sync")
    got, stats = sync_s3_prefix("s3://b/p", cache, progress=False)
    assert got == local
    assert (local / "ok" / "a.png").read_bytes() == b"fine"
    assert sorted(p.name for p in outside.iterdir()) == ["victim.png"]
    assert (outside / "victim.png").read_bytes() == b"precious"
    assert not list(tmp_path.glob("*.png")) and not (local / "dot.png").exists()
    assert fake.downloaded == ["p/ok/a.png"]
    assert (stats.transferred, stats.refused) == (1, len(hostile))
    for key in hostile:
        assert any(repr(key) in record.getMessage() for record in caplog.records), key
    assert set(json.loads((local / INDEX_NAME).read_text())) == {"ok/a.png"}

    # with an empty prefix, an absolute key is refused too
    listing({str(outside / "root.png"): b"pwned", "top.png": b"fine"})
    root_local, root_stats = sync_s3_prefix("s3://b", cache, progress=False)
    assert (root_local / "top.png").read_bytes() == b"fine"
    assert not (outside / "root.png").exists() and root_stats.refused == 1


def test_sync_deletes_only_files_it_recorded_inside_its_cache(
    listing, tmp_path: Path
) -> None:
    cache, outside = tmp_path / "cache", tmp_path / "outside"
    outside.mkdir()
    listing({"p/keep.png": b"k", "p/gone.png": b"g", "p/sub/linked.png": b"l"})
    local = sync_s3_prefix("s3://b/p", cache, progress=False)[0]
    # an index as an older sync wrote it for hostile keys, and a folder swapped for a link
    victims = [outside / "abs.png", outside / "dots.png", outside / "sub" / "linked.png"]
    for victim in victims:
        victim.parent.mkdir(exist_ok=True)
        victim.write_bytes(b"precious")
    index = json.loads((local / INDEX_NAME).read_text())
    entry = {"etag": '"x"', "size": 1}
    index.update({str(outside / "abs.png"): entry, "../../../outside/dots.png": entry})
    (local / INDEX_NAME).write_text(json.dumps(index))
    shutil.rmtree(local / "sub")
    (local / "sub").symlink_to(outside / "sub", target_is_directory=True)

    listing({"p/keep.png": b"k"})
    stats = sync_s3_prefix("s3://b/p", cache, progress=False)[1]
    assert all(victim.read_bytes() == b"precious" for victim in victims)
    assert not (local / "gone.png").exists() and (local / "keep.png").exists()
    assert stats.removed == 1
    assert set(json.loads((local / INDEX_NAME).read_text())) == {"keep.png"}


def test_a_prefix_that_leaves_the_cache_is_an_error(listing, tmp_path: Path) -> None:
    listing({})
    with pytest.raises(S3SyncError, match="unusable prefix"):
        sync_s3_prefix("s3://b/../../etc", tmp_path, progress=False)
