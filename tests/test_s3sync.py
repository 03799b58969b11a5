"""Datasets on S3 against the stack's real SeaweedFS: push, incremental sync, one-line errors."""

from __future__ import annotations

import shutil
import time
from pathlib import Path

import pytest
from click.testing import CliRunner

from histomlf.cli.data_s3 import push
from histomlf.data.s3sync import INDEX_NAME, S3SyncError, push_dir, sync_s3_prefix
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
