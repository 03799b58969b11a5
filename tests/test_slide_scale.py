"""The model knows its scale: every trained model records `patch_px` / `patch_mpp` in its
logged metadata, its run's params and its registered version's tags; older models need an
explicit `--patch-mpp` or are refused in one line."""

from __future__ import annotations

from pathlib import Path

import pytest
from helpers_mlflow import tmp_store

from histomlf.config import KAGGLE_PATCH_MPP, ConfigError, TrainConfig
from histomlf.schema import ModelMeta
from histomlf.slides.reader import SlideError
from histomlf.tracking.slides import model_scale


def test_patch_mpp_is_a_data_option_with_the_kaggle_default() -> None:
    assert TrainConfig().patch_mpp == KAGGLE_PATCH_MPP == 4.0
    assert TrainConfig(patch_mpp=0.5).as_params()["patch_mpp"] == 0.5
    with pytest.raises(ConfigError, match="patch_mpp"):
        TrainConfig(patch_mpp=0)


def test_model_scale_reads_metadata_and_refuses_old_models_in_one_line() -> None:
    recorded = {ModelMeta.PATCH_PX: "50", ModelMeta.PATCH_MPP: "4.0"}
    assert model_scale(recorded, None) == (50, 4.0)
    assert model_scale(recorded, 4.0) == (50, 4.0)
    with pytest.raises(SlideError, match="contradicts"):
        model_scale(recorded, 2.0)
    with pytest.raises(SlideError, match="--patch-mpp") as info:
        model_scale({"model": "simplecnn"}, None)
    assert "\n" not in str(info.value)
    assert model_scale(None, 4.0) == (50, 4.0)


@pytest.mark.slow
def test_a_trained_model_records_its_scale_everywhere(
    tmp_path: Path, idc_sample: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """One tiny train (simplecnn, 1 epoch, 160 patches): metadata, params, version tags."""
    import mlflow
    from mlflow.tracking import MlflowClient

    from histomlf.recipes.train import train
    from histomlf.tracking.slides import load_slide_model

    monkeypatch.setenv("HISTOMLF_CACHE", str(tmp_path / "cache"))
    config = TrainConfig(
        epochs=1, batch_size=32, dense_units=8, max_samples=160, explain=False,
        early_stopping_patience=0, data_dir=str(idc_sample), register_as="scale-test",
        patch_mpp=3.9, experiment="scale",
    )  # fmt: skip
    with tmp_store(tmp_path):
        result = train(config)
        client = MlflowClient()
        params = client.get_run(result["run_id"]).data.params
        metadata = mlflow.models.get_model_info(result["model_uri"]).metadata
        version = client.get_model_version("scale-test", "1")
        slide_model = load_slide_model("models:/scale-test/1")
    assert (params[ModelMeta.PATCH_PX], params[ModelMeta.PATCH_MPP]) == ("50", "3.9")
    assert (metadata[ModelMeta.PATCH_PX], metadata[ModelMeta.PATCH_MPP]) == ("50", "3.9")
    assert version.tags[ModelMeta.PATCH_MPP] == "3.9"
    assert version.tags[ModelMeta.PATCH_PX] == "50"
    assert (slide_model.patch_px, slide_model.patch_mpp) == (50, 3.9)
    assert (slide_model.name, slide_model.version) == ("scale-test", "1")
