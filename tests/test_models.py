"""Backbones by name: registry rules, forward pass, save/load, ImageNet and file weights."""

from __future__ import annotations

import dataclasses
import time
from pathlib import Path

import h5py
import keras
import numpy as np
import pytest

from histomlf.models import (
    PixelPreprocess,
    WeightsUnavailableError,
    backbones,
    create_model,
    list_models,
    register_model,
)
from histomlf.models import weights as weights_module
from histomlf.models.backbones import UnknownBackboneError


def uint8_batch(n: int = 2, seed: int = 0) -> np.ndarray:
    return np.random.default_rng(seed).integers(0, 256, (n, 50, 50, 3), dtype=np.uint8)


def test_registry_builds_exactly_the_backbone_table() -> None:
    """Every table entry is registered, nothing else is: a new entry needs no list here."""
    assert list_models() == backbones.backbone_names()
    assert {"simplecnn", "vgg50px", "vgg16", "resnet50"} <= set(list_models())
    for name in backbones.scratch_backbones():
        assert backbones.BACKBONES[name].imagenet is None, name
    assert set(backbones.scratch_backbones()) >= {"simplecnn", "vgg50px"}


def test_a_builder_without_a_table_entry_is_refused() -> None:
    def not_in_the_table(**kwargs):
        raise AssertionError("never called")

    with pytest.raises(ValueError, match="backbone-table entry"):
        register_model(not_in_the_table)


def test_unknown_name_fails_listing_known_names() -> None:
    with pytest.raises(UnknownBackboneError) as error:
        create_model("vgg61")
    message = str(error.value)
    assert "vgg61" in message
    for name in backbones.backbone_names():
        assert name in message


def test_duplicate_registration_is_refused() -> None:
    def simplecnn(**kwargs):  # same name as the built-in builder
        raise AssertionError("never called")

    with pytest.raises(ValueError, match="already registered"):
        register_model(simplecnn)
    assert create_model("simplecnn").name == "simplecnn"


@pytest.mark.parametrize("name", list_models())
def test_every_model_runs_and_round_trips(name: str, tmp_path: Path) -> None:
    model = create_model(name, weights="none")
    batch = uint8_batch()
    probabilities = keras.ops.convert_to_numpy(model(batch, training=False))
    assert probabilities.shape == (2, 1)
    assert probabilities.dtype == np.float32
    assert np.all((probabilities >= 0) & (probabilities <= 1))
    assert model.get_layer("backbone").name == "backbone"

    path = tmp_path / f"{name}.keras"
    model.save(path)
    reloaded = keras.models.load_model(path)
    again = keras.ops.convert_to_numpy(reloaded(batch, training=False))
    np.testing.assert_allclose(again, probabilities, rtol=0, atol=1e-6)


def test_head_options_and_resizing() -> None:
    model = create_model("simplecnn", image_size=64, dense_units=0, dropout=0.0)
    names = [layer.name for layer in model.layers]
    assert "resize" in names and "dense" not in names
    assert model.get_layer("backbone").input_shape == (None, 64, 64, 3)
    assert model.input_shape == (None, 50, 50, 3)
    assert model(uint8_batch()).shape == (2, 1)


def test_simplecnn_is_small() -> None:
    assert 50_000 < create_model("simplecnn").count_params() < 200_000


@pytest.mark.parametrize(
    ("mode", "expected"),
    [
        ("caffe", [255 - 103.939, 0 - 116.779, 10 - 123.68]),  # BGR order
        ("tf", [-1.0, 10 / 127.5 - 1.0, 1.0]),
        ("unit", [0.0, 10 / 255, 1.0]),
        ("raw", [0.0, 10.0, 255.0]),
    ],
)
def test_pixel_preprocess_matches_keras_modes(mode: str, expected: list[float]) -> None:
    pixel = np.array([[[[0, 10, 255]]]], dtype=np.uint8)
    if mode == "caffe":
        pixel = np.array([[[[10, 0, 255]]]], dtype=np.uint8)  # R=10, G=0, B=255
    out = keras.ops.convert_to_numpy(PixelPreprocess(mode)(pixel))
    np.testing.assert_allclose(out[0, 0, 0], expected, rtol=1e-6)


def test_pixel_preprocess_equals_keras_applications() -> None:
    images = uint8_batch().astype("float32")
    for mode, function in [
        ("caffe", keras.applications.vgg16.preprocess_input),
        ("tf", keras.applications.mobilenet_v2.preprocess_input),
    ]:
        ours = keras.ops.convert_to_numpy(PixelPreprocess(mode)(images))
        np.testing.assert_allclose(ours, function(images.copy()), rtol=1e-5, atol=1e-4)


def test_weights_file_loads_into_backbone(tmp_path: Path) -> None:
    source = create_model("simplecnn")
    path = tmp_path / "backbone.weights.h5"
    source.get_layer("backbone").save_weights(path)

    model = create_model("simplecnn", weights=str(path))
    for expected, loaded in zip(
        source.get_layer("backbone").get_weights(),
        model.get_layer("backbone").get_weights(),
        strict=True,
    ):
        np.testing.assert_array_equal(loaded, expected)
    fresh = create_model("simplecnn")
    assert not np.array_equal(
        fresh.get_layer("backbone").get_weights()[0], source.get_layer("backbone").get_weights()[0]
    )


def test_missing_weights_file_is_a_clear_error(tmp_path: Path) -> None:
    with pytest.raises(FileNotFoundError, match="weights file not found"):
        create_model("simplecnn", weights=str(tmp_path / "nope.weights.h5"))


def test_simplecnn_has_no_imagenet_weights() -> None:
    with pytest.raises(WeightsUnavailableError, match="no ImageNet weights"):
        create_model("simplecnn", weights="imagenet")


def test_imagenet_offline_fails_at_once_naming_file_url_and_folder(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("KERAS_HOME", str(tmp_path / "keras"))
    monkeypatch.setattr(weights_module, "keras_cache_dirs", lambda: [tmp_path / "keras" / "models"])
    entry = backbones.BACKBONES["vgg16"]
    spec = entry.imagenet
    unreachable = backbones.ImagenetWeights(spec.file_name, "http://127.0.0.1:9/" + spec.file_name)
    monkeypatch.setitem(
        backbones.BACKBONES, "vgg16", dataclasses.replace(entry, imagenet=unreachable)
    )
    started = time.perf_counter()
    with pytest.raises(WeightsUnavailableError) as error:
        create_model("vgg16", weights="imagenet")
    assert time.perf_counter() - started < 15
    message = str(error.value)
    assert "vgg16_weights_tf_dim_ordering_tf_kernels_notop.h5" in message
    assert unreachable.url in message
    assert str(tmp_path / "keras" / "models") in message
    assert not (tmp_path / "keras" / "models" / spec.file_name).exists()


def test_imagenet_weights_come_from_the_keras_cache(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A pre-seeded legacy-h5 file under $KERAS_HOME/models is what `imagenet` loads."""
    from keras.src.legacy.saving import legacy_h5_format

    monkeypatch.setenv("KERAS_HOME", str(tmp_path))
    backbone = create_model("mobilenetv2").get_layer("backbone")
    spec = weights_module.imagenet_weights_spec("mobilenetv2", 50)
    assert spec.file_name == "mobilenet_v2_weights_tf_dim_ordering_tf_kernels_1.0_224_no_top.h5"
    (tmp_path / "models").mkdir()
    with h5py.File(tmp_path / "models" / spec.file_name, "w") as handle:
        legacy_h5_format.save_weights_to_hdf5_group(handle, backbone)

    model = create_model("mobilenetv2", weights="imagenet")
    for expected, loaded in zip(
        backbone.get_weights(), model.get_layer("backbone").get_weights(), strict=True
    ):
        np.testing.assert_array_equal(loaded, expected)


def test_imagenet_file_names_match_keras_sources() -> None:
    import keras.src.applications.resnet as resnet
    import keras.src.applications.vgg16 as vgg16

    specs = {name: entry.imagenet for name, entry in backbones.BACKBONES.items()}
    assert specs["vgg16"].url == vgg16.WEIGHTS_PATH_NO_TOP
    assert specs["resnet50"].url == resnet.BASE_WEIGHTS_PATH + specs["resnet50"].file_name
