"""A real `mlflow models serve` of `models:/NAME@champion` answers like Keras in-process, refuses
each kind of bad request with a 4xx carrying our message, and keeps serving afterwards; then a
load test: concurrent clients mixing real patches with bad requests, memory of the whole server
process group flat."""

from __future__ import annotations

import base64
import io
import os
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import mlflow
import numpy as np
import psutil
import pytest
from helpers_mlflow import (
    Response,
    TmpStore,
    keras_probabilities,
    post_json,
    sample_patches,
    serve,
    tiny_keras_model,
    tmp_store,
)
from PIL import Image
from test_serving_inputs import bomb_png

from histomlf.data.patches import decode_patch
from histomlf.tracking.pyfunc import log_patch_classifier

pytestmark = [pytest.mark.slow, pytest.mark.timeout(600)]

MAX_IMAGES = 8
LOAD_CLIENTS = 4
LOAD_REQUESTS_PER_CLIENT = 100
LOAD_BAD_EVERY = 10
LOAD_MEMORY_GROWTH = 1.25


def b64(data: bytes) -> str:
    return base64.b64encode(data).decode("ascii")


def png(array: np.ndarray) -> bytes:
    buffer = io.BytesIO()
    Image.fromarray(array).save(buffer, format="PNG")
    return buffer.getvalue()


def request(*images: str, column: str = "image") -> dict:
    return {"dataframe_split": {"columns": [column], "data": [[image] for image in images]}}


def test_served_champion_scores_like_keras_and_refuses_bad_requests(
    tmp_path: Path, idc_sample: Path
) -> None:
    with tmp_store(tmp_path) as store:
        served_and_checked(store, tmp_path, idc_sample)


def served_and_checked(store: TmpStore, tmp_path: Path, idc_sample: Path) -> None:
    keras_model = tiny_keras_model(seed=1)
    with store.start_run():
        info = log_patch_classifier(keras_model, threshold=0.5, limits={"max_images": MAX_IMAGES})
    version = mlflow.register_model(info.model_uri, "idc-e2e")
    mlflow.MlflowClient().set_registered_model_alias("idc-e2e", "champion", version.version)

    paths = sample_patches(idc_sample, full=5, border=2)
    good = request(*(b64(p.read_bytes()) for p in paths))
    reference = keras_probabilities(
        keras_model, np.stack([decode_patch(p.read_bytes()) for p in paths])
    )
    good_png = b64(paths[0].read_bytes())
    bad_requests = {
        "not base64": (request(good_png, "%%% not base64 %%%"), "row 1: not valid base64"),
        "not an image": (request(b64(b"GIF89a" + b"\0" * 64)), "row 0: not a PNG or JPEG"),
        "bomb header": (request(b64(bomb_png())), "row 0: image declares 100000x100000"),
        "too many pixels": (
            request(b64(png(np.zeros((60, 60, 3), np.uint8)))),
            "row 0: image declares 60x60 = 3600 px",
        ),
        "too many images": (
            request(*[good_png] * (MAX_IMAGES + 1)),
            f"too many images in one request: {MAX_IMAGES + 1} > {MAX_IMAGES}",
        ),
        "wrong column": (request(good_png, column="picture"), "missing inputs ['image']"),
    }

    champion = "models:/idc-e2e@champion"
    with serve(champion, tracking_uri=store.tracking_uri, log_dir=tmp_path) as server:
        started = time.monotonic()
        first = post_json(f"{server.url}/invocations", good)
        latency = time.monotonic() - started
        assert first.status == 200, first.body
        predictions = first.json()["predictions"]
        served = np.array([row["probability"] for row in predictions])
        np.testing.assert_allclose(served, reference, rtol=0, atol=1e-5)
        assert [row["label"] for row in predictions] == [int(p >= 0.5) for p in served]

        for kind, (payload, message) in bad_requests.items():
            reply = post_json(f"{server.url}/invocations", payload)
            assert 400 <= reply.status < 500, (kind, reply.status, reply.body)
            assert message in reply.json()["message"], (kind, reply.body)
            assert reply.json()["error_code"] in ("INVALID_PARAMETER_VALUE", "BAD_REQUEST"), kind

        timings = []
        for _ in range(10):
            started = time.monotonic()
            again = post_json(f"{server.url}/invocations", request(good_png))
            timings.append(time.monotonic() - started)
            assert again.status == 200, again.body
            assert again.json()["predictions"][0]["probability"] == pytest.approx(
                served[0], abs=1e-5
            )
        print(
            f"\nserve startup {server.startup_s:.1f} s; first request ({len(paths)} patches) "
            f"{latency * 1000:.0f} ms; single-patch request median "
            f"{np.median(timings) * 1000:.0f} ms (max {max(timings) * 1000:.0f} ms)"
        )
        load_checked(server.url, server.process.pid, keras_model, idc_sample)


def group_rss(group: int) -> int:
    """Resident bytes of every process in process group `group` (uvicorn's child does the work)."""
    total = 0
    for process in psutil.process_iter():
        try:
            if os.getpgid(process.pid) == group:
                total += process.memory_info().rss
        except (ProcessLookupError, psutil.NoSuchProcess, psutil.AccessDenied):
            continue
    return total


def load_requests(idc_sample: Path) -> tuple[list[tuple[dict, np.ndarray | None]], list[Path]]:
    """400 requests: 1 to 4 real patches each, every 10th one bad (garbage, truncated, bomb)."""
    paths = sample_patches(idc_sample, full=40, border=8)
    rng = np.random.default_rng(11)
    real_bomb = png(np.zeros((3000, 3000, 3), np.uint8))  # ~27 MB decoded, a few KB encoded
    bad = [
        request(b64(rng.integers(0, 256, 300, dtype=np.uint8).tobytes())),
        request(b64(paths[0].read_bytes()[: len(paths[0].read_bytes()) // 2])),
        request(b64(bomb_png())),
        request(b64(real_bomb)),
    ]
    total = LOAD_CLIENTS * LOAD_REQUESTS_PER_CLIENT
    planned: list[tuple[dict, np.ndarray | None]] = []
    for index in range(total):
        if index % LOAD_BAD_EVERY == LOAD_BAD_EVERY - 1:
            planned.append((bad[(index // LOAD_BAD_EVERY) % len(bad)], None))
            continue
        picked = rng.choice(len(paths), size=int(rng.integers(1, 5)), replace=False)
        planned.append((request(*(b64(paths[i].read_bytes()) for i in picked)), picked))
    return planned, paths


def load_checked(url: str, group: int, keras_model, idc_sample: Path) -> None:
    planned, paths = load_requests(idc_sample)
    reference = keras_probabilities(
        keras_model, np.stack([decode_patch(p.read_bytes()) for p in paths])
    )
    assert post_json(f"{url}/invocations", planned[0][0]).status == 200
    rss_before = group_rss(group)

    def client(index: int) -> list[tuple[int, int, str]]:
        answers = []
        for number in range(index, len(planned), LOAD_CLIENTS):
            reply = post_json(f"{url}/invocations", planned[number][0])
            answers.append((number, reply.status, reply.body))
        return answers

    started = time.monotonic()
    with ThreadPoolExecutor(LOAD_CLIENTS) as pool:
        answers = [answer for part in pool.map(client, range(LOAD_CLIENTS)) for answer in part]
    seconds = time.monotonic() - started
    rss_after = group_rss(group)

    assert len(answers) == LOAD_CLIENTS * LOAD_REQUESTS_PER_CLIENT
    bad_count = 0
    for number, status, body in answers:
        picked = planned[number][1]
        if picked is None:
            bad_count += 1
            assert 400 <= status < 500, (number, status, body[:300])
            continue
        assert status == 200, (number, status, body[:300])
        served = np.array(
            [row["probability"] for row in Response(status, body).json()["predictions"]]
        )
        assert np.all((served >= 0) & (served <= 1)), (number, served)
        np.testing.assert_allclose(served, reference[picked], rtol=0, atol=1e-5)
    assert bad_count == len(answers) // LOAD_BAD_EVERY
    after = post_json(f"{url}/invocations", planned[0][0])
    assert after.status == 200, after.body
    assert rss_after < LOAD_MEMORY_GROWTH * rss_before, (rss_before, rss_after)
    print(
        f"load: {len(answers)} requests from {LOAD_CLIENTS} clients in {seconds:.1f} s "
        f"({len(answers) / seconds:.0f} req/s), {bad_count} bad refused; server group RSS "
        f"{rss_before / 2**20:.0f} -> {rss_after / 2**20:.0f} MiB ({rss_after / rss_before:.2f}x)"
    )
