"""The logged pyfunc model: real sample patches round-trip through MLflow and score exactly like
the Keras model in-process; every kind of bad input is refused with its reason."""

from __future__ import annotations

import base64
import json
from pathlib import Path

import mlflow
import numpy as np
import pandas as pd
import pytest
from helpers_mlflow import keras_probabilities, sample_patches, tiny_keras_model, tmp_store
from mlflow.exceptions import MlflowException
from PIL import Image

from histomlf.data.patches import decode_patch
from histomlf.tracking.pyfunc import (
    SIGNATURE,
    IdcPatchClassifier,
    log_patch_classifier,
    pinned_requirements,
    predict_patches,
)

THRESHOLD = 0.4985


@pytest.fixture(scope="module")
def logged(tmp_path_factory: pytest.TempPathFactory, idc_sample: Path):
    """One tiny Keras model logged once in a tmp sqlite store, plus the real patches to score."""
    with tmp_store(tmp_path_factory.mktemp("pyfunc")) as store:
        keras_model = tiny_keras_model(seed=0)
        with store.start_run() as run:
            info = log_patch_classifier(
                keras_model, threshold=THRESHOLD, metadata={"model": "tiny"}
            )
        yield keras_model, info, run.info.run_id, sample_patches(idc_sample)


def b64_file(path: Path) -> str:
    return base64.b64encode(path.read_bytes()).decode("ascii")


def test_round_trip_matches_keras_in_process(logged) -> None:
    keras_model, info, _, paths = logged
    loaded = mlflow.pyfunc.load_model(info.model_uri)
    result = loaded.predict(pd.DataFrame({"image": [b64_file(p) for p in paths]}))

    patches = np.stack([decode_patch(p.read_bytes()) for p in paths])
    reference = keras_probabilities(keras_model, patches)
    assert list(result.columns) == ["probability", "label"]
    assert result["probability"].dtype == np.float64 and result["label"].dtype == np.int64
    np.testing.assert_allclose(result["probability"].to_numpy(), reference, rtol=0, atol=1e-5)
    np.testing.assert_array_equal(result["label"].to_numpy(), (reference >= THRESHOLD).astype(int))
    assert any(Image.open(p).size != (50, 50) for p in paths)


def test_arrays_score_like_base64(logged) -> None:
    keras_model, info, _, paths = logged
    loaded = mlflow.pyfunc.load_model(info.model_uri)
    arrays = [np.asarray(Image.open(p).convert("RGB")) for p in paths]
    from_list = predict_patches(loaded, arrays)
    from_batch = predict_patches(loaded, np.stack([decode_patch(p.read_bytes()) for p in paths]))
    from_b64 = loaded.predict(pd.DataFrame({"image": [b64_file(p) for p in paths]}))
    np.testing.assert_allclose(from_list["probability"], from_b64["probability"], atol=1e-6)
    np.testing.assert_allclose(from_batch["probability"], from_b64["probability"], atol=1e-6)


def test_logged_model_metadata(logged) -> None:
    _, info, run_id, _ = logged
    model = mlflow.models.get_model_info(info.model_uri)
    assert info.run_id == run_id
    assert model.signature == SIGNATURE
    assert model.metadata == {"model": "tiny"}
    local = Path(mlflow.artifacts.download_artifacts(info.model_uri))
    requirements = (local / "requirements.txt").read_text().split()
    assert set(pinned_requirements()) <= set(requirements)
    assert any(r.startswith(("tensorflow-cpu==", "tensorflow==")) for r in requirements)
    assert (local / "code" / "histomlf" / "tracking" / "pyfunc.py").is_file()
    example = json.loads((local / "serving_input_example.json").read_text())
    assert example["dataframe_split"]["columns"] == ["image"]
    loaded = mlflow.pyfunc.load_model(info.model_uri)
    assert loaded.model_config["serving_threshold"] == THRESHOLD
    assert isinstance(loaded.unwrap_python_model(), IdcPatchClassifier)


@pytest.mark.parametrize(
    ("images", "message"),
    [
        (["###"], "row 0: not valid base64"),
        ([base64.b64encode(b"plain text").decode()], "row 0: not a PNG or JPEG"),
        ([None], "row 0: expected a base64 string"),
        ([], "empty request"),
    ],
)
def test_invalid_input_is_an_mlflow_invalid_parameter(logged, images, message) -> None:
    _, info, _, paths = logged
    loaded = mlflow.pyfunc.load_model(info.model_uri)
    frame = pd.DataFrame({"image": pd.Series(images, dtype=object)})
    with pytest.raises(MlflowException) as raised:
        loaded.predict(frame)
    assert raised.value.error_code == "INVALID_PARAMETER_VALUE"
    assert message in raised.value.message
    good = loaded.predict(pd.DataFrame({"image": [b64_file(paths[0])]}))
    assert len(good) == 1


def test_too_many_images_and_wrong_column(logged) -> None:
    _, info, _, paths = logged
    loaded = mlflow.pyfunc.load_model(info.model_uri, model_config={"serving_max_images": 2})
    with pytest.raises(MlflowException, match="too many images in one request: 3 > 2"):
        loaded.predict(pd.DataFrame({"image": [b64_file(paths[0])] * 3}))
    with pytest.raises(MlflowException, match="missing inputs \\['image'\\]"):
        loaded.predict(pd.DataFrame({"picture": [b64_file(paths[0])]}))
    with pytest.raises(MlflowException, match="expected a column 'image'"):
        predict_patches(loaded, pd.DataFrame({"picture": [b64_file(paths[0])]}))


def test_threshold_must_be_a_probability(logged) -> None:
    keras_model = logged[0]
    with pytest.raises(MlflowException, match="threshold must be a number in \\[0, 1\\]"):
        log_patch_classifier(keras_model, threshold=1.5)
