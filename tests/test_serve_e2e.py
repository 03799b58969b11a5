"""A real `mlflow models serve` of `models:/NAME@champion` answers like Keras in-process, refuses
each kind of bad request with a 4xx carrying our message, and keeps serving afterwards."""

from __future__ import annotations

import base64
import io
import time
from pathlib import Path

import mlflow
import numpy as np
import pytest
from helpers_mlflow import (
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
