"""The web page's speed: page time for one patch and for a 1,000-patch patient zip, and the
page's JSON API against the scoring server, on the same model over real HTTP.

    .venv/bin/python -m benchmarks.web_page [--json out.json]

One simplecnn (the default recipe's network; random weights: speed does not depend on them) is
logged and registered in a fresh sqlite store (`log_patch_classifier`, as every train run does).
A real `histomlf web` process (tests/helpers_web.py) and a real `mlflow models serve
--env-manager local` (tests/helpers_mlflow.py) serve it, one after the other; each is called
over localhost by one client (httpx2), one request at a time, best of 3 after one warm-up:
  * page, 1 patch: `POST /predict` with one real sample patch; the HTML page with thumbnail and
    Grad-CAM, fully received;
  * page, 1,000-patch patient: `POST /patient` with a zip of 1,000 real sample patches renamed
    as one patient on a 40x25 grid (the sample's largest patient has 70); map and CSV included;
  * API, 1,000 patches: `POST /api/predict` (multipart, 1,000 PNG files) against the scoring
    server's `POST /invocations` (one JSON request of 1,000 base64 PNGs): patches/s.
"""

from __future__ import annotations

import base64
import io
import os
import sys
import tempfile
import time
import zipfile
from pathlib import Path
from typing import Any

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")

from benchmarks.common import cli, row, sample_rows  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]
PATIENT_PATCHES = 1000
GRID_COLUMNS = 40
REPEATS = 3
MODEL_NAME = "bench-web"


def log_model(store: Path, name: str = MODEL_NAME, metadata: dict | None = None) -> str:
    """The default recipe's network, untrained, registered as `name` v1 in a store under
    `store` (`metadata`: e.g. the patch scale a slide needs)."""
    import mlflow

    from histomlf.config import load_experiment
    from histomlf.models import create_model
    from histomlf.tracking.pyfunc import log_patch_classifier

    config, _ = load_experiment("default")
    model = create_model(config.model, weights="none", image_size=50, dropout=config.dropout,
                         dense_units=config.dense_units)  # fmt: skip
    mlflow.set_tracking_uri(f"sqlite:///{store}/mlflow.db")
    experiment = mlflow.create_experiment("web", artifact_location=str(store / "artifacts"))
    with mlflow.start_run(experiment_id=experiment):
        log_patch_classifier(model, threshold=0.5, registered_model_name=name, metadata=metadata)
    return f"models:/{name}/1"


def patient_zip(paths: list[str], labels: list[int]) -> bytes:
    """1,000 real patches as patient 99999, Kaggle names on a 40x25 grid, labels kept."""
    buffer = io.BytesIO()
    with zipfile.ZipFile(buffer, "w", zipfile.ZIP_STORED) as archive:
        for index, (path, label) in enumerate(zip(paths, labels, strict=True)):
            x, y = 1 + 50 * (index % GRID_COLUMNS), 1 + 50 * (index // GRID_COLUMNS)
            name = f"99999/{label}/99999_idx5_x{x}_y{y}_class{label}.png"
            archive.writestr(name, Path(path).read_bytes())
    return buffer.getvalue()


def best_seconds(call: Any, repeats: int = REPEATS) -> tuple[float, list[float]]:
    call()
    times = []
    for _ in range(repeats):
        started = time.perf_counter()
        call()
        times.append(time.perf_counter() - started)
    return min(times), times


def run(quick: bool) -> dict[str, Any]:
    import httpx2

    sys.path.insert(0, str(ROOT / "tests"))
    from helpers_mlflow import serve
    from helpers_web import web_process

    rows = sample_rows().sample(n=PATIENT_PATCHES, random_state=0).reset_index(drop=True)
    paths, labels = list(rows["path"]), [int(v) for v in rows["label"]]
    files = [(Path(p).name, Path(p).read_bytes()) for p in paths]
    archive = patient_zip(paths, labels)
    details: dict[str, Any] = {"zip_bytes": len(archive), "patches": PATIENT_PATCHES,
                               "load_start": os.getloadavg()}  # fmt: skip

    with tempfile.TemporaryDirectory(prefix="histomlf-web-bench-") as tmp:
        store = Path(tmp)
        uri = log_model(store)
        tracking = f"sqlite:///{store}/mlflow.db"
        client = httpx2.Client(timeout=600)

        def post(url: str, **kwargs: Any) -> httpx2.Response:
            answer = client.post(url, **kwargs)
            if answer.status_code != 200:
                raise RuntimeError(f"{url} answered {answer.status_code}: {answer.text[:300]}")
            return answer

        started = time.perf_counter()
        with web_process(uri, tracking, store / "web.log") as url:
            details["web_startup_s"] = time.perf_counter() - started
            one = [("files", (files[0][0], files[0][1], "image/png"))]
            many = [("files", (name, data, "image/png")) for name, data in files]
            zipped = {"file": ("patient.zip", archive, "application/zip")}
            measures = {
                "page_1": lambda: post(f"{url}/predict", files=one),
                "page_patient": lambda: post(f"{url}/patient", files=zipped),
                "api_patient": lambda: post(f"{url}/api/patient", files=zipped),
                "api_1000": lambda: post(f"{url}/api/predict", files=many),
            }
            for name, call in measures.items():
                details[name] = best_seconds(call)
            details["page_patient_html_bytes"] = len(post(f"{url}/patient", files=zipped).content)

        encoded = [base64.b64encode(data).decode() for _, data in files]
        payload = {"dataframe_split": {"columns": ["image"], "data": [[e] for e in encoded]}}
        with serve(uri, tracking_uri=tracking, log_dir=store) as served:
            details["serve_startup_s"] = served.startup_s
            details["serve_1000"] = best_seconds(
                lambda: post(f"{served.url}/invocations", json=payload))
    details["load_end"] = os.getloadavg()
    return {"benchmark": "web_page", "rows": table(details), "details": details}


def table(d: dict[str, Any]) -> list[dict[str, Any]]:
    n = PATIENT_PATCHES
    api_rate, serve_rate = n / d["api_1000"][0], n / d["serve_1000"][0]
    return [
        row("web_page", "page, 1 patch (score + Grad-CAM + HTML)", d["page_1"][0] * 1e3, "ms",
            note="best of 3 over HTTP"),
        row("web_page", f"page, {n:,}-patch patient zip (map + CSV)", d["page_patient"][0], "s",
            baseline=d["api_patient"][0], baseline_name="same zip, JSON API (no map)",
            note=f"zip {d['zip_bytes'] / 1e6:.1f} MB, page "
                 f"{d['page_patient_html_bytes'] / 1e6:.1f} MB"),
        row("web_page", f"API /api/predict, {n:,} PNG files (multipart)", api_rate, "patches/s",
            baseline=serve_rate, baseline_name=f"mlflow models serve, {n:,} base64 rows"),
    ]  # fmt: skip


if __name__ == "__main__":
    cli(__doc__.splitlines()[0], run)
