"""Serving latency and throughput: `mlflow models serve` of a histomlf model, against the same
Keras model in-process and against MLflow's stock `mlflow.keras` pyfunc of the same network.

    .venv/bin/python -m benchmarks.serving [--quick] [--json out.json]

One simplecnn (the default recipe's head; random weights: speed does not depend on them) is
logged twice into a fresh sqlite store: as histomlf's `IdcPatchClassifier` (base64 PNG in,
`log_patch_classifier`) and with `mlflow.keras.log_model(model, name=..., signature=...)`
(float32 tensor [N, 50, 50, 3] in; no input_example, which crashes; its server imports
histomlf.models first, see `stock_env`). Each is served by a real
`mlflow models serve --env-manager local` (tests/helpers_mlflow.serve: own process group,
killed afterwards) and called over HTTP, one request at a time, with real sample patches:
  * single patch: p50/p99 latency over >= 200 requests (after 5 untimed), client included
    (JSON encoding, a new localhost connection per request: what curl pays);
  * batch: 256 patches per request (base64 PNGs / a nested float list), patches/s.
The in-process baseline calls `model(x, training=False)` on the already-decoded float32 batch.
Targets: histomlf single p50 <= 30 ms; batch-256 >= 0.5x in-process; faster than stock.
"""

from __future__ import annotations

import base64
import os
import tempfile
import time
from pathlib import Path
from typing import Any

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")

from benchmarks.common import cli, latencies_ms, row, sample_rows, summary_ms  # noqa: E402

FULL = {"single": 250, "batches": 10, "batch": 256, "stock": True}
QUICK = {"single": 20, "batches": 2, "batch": 256, "stock": False}


def log_models(store: Path) -> tuple[str, str, Any]:
    """Log the histomlf and the stock pyfunc of one simplecnn; (histomlf URI, stock URI, model)."""
    import mlflow
    import numpy as np
    from mlflow.models import infer_signature

    from histomlf.config import load_experiment
    from histomlf.models import create_model
    from histomlf.tracking.pyfunc import log_patch_classifier, pinned_requirements

    config, _ = load_experiment("default")
    model = create_model(config.model, weights="none", image_size=50, dropout=config.dropout,
                         dense_units=config.dense_units)  # fmt: skip
    mlflow.set_tracking_uri(f"sqlite:///{store}/mlflow.db")
    experiment = mlflow.create_experiment("serving", artifact_location=str(store / "artifacts"))
    signature = infer_signature(
        np.zeros((1, 50, 50, 3), np.float32), np.zeros((1, 1), np.float32)
    )
    with mlflow.start_run(experiment_id=experiment):
        ours = log_patch_classifier(model, threshold=0.5).model_uri
        stock = mlflow.keras.log_model(
            model, name="stock", signature=signature, pip_requirements=pinned_requirements()
        ).model_uri
    return ours, stock, model


def stock_env(store: Path) -> dict[str, str]:
    """Server env importing histomlf.models first (a `sitecustomize` on PYTHONPATH).

    The stock flavor cannot deserialize histomlf's custom `PixelPreprocess` layer unless its
    module was imported (mlflow.keras.log_model has no code_paths); a stock user would have to
    do the same.
    """
    folder = store / "stock-site"
    folder.mkdir(exist_ok=True)
    (folder / "sitecustomize.py").write_text("import histomlf.models.heads  # noqa: F401\n")
    paths = [str(folder), os.environ.get("PYTHONPATH", "")]
    return {"PYTHONPATH": os.pathsep.join(p for p in paths if p)}


def measure_server(url: str, single: Any, batch: Any, plan: dict[str, Any]) -> dict[str, Any]:
    """Latencies of single-patch requests and patches/s of batch requests to one server."""
    from tests.helpers_mlflow import post_json

    def call(payload: Any) -> None:
        reply = post_json(f"{url}/invocations", payload)
        if reply.status != 200:
            raise RuntimeError(f"{url} answered {reply.status}: {reply.body[:300]}")

    single_ms = latencies_ms(lambda: call(single), plan["single"], warmup=5)
    batch_ms = latencies_ms(lambda: call(batch), plan["batches"], warmup=1)
    return {**summary_ms(single_ms), "batch_per_s": plan["batch"] / (min(batch_ms) / 1e3),
            "batch_ms": batch_ms}  # fmt: skip


def run(quick: bool) -> dict[str, Any]:
    import numpy as np

    from histomlf.data.pipeline import make_dataset
    from tests.helpers_mlflow import serve

    plan = QUICK if quick else FULL
    rows = sample_rows().sample(n=plan["batch"], random_state=0).reset_index(drop=True)
    images = next(iter(make_dataset(rows, batch_size=len(rows), training=False)))[0].numpy()
    encoded = [base64.b64encode(Path(p).read_bytes()).decode() for p in rows["path"]]
    ours_single = {"dataframe_split": {"columns": ["image"], "data": [[encoded[0]]]}}
    ours_batch = {"dataframe_split": {"columns": ["image"], "data": [[e] for e in encoded]}}
    floats = images.astype(np.float32)
    stock_single = {"inputs": floats[:1].tolist()}
    stock_batch = {"inputs": floats.tolist()}

    results: dict[str, Any] = {"plan": plan}
    with tempfile.TemporaryDirectory(prefix="histomlf-serve-bench-") as tmp:
        store = Path(tmp)
        ours_uri, stock_uri, model = log_models(store)
        single_ms = latencies_ms(lambda: model(floats[:1], training=False), plan["single"], 5)
        batch_ms = latencies_ms(lambda: model(floats, training=False), plan["batches"], 1)
        results["in_process"] = {**summary_ms(single_ms),
                                 "batch_per_s": plan["batch"] / (min(batch_ms) / 1e3)}  # fmt: skip
        tracking = f"sqlite:///{store}/mlflow.db"
        servers = {"histomlf": (ours_uri, ours_single, ours_batch)}
        if plan["stock"]:
            servers["stock"] = (stock_uri, stock_single, stock_batch)
        for name, (uri, single, batch) in servers.items():
            started = time.perf_counter()
            env = stock_env(store) if name == "stock" else None
            with serve(uri, tracking_uri=tracking, log_dir=store, extra_env=env) as served:
                results[name] = measure_server(served.url, single, batch, plan)
                results[name]["startup_s"] = served.startup_s
            results[name]["total_s"] = time.perf_counter() - started
    return {"benchmark": "serving", "rows": table(results, plan), "details": results}


def table(results: dict[str, Any], plan: dict[str, Any]) -> list[dict[str, Any]]:
    ours, local = results["histomlf"], results["in_process"]
    n = f"{ours['count']} requests"
    rows = [
        row("serving", "histomlf serve, 1 patch p50", ours["p50_ms"], "ms",
            baseline=local["p50_ms"], baseline_name="Keras in-process p50", target="<= 30 ms",
            met=ours["p50_ms"] <= 30, note=n),
        row("serving", "histomlf serve, 1 patch p99", ours["p99_ms"], "ms",
            baseline=local["p99_ms"], baseline_name="Keras in-process p99", note=n),
        row("serving", f"histomlf serve, batch {plan['batch']} base64", ours["batch_per_s"],
            "patches/s", baseline=local["batch_per_s"], baseline_name="Keras in-process",
            target=">= 0.5x", met=ours["batch_per_s"] >= 0.5 * local["batch_per_s"],
            note=f"best of {plan['batches']}"),
    ]  # fmt: skip
    if "stock" in results:
        stock = results["stock"]
        rows += [
            row("serving", "histomlf vs stock mlflow.keras, 1 patch p50", ours["p50_ms"], "ms",
                baseline=stock["p50_ms"], baseline_name="stock pyfunc p50", target="< 1x",
                met=ours["p50_ms"] < stock["p50_ms"]),
            row("serving", f"histomlf vs stock mlflow.keras, batch {plan['batch']}",
                ours["batch_per_s"], "patches/s", baseline=stock["batch_per_s"],
                baseline_name="stock pyfunc (float JSON)", target="> 1x",
                met=ours["batch_per_s"] > stock["batch_per_s"]),
        ]  # fmt: skip
    return rows


if __name__ == "__main__":
    cli(__doc__.splitlines()[0], run)
