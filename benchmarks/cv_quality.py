"""Quality by patient-level cross-validation: training recipes against baselines, paired by fold.

Every candidate runs as `mlflow run . -e cv` into one MLflow experiment (`recipe-study` unless
told), on the same seeded patient folds, so the MLflow UI compares them directly; the baselines
(scikit-learn on hand-made features, same folds, same validation-chosen threshold) are logged
there too. Results are written to the JSON file after every candidate, so a long study keeps
what it measured if it is stopped.

Two stages (issue 12): a cheap *screen* of every candidate on some folds of the 5-fold split
with fewer epochs, then the *full* 5-fold CV of the best few and the current default:

    d=/tmp/idc-219; mkdir -p $d && cp -r ../shared/idc-sample/. ../shared/idc-more/. $d/
    python -m benchmarks.cv_quality --data-dir $d --stage screen --only-folds 1,2 --epochs 10 \\
        --candidates all --baselines all --store /tmp/recipe-study \\
        --json benchmarks/results/recipe_screen.json
    python -m benchmarks.cv_quality --data-dir $d --stage full \\
        --candidates default,vgg50px-hed-strong,... --baselines all \\
        --store /tmp/recipe-study --json benchmarks/results/recipe_full.json

Without options it runs the short comparison the README quotes (the default recipe, a one-epoch
simplecnn and the colour-histogram baseline, 5 folds of ../shared/idc-sample). `--table JSON`
prints the table of an earlier run without training anything.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import resource
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

import numpy as np

REPO_ROOT = Path(__file__).resolve().parents[1]
# The metrics the study reports, as logged by the cv recipe's fold runs (recall = sensitivity).
FOLD_KEYS = (
    "test_roc_auc",
    "test_pr_auc",
    "test_balanced_accuracy",
    "test_f1",
    "test_recall",
    "test_specificity",
)
LABELS = {
    "test_roc_auc": "ROC-AUC",
    "test_pr_auc": "PR-AUC",
    "test_balanced_accuracy": "bal. acc.",
    "test_f1": "F1",
    "test_recall": "sens.",
    "test_specificity": "spec.",
}
# Training recipes: overrides of an experiment file (`experiment`, default experiments/default.yaml)
# passed as `mlflow run -P key=value`. `baseline` ones keep their epochs in a screen.
# The study (issue 12) started from the default recipe of its day; every candidate but the
# baselines is pinned to it, so a rerun compares the same recipes after the default changed
# (the study's winner, `hed-strong-60-epochs`, is today's experiments/default.yaml).
STUDY_BASE = {"augment": "light", "epochs": "30"}
CANDIDATES: dict[str, dict[str, str]] = {
    "default": {},
    "hed-strong": {"augment": "strong"},
    "hed-strong-60-epochs": {"augment": "strong", "epochs": "60"},
    "hed-strong-90-epochs": {"augment": "strong", "epochs": "90"},
    "hed-stronger": {"augment": "stronger"},
    "smooth-decay": {"label_smoothing": "0.1", "weight_decay": "0.0001"},
    "mixup": {"mixup": "0.2"},
    "snapshots3": {"snapshots": "3"},
    "vgg50px": {"model": "vgg50px", "epochs": "20"},
    "vgg50px-hed-strong": {"model": "vgg50px", "epochs": "20", "augment": "strong"},
    "vgg50px-hed-stronger": {"model": "vgg50px", "epochs": "20", "augment": "stronger"},
    "vgg50px-hed-strong-smooth-decay": {
        "model": "vgg50px",
        "epochs": "20",
        "augment": "strong",
        "label_smoothing": "0.1",
        "weight_decay": "0.0001",
    },
    "vgg50px-hed-strong-snapshots2": {
        "model": "vgg50px",
        "epochs": "20",
        "augment": "strong",
        "snapshots": "2",
    },
    "vgg50px-hed-strong-tta": {
        "model": "vgg50px",
        "epochs": "20",
        "augment": "strong",
        "tta": "dihedral8",
    },
    "simplecnn-100px": {"image_size": "100"},
    "vgg50px-100px": {"model": "vgg50px", "epochs": "20", "image_size": "100"},
    "wide-head": {"dense_units": "256", "dropout": "0.1"},
    "wide-head-hed-strong": {"dense_units": "256", "dropout": "0.1", "augment": "strong"},
    "vgg50px-wide-head-hed-strong": {
        "model": "vgg50px",
        "epochs": "30",
        "dense_units": "256",
        "dropout": "0.1",
        "augment": "strong",
    },
    "wide-head-hed-strong-snapshots3": {
        "dense_units": "256",
        "dropout": "0.1",
        "augment": "strong",
        "snapshots": "3",
    },
    "vgg50px-wide-head-hed-strong-snapshots3": {
        "model": "vgg50px",
        "epochs": "30",
        "dense_units": "256",
        "dropout": "0.1",
        "augment": "strong",
        "snapshots": "3",
    },
    "one-epoch": {"experiment": "smoke", "max_samples": "0", "epochs": "1", "batch_size": "64"},
}
BASELINE_CANDIDATES = ("one-epoch",)


def machine() -> str:
    return f"{os.cpu_count()} CPU cores ({platform.processor() or platform.machine()}), no GPU"


def child_cpu_seconds() -> float:
    usage = resource.getrusage(resource.RUSAGE_CHILDREN)
    return usage.ru_utime + usage.ru_stime


def tracking_env(store: Path) -> dict[str, str]:
    return {
        **os.environ,
        "MLFLOW_TRACKING_URI": f"sqlite:///{store}/mlflow.db",
        "HISTOMLF_CACHE": str(store / "cache"),
        "PATH": f"{Path(sys.executable).parent}{os.pathsep}{os.environ['PATH']}",
    }


def study_experiment(store: Path, name: str) -> str:
    """The id of the study's MLflow experiment in `store`, created on first use."""
    from mlflow.tracking import MlflowClient

    client = MlflowClient(f"sqlite:///{store}/mlflow.db")
    experiment = client.get_experiment_by_name(name)
    if experiment is not None:
        return experiment.experiment_id
    return client.create_experiment(name, artifact_location=str(store / "artifacts" / name))


def run_cv(
    store: Path, experiment_name: str, candidate: str, params: dict[str, str], stage: str
) -> dict[str, Any]:
    """`mlflow run . -e cv` for one candidate; its parent run id, fold metrics and times."""
    from mlflow.tracking import MlflowClient

    study_experiment(store, experiment_name)
    command = [sys.executable, "-m", "mlflow", "run", str(REPO_ROOT), "-e", "cv"]
    command += ["--env-manager", "local", "--experiment-name", experiment_name]
    command += ["--run-name", f"{stage}-{candidate}"]
    for key, value in params.items():
        command += ["-P", f"{key}={value}"]
    cpu_before, started = child_cpu_seconds(), time.perf_counter()
    done = subprocess.run(
        command, env=tracking_env(store), capture_output=True, text=True, timeout=4 * 3600
    )
    seconds, cpu_seconds = time.perf_counter() - started, child_cpu_seconds() - cpu_before
    if done.returncode != 0:
        raise RuntimeError(f"{candidate}: mlflow run failed\n{done.stderr[-4000:]}")
    run_id = next(
        line.split()[1] for line in reversed(done.stdout.splitlines()) if line.startswith("run ")
    )
    client = MlflowClient(f"sqlite:///{store}/mlflow.db")
    client.set_tag(run_id, "histomlf.study_candidate", candidate)
    client.set_tag(run_id, "histomlf.study_stage", stage)
    parent = client.get_run(run_id)
    children = client.search_runs(
        [parent.info.experiment_id], f"tags.mlflow.parentRunId = '{run_id}'"
    )
    children.sort(key=lambda child: int(child.data.tags["histomlf.fold"]))
    return {
        "run_id": run_id,
        "params": params,
        "fold_run_ids": [child.info.run_id for child in children],
        "folds": [int(child.data.tags["histomlf.fold"]) + 1 for child in children],
        "per_fold": {key: [child.data.metrics[key] for child in children] for key in FOLD_KEYS},
        "fit_seconds": [child.data.metrics.get("seconds_fit", np.nan) for child in children],
        "seconds": seconds,
        "cpu_seconds": cpu_seconds,
    }


# What makes two results files one study: the same data, folds and seed.
STUDY_KEYS = ("data", "folds", "only_folds", "seed")


def same_study(one: dict[str, Any], other: dict[str, Any]) -> bool:
    return all(one.get(key) == other.get(key) for key in STUDY_KEYS)


def summary(result: dict[str, Any]) -> dict[str, float]:
    """`<metric>_mean` / `<metric>_sd` over a result's folds, plus its wall `seconds`."""
    out = {"seconds": result["seconds"]}
    for key, values in result["per_fold"].items():
        out[f"{key}_mean"] = float(np.mean(values))
        out[f"{key}_sd"] = float(np.std(values, ddof=1)) if len(values) > 1 else 0.0
    return out


def rgb_patches(data_dir: Path) -> tuple[Any, np.ndarray]:
    """The scanned manifest and its patches as one uint8 array (border crops padded)."""
    from PIL import Image

    from histomlf.data.patches import pad_to_patch
    from histomlf.data.scan import scan_to_cache

    manifest = scan_to_cache(data_dir).manifest
    images = np.stack(
        [pad_to_patch(np.asarray(Image.open(p).convert("RGB"))) for p in manifest["path"]]
    )
    return manifest, images


def colour_histograms(images: np.ndarray) -> np.ndarray:
    """3 x 16-bin RGB histograms per patch."""
    return np.stack(
        [
            np.concatenate(
                [
                    np.histogram(channel, bins=16, range=(0, 256), density=True)[0]
                    for channel in np.moveaxis(image, -1, 0)
                ]
            )
            for image in images
        ]
    )


def colour_texture_features(images: np.ndarray) -> np.ndarray:
    """Colour histograms, HSV moments, uniform LBP histograms and GLCM statistics (scikit-image)."""
    from skimage.color import rgb2gray, rgb2hsv
    from skimage.feature import graycomatrix, graycoprops, local_binary_pattern

    rows = []
    for image in images:
        hsv = rgb2hsv(image).reshape(-1, 3)
        grey = (rgb2gray(image) * 255).astype(np.uint8)
        lbp = [
            np.histogram(
                local_binary_pattern(grey, 8 * radius, radius, "uniform"),
                bins=8 * radius + 2,
                range=(0, 8 * radius + 2),
                density=True,
            )[0]
            for radius in (1, 2)
        ]
        glcm = graycomatrix(
            grey // 8, [1, 2, 4], [0, np.pi / 4, np.pi / 2, 3 * np.pi / 4], levels=32, normed=True
        )
        props = [
            graycoprops(glcm, prop).mean(axis=1)
            for prop in ("contrast", "homogeneity", "energy", "correlation")
        ]
        rows.append(
            np.concatenate([hsv.mean(0), hsv.std(0), *lbp, *props, [grey.std(), grey.mean()]])
        )
    return np.concatenate([colour_histograms(images), np.nan_to_num(np.stack(rows))], axis=1)


def logistic_regression() -> Any:
    from sklearn.linear_model import LogisticRegression
    from sklearn.pipeline import make_pipeline
    from sklearn.preprocessing import StandardScaler

    return make_pipeline(
        StandardScaler(), LogisticRegression(max_iter=2000, class_weight="balanced")
    )


def gradient_boosting() -> Any:
    from sklearn.ensemble import HistGradientBoostingClassifier

    return HistGradientBoostingClassifier(
        max_iter=300, learning_rate=0.05, class_weight="balanced", random_state=0
    )


FEATURE_BASELINES: dict[str, tuple[Callable[[np.ndarray], np.ndarray], Callable[[], Any]]] = {
    "logistic regression on colour histograms": (colour_histograms, logistic_regression),
    "gradient boosting on colour + texture": (colour_texture_features, gradient_boosting),
}


def feature_baseline(
    name: str,
    manifest: Any,
    images: np.ndarray,
    folds: int,
    only_folds: list[int],
    seed: int,
    val_fraction: float,
) -> dict[str, Any]:
    """A scikit-learn model on the same patient folds as `cv`, threshold chosen on validation."""
    from histomlf.data.splits import apply_split, patient_kfold
    from histomlf.evaluation.metrics import classification_metrics
    from histomlf.evaluation.threshold import choose_threshold

    featurise, make_model = FEATURE_BASELINES[name]
    cpu_before, started = time.process_time(), time.perf_counter()
    features = featurise(images)
    labels = manifest["label"].to_numpy()
    scores, fit_seconds = [], []
    splits = patient_kfold(manifest, folds, seed=seed, val_fraction=val_fraction)
    for fold in only_folds:
        assigned = apply_split(manifest, splits[fold - 1])["split"].to_numpy()
        fit_started = time.perf_counter()
        model = make_model().fit(features[assigned == "train"], labels[assigned == "train"])
        fit_seconds.append(time.perf_counter() - fit_started)
        val_p = model.predict_proba(features[assigned == "val"])[:, 1]
        threshold = choose_threshold(labels[assigned == "val"], val_p, "youden")
        test_p = model.predict_proba(features[assigned == "test"])[:, 1]
        scores.append(classification_metrics(labels[assigned == "test"], test_p, threshold))
    return {
        "folds": list(only_folds),
        "per_fold": {k: [float(s[k.removeprefix("test_")]) for s in scores] for k in FOLD_KEYS},
        "fit_seconds": fit_seconds,
        "seconds": time.perf_counter() - started,
        "cpu_seconds": time.process_time() - cpu_before,
    }


def log_baseline(store: Path, experiment_name: str, name: str, stage: str, result: dict) -> str:
    """A feature baseline as a run of the study's experiment, beside the CNN candidates."""
    from mlflow.tracking import MlflowClient

    client = MlflowClient(f"sqlite:///{store}/mlflow.db")
    run = client.create_run(
        study_experiment(store, experiment_name),
        run_name=f"{stage}-baseline-{name.split()[0]}",
        tags={
            "histomlf.kind": "cv-baseline",
            "histomlf.study_candidate": name,
            "histomlf.study_stage": stage,
        },
    )
    for key, value in summary(result).items():
        if key != "seconds":
            client.log_metric(run.info.run_id, key, value)
    client.log_param(run.info.run_id, "folds", ",".join(map(str, result["folds"])))
    client.set_terminated(run.info.run_id)
    return run.info.run_id


def rescore_with_tta(
    store: Path, result: dict[str, Any], manifest: Any, images: np.ndarray
) -> dict[str, Any]:
    """The same fold models scored again, plain and with 8-fold dihedral TTA: a paired measure
    of TTA that no retraining noise blurs. Each fold's threshold is chosen on its validation
    split with the model scored (plain or TTA), as in training. The plain rescoring must equal
    the logged fold metrics (checked), which proves the split and decoding match the run's."""
    import mlflow

    from histomlf.data.splits import apply_split, load_split
    from histomlf.evaluation.metrics import classification_metrics
    from histomlf.evaluation.threshold import choose_threshold
    from histomlf.models.averaging import with_tta
    from histomlf.models.inference import CompiledPredictor

    mlflow.set_tracking_uri(f"sqlite:///{store}/mlflow.db")
    client = mlflow.MlflowClient()
    labels = manifest["label"].to_numpy()
    scores: dict[str, list[dict[str, float]]] = {"plain": [], "tta": []}
    cpu_before, started = time.process_time(), time.perf_counter()
    for run_id in result["fold_run_ids"]:
        with tempfile.TemporaryDirectory() as tmp:
            split = load_split(Path(client.download_artifacts(run_id, "data/split.csv", tmp)))
        assigned = apply_split(manifest, split)["split"].to_numpy()
        loaded = mlflow.pyfunc.load_model(f"runs:/{run_id}/model")
        keras_model = loaded.unwrap_python_model().keras_model
        for kind, model in (("plain", keras_model), ("tta", with_tta(keras_model, "dihedral8"))):
            predict = CompiledPredictor(model)
            val_p = predict(images[assigned == "val"].astype(np.float32))
            threshold = choose_threshold(labels[assigned == "val"], val_p, "youden")
            test_p = predict(images[assigned == "test"].astype(np.float32))
            scores[kind].append(
                classification_metrics(labels[assigned == "test"], test_p, threshold)
            )
    logged = np.asarray(result["per_fold"]["test_roc_auc"])
    rescored = np.asarray([s["roc_auc"] for s in scores["plain"]])
    if not np.allclose(logged, rescored, atol=1e-4):
        raise RuntimeError(f"rescoring does not match the logged ROC-AUC: {rescored} vs {logged}")
    seconds, cpu_seconds = time.perf_counter() - started, time.process_time() - cpu_before
    return {
        kind: {
            "folds": result["folds"],
            "run_id": result["run_id"],
            "per_fold": {k: [float(s[k.removeprefix("test_")]) for s in rows] for k in FOLD_KEYS},
            "fit_seconds": [],
            "seconds": seconds,
            "cpu_seconds": cpu_seconds,
        }
        for kind, rows in scores.items()
    }


def mean_sd(values: list[float]) -> str:
    array = np.asarray(values, dtype=float)
    sd = array.std(ddof=1) if len(array) > 1 else 0.0
    return f"{array.mean():.3f} ± {sd:.3f}"


def paired(values: list[float], reference: list[float]) -> str:
    """Per-fold differences (candidate - reference): mean, and how many folds improved."""
    diff = np.asarray(values, dtype=float) - np.asarray(reference, dtype=float)
    return f"{diff.mean():+.3f} ({int((diff > 0).sum())}/{len(diff)} folds up)"


def markdown(payload: dict[str, Any], reference: str = "default") -> str:
    """The table as Markdown for docs/benchmarks.md: ranked by mean ROC-AUC, with the paired
    per-fold ROC-AUC / balanced-accuracy / F1 differences against `reference`."""
    results = payload["results"]
    base = results.get(reference)
    head = ["candidate", *(LABELS[k] for k in FOLD_KEYS), "fit s/fold", "CPU s", "Δ vs default"]
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" + "---:|" * (len(head) - 1)]
    ranked = sorted(
        results.items(), key=lambda item: -float(np.mean(item[1]["per_fold"]["test_roc_auc"]))
    )
    for name, result in ranked:
        cells = [mean_sd(result["per_fold"][k]) for k in FOLD_KEYS]
        fit = f"{np.mean(result['fit_seconds']):.0f}" if result["fit_seconds"] else "–"
        delta = "–"
        if base is not None and name != reference and result["folds"] == base["folds"]:
            delta = " / ".join(
                f"{np.mean(np.subtract(result['per_fold'][k], base['per_fold'][k])):+.3f}"
                for k in ("test_roc_auc", "test_balanced_accuracy", "test_f1")
            )
        lines.append(
            f"| {name} (`{result.get('run_id', '')[:8]}`) | " + " | ".join(cells)
            + f" | {fit} | {result['cpu_seconds']:.0f} | {delta} |"
        )
    return "\n".join(lines)


def merged(paths: list[Path]) -> dict[str, Any]:
    """Several results files of the same folds and seed as one payload."""
    payloads = [json.loads(path.read_text()) for path in paths]
    first = payloads[0]
    for other in payloads[1:]:
        if not same_study(first, other):
            raise SystemExit(f"results of other folds or data cannot share a table: {paths}")
        first["results"].update(other["results"])
    return first


def table(payload: dict[str, Any], reference: str = "default") -> str:
    """The results table: mean ± sd per metric, train/wall/CPU time, paired deltas vs reference."""
    results = payload["results"]
    lines = [
        f"{payload['stage']} stage, folds {payload['only_folds']} of a {payload['folds']}-fold "
        f"patient split (seed {payload['seed']}), {payload['data']} — {payload['machine']}",
        f"{'candidate':50s} "
        + " ".join(f"{LABELS[k]:>13s}" for k in FOLD_KEYS)
        + f" {'fit s/fold':>10s} {'wall s':>7s} {'CPU s':>7s}  run",
    ]
    ranked = sorted(
        results.items(), key=lambda item: -float(np.mean(item[1]["per_fold"]["test_roc_auc"]))
    )
    for name, result in ranked:
        cells = " ".join(f"{mean_sd(result['per_fold'][k]):>13s}" for k in FOLD_KEYS)
        fit = float(np.mean(result["fit_seconds"])) if result["fit_seconds"] else np.nan
        lines.append(
            f"{name:50s} {cells} {fit:10.0f} {result['seconds']:7.0f} "
            f"{result['cpu_seconds']:7.0f}  {result.get('run_id', '')}"
        )
    if reference in results:
        base = results[reference]["per_fold"]
        lines.append(f"\npaired per-fold differences against {reference!r}:")
        for name, result in ranked:
            if name == reference or result["folds"] != results[reference]["folds"]:
                continue
            deltas = ", ".join(
                f"{LABELS[k]} {paired(result['per_fold'][k], base[k])}"
                for k in ("test_roc_auc", "test_balanced_accuracy", "test_f1")
            )
            lines.append(f"  {name:48s} {deltas}")
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--data-dir", type=Path, default=REPO_ROOT.parent / "shared" / "idc-sample")
    parser.add_argument("--folds", type=int, default=5)
    parser.add_argument("--only-folds", default="", help="e.g. 1,2 (default: every fold)")
    parser.add_argument("--seed", type=int, default=42)
    parser.add_argument("--stage", default="full", help="a label: screen or full")
    parser.add_argument(
        "--candidates",
        default="default,one-epoch",
        help=f"comma-separated, or 'all'; from: {', '.join(CANDIDATES)}",
    )
    parser.add_argument("--epochs", type=int, help="override every non-baseline candidate's")
    parser.add_argument(
        "--log-models", action="store_true", help="log every fold's model (for --tta-of)"
    )
    parser.add_argument(
        "--baselines",
        default="logistic regression on colour histograms",
        help="comma-separated feature baselines, 'all' or 'none'",
    )
    parser.add_argument("--experiment-name", default="recipe-study")
    parser.add_argument("--store", type=Path, help="tracking store folder (default: a tmp dir)")
    parser.add_argument("--json", type=Path, help="results file, rewritten after each candidate")
    parser.add_argument(
        "--table", type=Path, nargs="+", help="print the table of earlier JSON files and stop"
    )
    parser.add_argument("--markdown", action="store_true", help="--table as Markdown")
    parser.add_argument(
        "--tta-of",
        help="rescore this finished candidate's fold models (from --json and --store) plain "
        "and with dihedral8 TTA, and add both as rows",
    )
    args = parser.parse_args()
    if args.table:
        payload = merged(args.table)
        print(markdown(payload) if args.markdown else table(payload))
        return
    names = list(CANDIDATES) if args.candidates == "all" else args.candidates.split(",")
    unknown = [name for name in names if name and name not in CANDIDATES]
    if unknown:
        parser.error(f"unknown candidate(s) {unknown}; known: {', '.join(CANDIDATES)}")
    baselines = {"all": list(FEATURE_BASELINES), "none": []}.get(
        args.baselines, args.baselines.split(",")
    )
    only_folds = [int(f) for f in args.only_folds.split(",") if f] or list(
        range(1, args.folds + 1)
    )
    data = str(args.data_dir.resolve())
    with tempfile.TemporaryDirectory() as tmp:
        store = (args.store or Path(tmp)).resolve()
        store.mkdir(parents=True, exist_ok=True)
        payload = {
            "machine": machine(),
            "date": datetime.now(timezone.utc).strftime("%Y-%m-%d"),
            "data": data,
            "stage": args.stage,
            "folds": args.folds,
            "only_folds": only_folds,
            "seed": args.seed,
            "epochs_override": args.epochs,
            "results": {},
        }
        if args.json and args.json.exists():
            previous = json.loads(args.json.read_text())
            if same_study(previous, payload):
                payload["results"] = previous["results"]  # add to the same study

        def record(name: str, result: dict[str, Any]) -> None:
            payload["results"][name] = result
            if args.json:  # merged with what another process of the same study wrote since
                on_disk = json.loads(args.json.read_text()) if args.json.exists() else {}
                if same_study(on_disk, payload):
                    payload["results"] = {**on_disk["results"], **payload["results"]}
                args.json.parent.mkdir(parents=True, exist_ok=True)
                args.json.write_text(json.dumps(payload, indent=2))
            roc = mean_sd(result["per_fold"]["test_roc_auc"])
            print(f"[{time.strftime('%H:%M:%S')}] {name}: ROC-AUC {roc}", flush=True)

        if args.tta_of:
            manifest, images = rgb_patches(args.data_dir)
            rescored = rescore_with_tta(store, payload["results"][args.tta_of], manifest, images)
            record(f"{args.tta_of} (rescored, plain)", rescored["plain"])
            record(f"{args.tta_of} + tta=dihedral8 (same models)", rescored["tta"])
            print(table(payload, reference=f"{args.tta_of} (rescored, plain)"))
            return
        common = {"data_dir": data, "folds": str(args.folds), "seed": str(args.seed)}
        if args.log_models:
            common["log_models"] = "true"
        if len(only_folds) < args.folds:
            common["only_folds"] = ",".join(map(str, only_folds))
        if baselines:
            manifest, images = rgb_patches(args.data_dir)
            for name in baselines:
                result = feature_baseline(
                    name, manifest, images, args.folds, only_folds, args.seed, 0.15
                )
                result["run_id"] = log_baseline(
                    store, args.experiment_name, name, args.stage, result
                )
                record(f"baseline: {name}", result)
        for name in filter(None, names):
            base = {} if name in BASELINE_CANDIDATES else STUDY_BASE
            params = {**common, **base, **CANDIDATES[name]}
            if args.epochs and name not in BASELINE_CANDIDATES:
                params["epochs"] = str(args.epochs)
            label = f"baseline: {name}" if name in BASELINE_CANDIDATES else name
            record(label, run_cv(store, args.experiment_name, name, params, args.stage))
        print(table(payload))


if __name__ == "__main__":
    main()
