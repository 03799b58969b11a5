"""The train recipe from config to scored predictions, with no tracking in it.

`prepare_data` resolves the data (a folder, or a generated synthetic set), scans it, splits it
by patient and opens the packed patch cache; `fit_model` fits an already-built model on the
train split (the recipe's only fit: Keras Tuner trials call it too, after building the model in
`build(hp)`); `choose_threshold_on_val` picks the decision threshold; `evaluate_model` scores
val, test and train; `train_and_score` does it all. Everything a tracker needs comes back in
`TrainOutcome`; `histomlf.recipes.train` logs it. Callers pass Keras callbacks for live
per-epoch logging.
"""

from __future__ import annotations

import contextlib
import os
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from histomlf.config import DATA_DIR_ENV, TrainConfig
from histomlf.errors import UserError
from histomlf.evaluation.scored import Evaluation, SplitScores, evaluate_splits, score_split
from histomlf.memory import release_freed_memory
from histomlf.paths import cache_root

SYNTHETIC_DEFAULT = {"patients": 40, "patches_per_patient": 250, "seed": 7}
TRAIN_METRICS_MAX_ROWS = 20_000
SPLITS = ("train", "val", "test")


@dataclass
class PreparedData:
    """A scanned, split dataset ready for the pipeline."""

    data_dir: Path
    data_source: str
    manifest: pd.DataFrame
    split: pd.DataFrame
    rows: dict[str, pd.DataFrame]
    data_digest: str
    split_digest: str
    packed: Any | None
    scan_stats: dict[str, Any]


@dataclass
class TrainOutcome:
    """Everything a training run produced, for the tracker to log."""

    config: TrainConfig
    data: PreparedData
    model: Any
    fit: Any
    evaluation: Evaluation
    seconds: dict[str, float] = field(default_factory=dict)
    calibration: Calibration | None = None

    def metrics(self) -> dict[str, float]:
        """Final metrics under the `{split}_{name}` keys, CI bounds included."""
        return self.evaluation.metrics()


@dataclass(frozen=True)
class Calibration:
    """How a run's model was calibrated on its validation patients (`calibrate: platt`)."""

    platt: Any  # histomlf.evaluation.calibration.PlattMap (the identity when not fitted)
    status: str  # "platt", or "none: <why no fit was possible>"
    val_ece_uncalibrated: float
    val_probabilities: Any = None  # the uncalibrated validation probabilities it was fitted on

    def metrics(self) -> dict[str, float]:
        return {**self.platt.as_params(), "val_ece_uncalibrated": self.val_ece_uncalibrated}


def calibrate_on_val(
    model: Any, config: TrainConfig, data: PreparedData
) -> tuple[Any, Calibration | None]:
    """`config.calibrate == "platt"`: `model` with a Platt map fitted on the validation
    patients as its last layer (ranking unchanged; the threshold is then chosen on the
    calibrated validation scores, so labels are too). A validation split that cannot be
    fitted (one class, ranking no better than chance) leaves the model as it is, with why."""
    if config.calibrate != "platt":
        return model, None
    from histomlf.evaluation.calibration import PlattMap, fit_platt
    from histomlf.evaluation.metrics import expected_calibration_error
    from histomlf.models.averaging import with_calibration

    rows = data.rows["val"]
    labels = rows["label"].to_numpy()
    probabilities = predict_probabilities(model, rows, data, config.batch_size)
    uncalibrated = expected_calibration_error(labels, probabilities)
    try:
        platt = fit_platt(labels, probabilities)
    except ValueError as error:
        return model, Calibration(PlattMap(), f"none: {error}", uncalibrated, probabilities)
    calibrated = with_calibration(model, platt.slope, platt.intercept)
    return calibrated, Calibration(platt, "platt", uncalibrated, probabilities)


def resolve_data_dir(config: TrainConfig) -> tuple[Path, str]:
    """The folder to train on and where it came from: given, `$HISTOMLF_DATA_DIR`, or synthetic.

    An `s3://bucket/prefix` is synced incrementally into the cache (unchanged objects are not
    downloaded again) and scanned there like a local folder.

    With nothing configured a small synthetic set is generated once into the cache, so a bare
    `mlflow run .` works on a fresh machine; runs say `data_source=synthetic` so nobody mistakes
    its numbers for real ones.
    """
    given = config.data_dir or os.environ.get(DATA_DIR_ENV, "")
    if given.startswith("s3://"):
        from histomlf.data.s3sync import sync_s3_prefix

        local_dir, _ = sync_s3_prefix(given, cache_root() / "s3")
        return Path(local_dir), "s3"
    if given:
        return Path(given).expanduser().resolve(), "folder"
    from histomlf.data.synth import generate_dataset

    target = (
        cache_root()
        / "synthetic"
        / "default-{patients}x{patches_per_patient}-seed{seed}".format(**SYNTHETIC_DEFAULT)
    )
    marker = target / ".complete"
    if not marker.exists():
        generate_dataset(target, **SYNTHETIC_DEFAULT)
        marker.touch()
    return target, "synthetic"


def limit_rows(rows: pd.DataFrame, max_rows: int, seed: int) -> pd.DataFrame:
    """A label-stratified, seeded subsample of at most `max_rows` rows (all rows if 0)."""
    if not max_rows or len(rows) <= max_rows:
        return rows
    fraction = max_rows / len(rows)
    picked = rows.groupby("label", group_keys=False).sample(frac=fraction, random_state=seed)
    return picked.sort_index()


def prepare_data(
    config: TrainConfig,
    *,
    split: pd.DataFrame | None = None,
    required: tuple[str, ...] = SPLITS,
) -> PreparedData:
    """Scan the data, split it by patient (or use `split`), subsample, open the packed cache.

    Each split in `required` must have rows; a refit on every patient (`split` all `train`)
    requires only `train`.
    """
    from histomlf.data.manifest import dataset_digest
    from histomlf.data.scan import scan_to_cache
    from histomlf.data.splits import apply_split, make_patient_split, split_digest
    from histomlf.training.devices import training_strategy

    training_strategy(config.devices)  # before building the packed cache runs TensorFlow's first op
    data_dir, source = resolve_data_dir(config)
    scan = scan_to_cache(data_dir)
    manifest = scan.manifest
    if split is None:
        split = make_patient_split(
            manifest, config.val_fraction, config.test_fraction, seed=config.seed
        )
    assigned = apply_split(manifest, split)
    rows: dict[str, pd.DataFrame] = {}
    for name in SPLITS:
        part = assigned[assigned["split"] == name]
        share = len(part) / max(len(assigned), 1)
        budget = round(config.max_samples * share) if config.max_samples else 0
        rows[name] = limit_rows(part, max(budget, 2) if budget else 0, config.seed).reset_index(
            drop=True
        )
        if rows[name].empty and name in required:
            raise UserError(f"the {name} split is empty: too few patients for the fractions")
    packed = None
    if config.packed_cache:
        from histomlf.data.pipeline import open_packed

        # The whole manifest is packed once (folds and reruns share it); a subsampled run packs
        # only what it uses, so a 10k-patch recipe never decodes the other 267k patches.
        used = manifest if not config.max_samples else pd.concat(rows.values(), ignore_index=True)
        packed = open_packed(used, cache_root() / "packed")
    prepared = PreparedData(
        data_dir=data_dir,
        data_source=source,
        manifest=manifest,
        split=split,
        rows=rows,
        data_digest=dataset_digest(manifest),
        split_digest=split_digest(split),
        packed=packed,
        scan_stats=dict(scan.stats),
    )
    release_freed_memory()  # what reading and digesting the manifest freed, before the fit
    return prepared


def predict_probabilities(
    model: Any, rows: pd.DataFrame, data: PreparedData, batch_size: int
) -> np.ndarray:
    """IDC probabilities for `rows` in row order, streamed through the eval pipeline.

    `model` is a Keras model or a `CompiledPredictor`; pass the latter to score several splits
    with the same traced graphs (a Keras model is wrapped anew on every call).
    """
    from histomlf.data.pipeline import make_dataset
    from histomlf.models.inference import as_predictor

    predictor = as_predictor(model, batch_size)
    dataset = make_dataset(rows, batch_size=batch_size, training=False, packed=data.packed)
    chunks = [predictor(images) for images, _ in dataset]
    probabilities = np.concatenate(chunks) if chunks else np.zeros(0)
    if len(probabilities) != len(rows):
        raise RuntimeError(
            f"pipeline returned {len(probabilities)} predictions for {len(rows)} rows"
        )
    return probabilities.astype(np.float64)


def build_model(config: TrainConfig) -> Any:
    """The backbone `config` names, with its head, ready to fit."""
    from histomlf.models import create_model

    return create_model(
        config.model,
        weights=config.weights,
        image_size=config.image_size,
        dropout=config.dropout,
        dense_units=config.dense_units,
    )


def inference_model(model: Any, config: TrainConfig, fit_result: Any = None) -> Any:
    """What a fitted `model` is scored and logged as: itself, the mean of its snapshots
    (`config.snapshots` > 1: one member per cycle end, rebuilt from `fit_result`), and with
    `config.tta` around either (one Keras model averaging the 8 dihedral views); see
    `histomlf.models.averaging`."""
    from histomlf.models.averaging import average_members, with_tta

    snapshots = fit_result.snapshot_weights if fit_result is not None else ()
    if config.snapshots > 1 and len(snapshots) != config.snapshots:
        raise RuntimeError(
            f"snapshots={config.snapshots} but the fit saved {len(snapshots)} snapshot(s)"
        )
    if config.snapshots > 1:
        members = []
        for weights in snapshots:
            member = build_model(config)
            member.set_weights(weights)
            members.append(member)
        model = average_members(members, name=f"snapshots{config.snapshots}")
    return with_tta(model, config.tta)


def fit_model(
    model: Any,
    config: TrainConfig,
    data: PreparedData,
    *,
    work_dir: Path,
    callbacks: Sequence[Any] = (),
    initial_epoch: int = 0,
):
    """Fit an already-built `model` on the train split, validating on val; returns `FitResult`.

    Datasets, class weights and steps per epoch come from `config`, so a Keras Tuner trial and
    a train run with the same settings train on the same batches.
    """
    from histomlf.data.pipeline import class_weights, make_dataset, steps_per_epoch
    from histomlf.training.fit import fit

    train_rows, val_rows = data.rows["train"], data.rows["val"]
    train_ds = make_dataset(
        train_rows,
        batch_size=config.batch_size,
        training=True,
        augment=config.augment,
        balance=config.balance,
        seed=config.seed,
        packed=data.packed,
        repeat=True,
        mixup=config.mixup,
    )
    val_ds = (
        make_dataset(val_rows, batch_size=config.batch_size, training=False, packed=data.packed)
        if len(val_rows)
        else None  # a refit on every patient: no validation, no early stopping
    )
    weights = (
        class_weights(train_rows["label"].to_numpy()) if config.balance == "class_weight" else None
    )
    return fit(
        model,
        config,
        train_ds,
        val_ds,
        steps_per_epoch=steps_per_epoch(train_rows, config.batch_size, config.balance),
        class_weight=weights,
        callbacks=list(callbacks),
        work_dir=work_dir,
        initial_epoch=initial_epoch,
    )


def choose_threshold_on_val(
    model: Any, config: TrainConfig, data: PreparedData
) -> tuple[float, SplitScores]:
    """The decision threshold `config.threshold_policy` picks on the validation split, and
    the validation scores at it."""
    from histomlf.evaluation.threshold import choose_threshold

    rows = data.rows["val"]
    probabilities = predict_probabilities(model, rows, data, config.batch_size)
    threshold = float(
        choose_threshold(rows["label"].to_numpy(), probabilities, config.threshold_policy)
    )
    return threshold, score_split(rows, probabilities, threshold)


def evaluate_model(config: TrainConfig, data: PreparedData, model: Any) -> Evaluation:
    """Threshold on val, then val/test/train scores, per-patient metrics and patient CIs."""
    from histomlf.models.inference import as_predictor

    model = as_predictor(model, config.batch_size)  # traced once for all three splits
    threshold, val = choose_threshold_on_val(model, config, data)
    train_rows = limit_rows(data.rows["train"], TRAIN_METRICS_MAX_ROWS, config.seed).reset_index(
        drop=True
    )
    splits = {"train": train_rows, "test": data.rows["test"]}
    scored = {
        name: score_split(
            rows, predict_probabilities(model, rows, data, config.batch_size), threshold
        )
        for name, rows in splits.items()
    }
    return evaluate_splits(
        {"train": scored["train"], "val": val, "test": scored["test"]},
        threshold,
        focus="test",
        seed=config.seed,
    )


def fit_recipe(
    config: TrainConfig,
    data: PreparedData,
    *,
    work_dir: Path,
    callbacks: Sequence[Any] = (),
) -> tuple[Any, Any]:
    """Build `config`'s model, fit it on `data` under the strategy of `config.devices`, and
    return `(inference model, FitResult)` — the recipe's training, shared by a train run and
    the refit of a CV-final model (whose data has no validation split)."""
    from histomlf.training.devices import check_replica_batches, replicas, training_strategy

    strategy = training_strategy(config.devices)
    check_replica_batches(
        config.batch_size,
        {name: len(data.rows[name]) for name in ("train", "val") if len(data.rows[name])},
        replicas(strategy),
    )
    # Under `devices` other than one device, the model is built, compiled and fitted inside
    # the tf.distribute strategy's scope; Keras splits each global batch across the replicas.
    with strategy.scope() if strategy is not None else contextlib.nullcontext():
        model = build_model(config)
        fit_result = fit_model(model, config, data, work_dir=work_dir, callbacks=callbacks)
    return inference_model(model, config, fit_result), fit_result


def train_and_score(
    config: TrainConfig,
    *,
    work_dir: Path,
    callbacks: Sequence[Any] = (),
    data: PreparedData | None = None,
) -> TrainOutcome:
    """Run the whole recipe and return what it produced; logs nothing."""
    from histomlf.training.devices import training_strategy
    from histomlf.training.fit import make_deterministic

    training_strategy(config.devices)  # first: splitting the CPU precedes any TF op
    make_deterministic(config.seed)
    started = time.perf_counter()
    data = data or prepare_data(config)
    prepared = time.perf_counter()
    model, fit_result = fit_recipe(config, data, work_dir=work_dir, callbacks=callbacks)
    fitted = time.perf_counter()
    model, calibration = calibrate_on_val(model, config, data)
    evaluation = evaluate_model(config, data, model)
    done = time.perf_counter()
    return TrainOutcome(
        config=config,
        data=data,
        model=model,
        fit=fit_result,
        evaluation=evaluation,
        seconds={"data": prepared - started, "fit": fitted - prepared, "evaluate": done - fitted},
        calibration=calibration,
    )
