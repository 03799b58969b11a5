"""A 200 MB whole-slide image through `histomlf web`: the web process's peak RSS while it takes
the slide, and the time from the first byte sent to the finished heatmap.

    .venv/bin/python -m benchmarks.web_slide [--json out.json]

The slide is real for OpenSlide: a synthetic tissue canvas (`slides.stitch.synthetic_canvas`:
50-px synthetic patches with coherent IDC blobs, on glass) written tile by tile as a pyramidal
tiled deflate TIFF at 4 µm/px (levels x2, x4), sized to about 200 MB (under the page's default
200 MiB cap). The model is the default recipe's simplecnn (random weights: speed does not
depend on them) logged with its scale and registered in a fresh sqlite store. A real
`histomlf web` process serves it with its default slide options; the slide is POSTed to
`/api/slide` as a chunked multipart stream (1 MB chunks) and `/api/slide/{job}` polled every
0.2 s. The server's RSS is sampled every 50 ms from /proc and its VmHWM (the kernel's peak) read
at the end; the baseline is its RSS after start-up and one patch request (model loaded,
compiled). `--quick` writes a ~20 MB slide instead.
"""

from __future__ import annotations

import os
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path
from typing import Any

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")

from benchmarks import web_page  # noqa: E402
from benchmarks.common import cli, row  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]
MODEL_NAME = "bench-web-slide"
TARGET_MB = {False: 200, True: 20}
BYTES_PER_CELL = 2870.0  # deflate bytes of one 50-px cell of the synthetic canvas (measured)


def log_model(store: Path) -> str:
    from histomlf.schema import ModelMeta

    return web_page.log_model(
        store, MODEL_NAME, metadata={ModelMeta.PATCH_PX: 50, ModelMeta.PATCH_MPP: 4.0}
    )


def write_slide(path: Path, target_mb: int) -> Path:
    from histomlf.slides.stitch import synthetic_canvas, write_pyramid

    cells = int((target_mb * 1e6 / BYTES_PER_CELL) ** 0.5)
    return write_pyramid(path, synthetic_canvas(cells, seed=1), mpp=4.0)


def proc_kb(pid: int, field: str) -> int:
    with open(f"/proc/{pid}/status") as status:
        for line in status:
            if line.startswith(field + ":"):
                return int(line.split()[1])
    raise KeyError(field)


def multipart_stream(path: Path, boundary: str, chunk: int = 1 << 20):
    yield (f"--{boundary}\r\nContent-Disposition: form-data; name=\"file\"; "
           f"filename=\"{path.name}\"\r\nContent-Type: image/tiff\r\n\r\n").encode()
    with open(path, "rb") as handle:
        while block := handle.read(chunk):
            yield block
    yield f"\r\n--{boundary}--\r\n".encode()


def run(quick: bool) -> dict[str, Any]:
    import requests

    sys.path.insert(0, str(ROOT / "tests"))
    from helpers_mlflow import free_port, sample_patches

    with tempfile.TemporaryDirectory(prefix="histomlf-web-slide-bench-") as tmp:
        store = Path(tmp)
        uri = log_model(store)
        started = time.perf_counter()
        slide = write_slide(store / "synthetic-200mb.tif", TARGET_MB[quick])
        write_s = time.perf_counter() - started
        size = slide.stat().st_size
        port = free_port()
        env = {**os.environ, "MLFLOW_TRACKING_URI": f"sqlite:///{store}/mlflow.db",
               "PYTHONPATH": str(ROOT)}
        log = open(store / "web.log", "wb")
        process = subprocess.Popen(
            [sys.executable, "-m", "histomlf", "web", "--model", uri, "--port", str(port)],
            stdout=log, stderr=subprocess.STDOUT, env=env, start_new_session=True)
        url = f"http://127.0.0.1:{port}"
        try:
            deadline = time.monotonic() + 180
            while True:
                try:
                    if requests.get(url + "/health", timeout=2).status_code == 200:
                        break
                except requests.ConnectionError:
                    pass
                if process.poll() is not None or time.monotonic() > deadline:
                    raise RuntimeError((store / "web.log").read_text()[-3000:])
                time.sleep(0.5)
            patch = sample_patches(Path(os.environ.get(
                "HISTOMLF_SAMPLE_DIR", ROOT.parent / "shared" / "idc-sample")), full=1, border=0)[0]
            requests.post(url + "/api/predict", timeout=60,
                          files=[("files", (patch.name, patch.read_bytes(), "image/png"))])
            baseline_kb = proc_kb(process.pid, "VmRSS")
            samples: list[int] = []
            stop = threading.Event()

            def sample() -> None:
                while not stop.is_set():
                    samples.append(proc_kb(process.pid, "VmRSS"))
                    time.sleep(0.05)

            sampler = threading.Thread(target=sample, daemon=True)
            sampler.start()
            boundary = "benchslide"
            t0 = time.perf_counter()
            answer = requests.post(
                url + "/api/slide", data=multipart_stream(slide, boundary), timeout=600,
                headers={"Content-Type": f"multipart/form-data; boundary={boundary}"})
            upload_s = time.perf_counter() - t0
            if answer.status_code != 202:
                raise RuntimeError(f"/api/slide answered {answer.status_code}: {answer.text}")
            job = answer.json()["status_url"]
            while (status := requests.get(url + job, timeout=30).json())["state"] not in (
                    "done", "failed"):
                time.sleep(0.2)
            total_s = time.perf_counter() - t0
            heatmap = requests.get(url + status["files"]["heatmap.png"], timeout=30)
            stop.set()
            sampler.join()
            hwm_kb = proc_kb(process.pid, "VmHWM")
        finally:
            process.terminate()
            try:
                process.wait(15)
            except subprocess.TimeoutExpired:
                process.kill()
            log.close()
        if status["state"] != "done":
            raise RuntimeError(status["error"])
        summary = status["summary"]
    mb = 1024.0
    details = {"slide_bytes": size, "slide_px": [summary["width_px"], summary["height_px"]],
               "slide_write_s": write_s, "upload_s": upload_s, "total_s": total_s,
               "scoring_s": summary["seconds"], "tiles": summary["tiles"],
               "tiles_total": summary["tiles_total"], "baseline_rss_mb": baseline_kb / mb,
               "peak_rss_sampled_mb": max(samples) / mb, "peak_rss_hwm_mb": hwm_kb / mb,
               "heatmap_bytes": len(heatmap.content)}
    label = f"{size / 1e6:.0f} MB slide ({summary['width_px']:,}x{summary['height_px']:,} px)"
    rows = [
        row("web_slide", f"peak RSS of histomlf web, {label}", hwm_kb / mb, "MB",
            baseline=baseline_kb / mb, baseline_name="RSS after start-up + 1 patch",
            note=f"sampled max {max(samples) / mb:.0f} MB"),
        row("web_slide", f"first byte sent -> heatmap ready, {label}", total_s, "s",
            note=f"upload {upload_s:.1f} s, scoring {summary['seconds']:.1f} s, "
                 f"{summary['tiles']:,} tiles ({summary['tiles'] / summary['seconds']:.0f}/s)"),
    ]
    return {"rows": rows, "details": details}


if __name__ == "__main__":
    cli(__doc__.splitlines()[0], run)
