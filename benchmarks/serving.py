"""Serving latency and throughput under concurrency: `mlflow models serve` of a histomlf model
against the fastest ways the same model runs in-process, measured in the same run.

    .venv/bin/python -m benchmarks.serving [--quick] [--json out.json]

One simplecnn (the default recipe's head; random weights: speed does not depend on them) is
logged as histomlf's `IdcPatchClassifier` (base64 PNG in, `log_patch_classifier`) and, in the
full run, with `mlflow.keras.log_model(model, name=..., signature=...)` (float32 tensor in; its
server imports histomlf.models first, see `stock_env`). Baselines, in this process:
  * E: the eager Keras call on one decoded patch, `model(x, training=False)` (the old path);
  * the compiled call (`histomlf.models.inference.CompiledPredictor`) on one patch: the limit;
  * the in-process pyfunc `predict` of one base64 patch (decode + compiled call + DataFrame);
  * for batches: base64 decode of 256 PNGs plus the compiled call, patches/s.
Each server configuration (uvicorn workers x TensorFlow's intra/inter-op threads, set through
`TF_NUM_INTRAOP_THREADS` / `TF_NUM_INTEROP_THREADS`) is a real
`mlflow models serve --env-manager local` (tests/helpers_mlflow.serve: own process group, killed
afterwards), called over HTTP with real sample patches, a new localhost connection per request
(what curl pays), client threads on the same machine:
  * single patch at 1, 2, 4, 8 concurrent clients: p50/p99 latency and requests/s;
  * batch: 256 patches per request, patches/s (best of `batches`).
All servers run side by side and are measured in alternating rounds with the in-process
baselines (medians over rounds), so a shared machine's changing load hits every figure alike.
Targets (issue 11, 2 cores): 1-client p50 <= 0.4 E; 8 clients >= 2/E req/s with p99 <= 6 E;
batch-256 >= 0.8x in-process decode + compiled call.
"""

from __future__ import annotations

import base64
import contextlib
import os
import statistics
import tempfile
import threading
import time
from pathlib import Path
from typing import Any

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")

from benchmarks.common import cli, latencies_ms, row, sample_rows, summary_ms  # noqa: E402


def _test_helpers() -> Any:
    """tests/helpers_mlflow (serve, post_json), which imports its sibling test helpers."""
    import sys

    tests_dir = str(Path(__file__).resolve().parents[1] / "tests")
    if tests_dir not in sys.path:
        sys.path.insert(0, tests_dir)
    import helpers_mlflow

    return helpers_mlflow

ONE_THREAD = {"TF_NUM_INTRAOP_THREADS": "1", "TF_NUM_INTEROP_THREADS": "1"}
# name: (uvicorn workers, extra server environment); the first is what users get by default.
CONFIGS: dict[str, tuple[int, dict[str, str]]] = {
    "1 worker, TF threads default": (1, {}),
    "1 worker, TF threads 1+1": (1, ONE_THREAD),
    "2 workers, TF threads default": (2, {}),
    "2 workers, TF threads 1+1": (2, ONE_THREAD),
}
DEFAULT_CONFIG = next(iter(CONFIGS))
FULL = {"single": 200, "clients": (1, 2, 4, 8), "per_level": 240, "batches": 5, "batch": 256,
        "rounds": 5, "stock": True, "configs": tuple(CONFIGS)}  # fmt: skip
QUICK = {"single": 20, "clients": (1, 8), "per_level": 24, "batches": 2, "batch": 256,
         "rounds": 1, "stock": False, "configs": (DEFAULT_CONFIG,)}  # fmt: skip


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


def post_ok(url: str, payload: Any) -> None:
    post_json = _test_helpers().post_json

    reply = post_json(f"{url}/invocations", payload)
    if reply.status != 200:
        raise RuntimeError(f"{url} answered {reply.status}: {reply.body[:300]}")


def group_rss(group: int) -> int:
    """Resident bytes of every process in process group `group` (all uvicorn workers)."""
    import psutil

    total = 0
    for process in psutil.process_iter():
        try:
            if os.getpgid(process.pid) == group:
                total += process.memory_info().rss
        except (ProcessLookupError, psutil.NoSuchProcess, psutil.AccessDenied):
            continue
    return total


def concurrent_load(url: str, payload: Any, clients: int, total: int) -> dict[str, float]:
    """`clients` threads sending `total` requests in all: latency percentiles and requests/s."""
    latencies: list[list[float]] = [[] for _ in range(clients)]
    barrier = threading.Barrier(clients + 1)

    def client(index: int) -> None:
        barrier.wait()
        for _ in range(total // clients):
            started = time.perf_counter()
            post_ok(url, payload)
            latencies[index].append((time.perf_counter() - started) * 1e3)

    threads = [threading.Thread(target=client, args=(i,)) for i in range(clients)]
    for thread in threads:
        thread.start()
    barrier.wait()
    started = time.perf_counter()
    for thread in threads:
        thread.join()
    wall = time.perf_counter() - started
    flat = [value for part in latencies for value in part]
    return {**summary_ms(flat), "req_per_s": len(flat) / wall}


def measure_server(url: str, single: Any, batch: Any, plan: dict[str, Any]) -> dict[str, Any]:
    """Single-patch latency and req/s at each client count, and patches/s of batch requests."""
    for _ in range(5):
        post_ok(url, single)
    post_ok(url, batch)  # traces the largest bucket before timing
    levels = {
        clients: concurrent_load(url, single, clients, plan["per_level"])
        for clients in plan["clients"]
    }
    batch_ms = latencies_ms(lambda: post_ok(url, batch), plan["batches"], warmup=0)
    return {"levels": levels, "batch_per_s": plan["batch"] / (min(batch_ms) / 1e3),
            "batch_ms": batch_ms}  # fmt: skip


def in_process(model: Any, predictor: Any, pyfunc: Any, encoded: list[str], plan: dict) -> dict:
    """The baselines: eager and compiled call on one patch, pyfunc predict, decode + compiled."""
    import numpy as np
    import pandas as pd

    from histomlf.serving.inputs import images_from_base64

    one = images_from_base64(encoded[:1]).astype(np.float32)
    eager_ms = latencies_ms(lambda: model(one, training=False), plan["single"], 5)
    compiled_ms = latencies_ms(lambda: predictor(one), plan["single"], 5)
    frame = pd.DataFrame({"image": encoded[:1]})
    pyfunc_ms = latencies_ms(lambda: pyfunc.predict(frame), plan["single"], 5)
    batch_ms = latencies_ms(
        lambda: predictor(images_from_base64(encoded[: plan["batch"]])), plan["batches"], 1
    )
    # What coalescing 8 concurrent one-patch requests into one call could save at most.
    eight = images_from_base64(encoded[:8]).astype(np.float32)
    singles_ms = latencies_ms(lambda: [predictor(eight[i : i + 1]) for i in range(8)],
                              plan["single"] // 4, 3)  # fmt: skip
    batch8_ms = latencies_ms(lambda: predictor(eight), plan["single"] // 4, 3)
    return {
        "eager": summary_ms(eager_ms),
        "compiled": summary_ms(compiled_ms),
        "pyfunc": summary_ms(pyfunc_ms),
        "eight_single_calls": summary_ms(singles_ms),
        "one_batch_of_8": summary_ms(batch8_ms),
        "decode_compiled_per_s": plan["batch"] / (min(batch_ms) / 1e3),
    }


def median_of(rounds: list[Any]) -> Any:
    """The per-key median of numbers over rounds of equally shaped dicts (lists are dropped)."""
    first = rounds[0]
    if isinstance(first, dict):
        return {
            key: median_of([r[key] for r in rounds])
            for key, value in first.items()
            if not isinstance(value, list)
        }
    return statistics.median(rounds)


def run(quick: bool) -> dict[str, Any]:
    """In-process baselines and every server configuration, measured in alternating rounds.

    All servers run at once (idle ones cost no CPU) and each round measures the baselines and
    then every server, so load from elsewhere on a shared machine hits them alike; each figure
    is the median over rounds.
    """
    import mlflow
    import numpy as np

    from histomlf.data.pipeline import make_dataset
    from histomlf.models.inference import CompiledPredictor
    serve = _test_helpers().serve

    plan = QUICK if quick else FULL
    rows = sample_rows().sample(n=plan["batch"], random_state=0).reset_index(drop=True)
    encoded = [base64.b64encode(Path(p).read_bytes()).decode() for p in rows["path"]]
    ours_single = {"dataframe_split": {"columns": ["image"], "data": [[encoded[0]]]}}
    ours_batch = {"dataframe_split": {"columns": ["image"], "data": [[e] for e in encoded]}}

    results: dict[str, Any] = {"plan": plan}
    with tempfile.TemporaryDirectory(prefix="histomlf-serve-bench-") as tmp:
        store = Path(tmp)
        ours_uri, stock_uri, model = log_models(store)
        predictor, pyfunc = CompiledPredictor(model), mlflow.pyfunc.load_model(ours_uri)
        tracking = f"sqlite:///{store}/mlflow.db"
        with contextlib.ExitStack() as stack:
            servers = {}
            for name in plan["configs"]:
                workers, env = CONFIGS[name]
                servers[name] = stack.enter_context(serve(
                    ours_uri, tracking_uri=tracking, log_dir=store, extra_env=env, workers=workers
                ))  # fmt: skip
            rounds = []
            for _ in range(plan["rounds"]):
                rounds.append({
                    "in_process": in_process(model, predictor, pyfunc, encoded, plan),
                    "servers": {name: measure_server(served.url, ours_single, ours_batch, plan)
                                for name, served in servers.items()},
                })  # fmt: skip
            results.update(median_of(rounds))
            results["rounds"] = rounds
            for name, served in servers.items():
                results["servers"][name]["startup_s"] = served.startup_s
                results["servers"][name]["group_rss_mb"] = group_rss(served.process.pid) / 2**20
        if plan["stock"]:
            images = next(iter(make_dataset(rows, batch_size=len(rows), training=False)))[0]
            floats = images.numpy().astype(np.float32)
            stock_single, stock_batch = {"inputs": floats[:1].tolist()}, {"inputs": floats.tolist()}
            stock_plan = {**plan, "clients": (1,), "per_level": plan["single"]}
            with serve(stock_uri, tracking_uri=tracking, log_dir=store,
                       extra_env=stock_env(store)) as served:  # fmt: skip
                results["stock"] = measure_server(served.url, stock_single, stock_batch, stock_plan)
    return {"benchmark": "serving", "rows": table(results, plan), "details": results}


def table(results: dict[str, Any], plan: dict[str, Any]) -> list[dict[str, Any]]:
    local = results["in_process"]
    eager = local["eager"]["p50_ms"]
    servers = results["servers"]
    ours = servers[DEFAULT_CONFIG]
    one, most = ours["levels"][min(plan["clients"])], ours["levels"][max(plan["clients"])]
    top = max(plan["clients"])
    n = f"{plan['per_level']} requests per level; median of {plan['rounds']} rounds"
    rows = [
        row("serving", "in-process compiled call, 1 patch p50", local["compiled"]["p50_ms"], "ms",
            baseline=eager, baseline_name="E: eager Keras call p50", note="the limit"),
        row("serving", "in-process pyfunc predict, 1 base64 patch p50", local["pyfunc"]["p50_ms"],
            "ms", baseline=eager, baseline_name="E: eager Keras call p50",
            note="decode + compiled call + DataFrame"),
        row("serving", "in-process compiled, 8 patches as one batch p50",
            local["one_batch_of_8"]["p50_ms"], "ms", baseline=local["eight_single_calls"]["p50_ms"],
            baseline_name="8 single-patch compiled calls p50",
            note="the most coalescing 8 concurrent requests could save"),
        row("serving", "served 1 patch p50, 1 client", one["p50_ms"], "ms", baseline=eager,
            baseline_name="E: eager Keras call p50", target="<= 0.4x",
            met=one["p50_ms"] <= 0.4 * eager, note=f"{DEFAULT_CONFIG}; {n}"),
        row("serving", "served 1 patch p99, 1 client", one["p99_ms"], "ms", baseline=eager,
            baseline_name="E: eager Keras call p50"),
    ]  # fmt: skip
    for clients, level in ours["levels"].items():
        target = clients == top
        rows.append(row(
            "serving", f"served 1 patch req/s, {clients} clients", level["req_per_s"], "req/s",
            baseline=1e3 / eager, baseline_name="1/E", target=">= 2x" if target else "",
            met=level["req_per_s"] >= 2e3 / eager if target else None,
            note=f"p50 {level['p50_ms']:.1f} ms, p99 {level['p99_ms']:.1f} ms",
        ))  # fmt: skip
    rows += [
        row("serving", f"served 1 patch p99, {top} clients", most["p99_ms"], "ms", baseline=eager,
            baseline_name="E: eager Keras call p50", target="<= 6x",
            met=most["p99_ms"] <= 6 * eager),
        row("serving", f"served batch {plan['batch']} base64", ours["batch_per_s"], "patches/s",
            baseline=local["decode_compiled_per_s"],
            baseline_name="in-process decode + compiled call", target=">= 0.8x",
            met=ours["batch_per_s"] >= 0.8 * local["decode_compiled_per_s"],
            note=f"best of {plan['batches']} per round"),
    ]  # fmt: skip
    default_spread = [r["servers"][DEFAULT_CONFIG]["levels"][top]["req_per_s"]
                      for r in results["rounds"]]  # fmt: skip
    for name, server in servers.items():
        if name == DEFAULT_CONFIG:
            continue
        level = server["levels"][top]
        spread = [r["servers"][name]["levels"][top]["req_per_s"] for r in results["rounds"]]
        rows.append(row(
            "serving", f"{name}: req/s, {top} clients", level["req_per_s"], "req/s",
            baseline=most["req_per_s"], baseline_name=DEFAULT_CONFIG,
            note=f"rounds {min(spread):.0f}-{max(spread):.0f} req/s (default "
            f"{min(default_spread):.0f}-{max(default_spread):.0f}); "
            f"p50 {level['p50_ms']:.1f} ms, p99 {level['p99_ms']:.1f} ms; 1 client p50 "
            f"{server['levels'][min(plan['clients'])]['p50_ms']:.1f} ms; batch "
            f"{server['batch_per_s']:.0f} patches/s; server RSS {server['group_rss_mb']:.0f} MiB "
            f"(default: {ours['group_rss_mb']:.0f} MiB)",
        ))  # fmt: skip
    if "stock" in results:
        stock = results["stock"]
        stock_one = stock["levels"][1]
        rows += [
            row("serving", "histomlf vs stock mlflow.keras, 1 patch p50", one["p50_ms"], "ms",
                baseline=stock_one["p50_ms"], baseline_name="stock pyfunc p50", target="< 1x",
                met=one["p50_ms"] < stock_one["p50_ms"]),
            row("serving", f"histomlf vs stock mlflow.keras, batch {plan['batch']}",
                ours["batch_per_s"], "patches/s", baseline=stock["batch_per_s"],
                baseline_name="stock pyfunc (float JSON)", target="> 1x",
                met=ours["batch_per_s"] > stock["batch_per_s"]),
        ]  # fmt: skip
    return rows


if __name__ == "__main__":
    cli(__doc__.splitlines()[0], run)
