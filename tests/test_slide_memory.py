"""Memory stays bounded whatever the slide's size: a 40,000² px synthetic slide at 0.25 µm/px
(10 x 10 mm, 4.8 GB of pixels; generated tile by tile, never in memory, cached between
sessions) scored by `histomlf slide predict` in a subprocess whose own peak RSS is measured."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
from slide_fixtures import FIXTURE_CACHE

from histomlf.schema import SlideArtifact

REPO_ROOT = Path(__file__).resolve().parents[1]
BIG_SLIDE_PX = 40_000
# TensorFlow + Keras + MLflow + the model take ~0.8-1.0 GB here before any slide is read; the
# slide's own share must stay well under the 4.8 GB it would take whole.
PEAK_RSS_BOUND_MB = 2000

_MEASURED = """
import atexit, resource, sys
# VmHWM, not ru_maxrss: ru_maxrss keeps the forking parent's (pytest's) peak across exec.
hwm = lambda: open('/proc/self/status').read().split('VmHWM:')[1].split()[0]  # noqa: E731
atexit.register(lambda: print("PEAK_RSS_KB", int(hwm()),
                              file=sys.stderr))
from histomlf.cli import main
sys.argv = ["histomlf", *sys.argv[1:]]
main()
"""


def peak_rss_mb(args: list[str], env: dict[str, str], timeout: float = 600) -> tuple[float, str]:
    """Run `histomlf ARGS` in a fresh interpreter; its own peak RSS (MB) and its stderr."""
    done = subprocess.run(
        [sys.executable, "-c", _MEASURED, *args], env=env, capture_output=True, text=True,
        timeout=timeout,
    )  # fmt: skip
    assert done.returncode == 0, done.stderr[-3000:]
    line = [x for x in done.stderr.splitlines() if x.startswith("PEAK_RSS_KB")][-1]
    return int(line.split()[1]) / 1024, done.stderr


@pytest.fixture(scope="session")
def big_slide() -> Path:
    from histomlf.slides.stitch import synthetic_slide

    path = FIXTURE_CACHE / f"synthetic-{BIG_SLIDE_PX}px-0.25mpp-v1.tif"
    if not path.exists():
        partial = path.with_suffix(".partial.tif")
        synthetic_slide(partial, size_px=BIG_SLIDE_PX, mpp=0.25)
        partial.rename(path)
    return path


@pytest.mark.slow
def test_a_40k_slide_is_scored_with_bounded_memory(slide_store, big_slide, tmp_path) -> None:
    # A clean environment, as a user's shell starts it.
    env = {
        **{k: os.environ[k] for k in ("PATH", "HOME", "LANG", "TMPDIR") if k in os.environ},
        "PYTHONPATH": str(REPO_ROOT),
        "MLFLOW_TRACKING_URI": slide_store.tracking_uri,
        "MLFLOW_EXPERIMENT_ID": slide_store.experiment_id,
    }
    env.pop("MLFLOW_RUN_ID", None)
    out = tmp_path / "big"
    peak, _ = peak_rss_mb(
        ["slide", "predict", slide_store.registered_uri, str(big_slide), "--out", str(out)], env
    )
    summary = json.loads((out / SlideArtifact.SUMMARY).read_text())
    print(f"40k slide: {summary['tiles']} tiles of {summary['tiles_total']} in "
          f"{summary['seconds']:.1f} s, peak RSS {peak:.0f} MB")
    assert (summary["width_px"], summary["height_px"]) == (BIG_SLIDE_PX, BIG_SLIDE_PX)
    assert summary["read_downsample"] == 4.0 and summary["tiles"] > 500
    assert peak < PEAK_RSS_BOUND_MB
