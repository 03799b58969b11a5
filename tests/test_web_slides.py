"""Whole-slide images on `histomlf web`: the streamed upload and its cap, refusals of files
OpenSlide cannot use, a job's status flow (slots, refresh, outputs, expiry), and the form in
real Chromium on a registry slide and a stitched real patient (slow).

Unit-level tests run the app around `fake_scorer` (test_web_hardening) with a stand-in
`SlideModel` (darker tile = higher P(IDC), no model loaded); the Chromium test serves the
logged colour model of `slide_store` through the real `Scorer`, as `histomlf web` does.
"""

from __future__ import annotations

import asyncio
import html
import json
import os
import socket
import stat
import threading
import time
from pathlib import Path

import numpy as np
import pytest
import requests
from test_web_hardening import (
    assert_secure,
    chrome_with_console,
    fake_scorer,
    make_app,
    policy_violations,
    served,
)

from histomlf.schema import SlideArtifact
from histomlf.slides.predict import SlideModel
from histomlf.web.slide_jobs import FIGURES, figure

MB = 1024 * 1024


def darkness_model(gate: threading.Event | None = None) -> SlideModel:
    def score(batch: np.ndarray) -> np.ndarray:
        if gate is not None:
            assert gate.wait(30), "the test never opened the gate"
        return 1.0 - batch.reshape(len(batch), -1).mean(axis=1) / 255.0

    return SlideModel(score=score, threshold=0.3, patch_px=50, patch_mpp=4.0,
                      uri="models:/fake@champion", name="fake", version="1", batch_size=64)


def slide_app(tmp_path: Path, gate: threading.Event | None = None, **options):
    return make_app(fake_scorer(), slide_model=darkness_model(gate),
                    slide_dir=tmp_path / "slides", **options)


def job_folders(tmp_path: Path) -> list[Path]:
    return sorted((tmp_path / "slides").glob("job-*"))


def wait_done(client, job: str, timeout: float = 60) -> dict:
    deadline = time.monotonic() + timeout
    while True:
        answer = client.get(f"/api/slide/{job}").json()
        if answer["state"] in ("done", "failed"):
            return answer
        assert time.monotonic() < deadline, answer
        time.sleep(0.2)


# ----------------------------------------------------------------- the streamed upload


def rss_bytes() -> int:
    with open("/proc/self/statm") as statm:
        return int(statm.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")


def chunked_upload(url: str, path: str, total: int, chunk: int = MB) -> tuple[int, str, int]:
    """POST a multipart body of `total` file bytes with chunked encoding (no Content-Length to
    refuse early) over a raw socket; stop sending as soon as an answer arrives. Returns
    (status, body, file bytes sent)."""
    host, port = url.removeprefix("http://").split(":")
    boundary = "slideboundary"
    head = (f"--{boundary}\r\nContent-Disposition: form-data; name=\"file\"; "
            f"filename=\"big.svs\"\r\nContent-Type: application/octet-stream\r\n\r\n").encode()
    sock = socket.create_connection((host, int(port)), timeout=30)
    sock.sendall((f"POST {path} HTTP/1.1\r\nHost: {host}\r\nTransfer-Encoding: chunked\r\n"
                  f"Content-Type: multipart/form-data; boundary={boundary}\r\n\r\n").encode())

    def send(data: bytes) -> None:
        sock.sendall(f"{len(data):x}\r\n".encode() + data + b"\r\n")

    sent, block = 0, b"\x7f" * chunk
    sock.setblocking(True)
    try:
        send(head)
        while sent < total:
            send(block)
            sent += len(block)
            sock.settimeout(0.0)
            try:
                if sock.recv(1, socket.MSG_PEEK):
                    break  # the server answered: stop sending
            except BlockingIOError:
                pass
            finally:
                sock.settimeout(30)
    except (BrokenPipeError, ConnectionResetError):
        pass
    answer = b""
    sock.settimeout(10)
    try:
        while b"\r\n\r\n" not in answer or len(answer) < answer.index(b"\r\n\r\n") + 40:
            part = sock.recv(65536)
            if not part:
                break
            answer += part
    except (TimeoutError, ConnectionResetError):
        pass
    sock.close()
    status = int(answer.split(b" ", 2)[1])
    return status, answer.decode("utf-8", "replace"), sent


def test_the_slide_cap_refuses_mid_stream_without_holding_the_upload(tmp_path: Path) -> None:
    """300 MB sent to a 50 MB cap: 413 once the cap is passed, the rest never read, the
    server's memory flat (the file goes to disk as it arrives) and nothing left on disk."""
    with served(slide_app(tmp_path, slide_max_mb=50)) as url:
        peak, stop = [rss_bytes()], threading.Event()
        before = peak[0]

        def sample() -> None:
            while not stop.is_set():
                peak.append(rss_bytes())
                time.sleep(0.02)

        sampler = threading.Thread(target=sample, daemon=True)
        sampler.start()
        status, answer, sent = chunked_upload(url, "/api/slide", 300 * MB)
        stop.set()
        sampler.join()
        growth = (max(peak) - before) / MB
        print(f"sent {sent / MB:.0f} MB of 300 before the 413; RSS growth {growth:.1f} MB")
        assert status == 413, answer[:500]
        assert "more than 52,428,800 bytes (50 MB)" in answer and "--slide-max-mb" in answer
        assert sent < 120 * MB  # refused near the cap, not after reading all 300 MB
        assert growth < 30, f"the server grew {growth:.0f} MB while refusing a 300 MB upload"
        assert job_folders(tmp_path) == []  # the partial file is gone

        # a declared Content-Length over the cap is refused before any byte is read
        host, port = url.removeprefix("http://").split(":")
        with socket.create_connection((host, int(port)), timeout=20) as sock:
            sock.sendall(f"POST /slide HTTP/1.1\r\nHost: {host}\r\nContent-Length: {60 * MB}\r\n"
                         "Content-Type: multipart/form-data; boundary=b\r\n\r\n".encode())
            answer = sock.recv(65536).decode()
        assert answer.startswith("HTTP/1.1 413") and "52,428,800 bytes" not in answer, answer
        assert "content-security-policy: default-src 'none'" in answer.lower()
        # the patch routes keep their own cap (100 MB), unaffected by the slide's
        assert requests.get(url + "/slide", timeout=20).status_code == 200


def test_the_private_copy_is_0600_in_a_0700_folder_with_a_safe_name(tmp_path: Path) -> None:
    from histomlf.web.slide_upload import safe_name, save_slide

    folder = tmp_path / "upload"
    folder.mkdir(mode=0o700)
    data = os.urandom(3 * MB + 17)
    body = (b"--b\r\nContent-Disposition: form-data; name=\"note\"\r\n\r\nhello\r\n"
            b"--b\r\nContent-Disposition: form-data; name=\"file\"; "
            b"filename=\"../../etc/p\xc3\xa4tient 1.SVS\"\r\n\r\n" + data + b"\r\n--b--\r\n")

    async def stream():
        for start in range(0, len(body), 65536):
            yield body[start : start + 65536]

    saved = asyncio.run(save_slide("multipart/form-data; boundary=b", stream(), folder, 4 * MB))
    assert saved.path.parent == folder and saved.path.name == "p_tient_1.svs"
    assert saved.name == "../../etc/pätient 1.SVS" and saved.size == len(data)
    assert saved.path.read_bytes() == data
    assert stat.S_IMODE(saved.path.stat().st_mode) == 0o600
    assert safe_name("x" * 200 + ".ndpi") == "x" * 75 + ".ndpi" and safe_name("...") == "slide"


# ----------------------------------------------------------------- refusals


def test_files_openslide_cannot_use_are_refused_in_one_line(tmp_path: Path, real_slides) -> None:
    from starlette.testclient import TestClient

    client = TestClient(slide_app(tmp_path))
    cases = {
        "notes.svs": (b"a text file renamed .svs\n" * 40, 415, "not a slide format OpenSlide"),
        "unopenable.tiff": (real_slides.unopenable.read_bytes(), 415, "unopenable.tiff"),
        "boxes.tiff": (real_slides.boxes.read_bytes(), 422, "coarser"),
    }
    for name, (data, status, phrase) in cases.items():
        api = client.post("/api/slide", files={"file": (name, data, "image/tiff")})
        assert api.status_code == status, (name, api.text)
        detail = api.json()["detail"]
        assert phrase in detail and "\n" not in detail and len(detail) < 400, (name, detail)
        assert name in detail  # the user's own file name, not the private copy's
        html = client.post("/slide", files={"file": (name, data, "image/tiff")})
        assert html.status_code == status and "Not scored" in html.text
    empty = client.post("/api/slide", files={"file": ("e.svs", b"", "image/tiff")})
    assert empty.status_code == 400 and "no file" in empty.json()["detail"]
    wrong = client.post("/api/slide", files={"files": ("a.svs", b"x", "image/tiff")})
    assert wrong.status_code == 400 and "'file'" in wrong.json()["detail"]
    assert client.post("/api/slide", data=b"raw").status_code == 400
    assert job_folders(tmp_path) == []  # every refused upload deleted, every slot freed
    assert client.post("/api/slide", files={"file": ("n.svs", b"no", "x")}).status_code == 415


def test_a_model_without_a_recorded_scale_turns_slides_off(tmp_path: Path) -> None:
    from starlette.testclient import TestClient

    client = TestClient(make_app(fake_scorer(), slide_dir=tmp_path))  # model=None: no metadata
    assert "slides are off for this model" in client.get("/slide").text
    answer = client.post("/api/slide", files={"file": ("a.svs", b"x", "image/tiff")})
    assert answer.status_code == 400 and "--patch-mpp" in answer.json()["detail"]


# ----------------------------------------------------------------- a job


def test_a_slide_job_from_upload_to_downloads(tmp_path: Path, real_slides) -> None:
    """Slots, the self-refreshing page with progress, 503 for a second slide, the outputs,
    the summary, the upload deleted, and expiry."""
    from starlette.testclient import TestClient

    gate = threading.Event()
    app = slide_app(tmp_path, gate)
    client = TestClient(app)
    cmu = real_slides.cmu.read_bytes()
    home = client.get("/")
    assert 'action="/slide"' in home.text and "Not recorded in MLflow" in home.text

    posted = client.post("/slide", files={"file": ("CMU region.svs", cmu, "image/tiff")},
                         follow_redirects=False)
    assert posted.status_code == 303, posted.text
    page_url = posted.headers["location"]
    job = page_url.rsplit("/", 1)[1]
    assert len(job) >= 22  # 128 random bits: the URL is the key
    deadline = time.monotonic() + 30
    while "tissue tiles scored" not in (running := client.get(page_url)).text:
        assert time.monotonic() < deadline, running.text[-2000:]
        time.sleep(0.1)
    assert '<meta http-equiv="refresh" content="2">' in running.text
    assert_secure(running, "job page")
    status = client.get(f"/api/slide/{job}").json()
    assert status["state"] == "running" and status["tiles_total"] > 0
    assert status["files"] == {} and status["summary"] is None

    busy = client.post("/api/slide", files={"file": ("b.svs", cmu, "image/tiff")})
    assert busy.status_code == 503 and busy.headers["retry-after"] == "5", busy.text
    assert "busy with 1 slide" in busy.json()["detail"]
    assert client.post("/api/predict", files=[]).status_code != 503  # patch slots apart

    gate.set()
    done = wait_done(client, job)
    assert done["state"] == "done", done
    assert done["tracked_in_mlflow"] is False
    summary = done["summary"]
    assert summary["slide"] == "CMU region.svs" and summary["tiles"] == done["tiles_total"]
    files = {name: client.get(url) for name, url in done["files"].items()}
    assert set(files) == {SlideArtifact.HEATMAP, SlideArtifact.TISSUE, SlideArtifact.TILES_CSV,
                          SlideArtifact.TILES_GEOJSON, SlideArtifact.IDC_REGIONS_GEOJSON,
                          SlideArtifact.SUMMARY}
    assert all(a.status_code == 200 for a in files.values())
    assert files[SlideArtifact.HEATMAP].content[:8] == b"\x89PNG\r\n\x1a\n"
    geojson = files[SlideArtifact.TILES_GEOJSON]
    assert geojson.headers["content-disposition"].startswith("attachment")
    on_disk = json.loads(files[SlideArtifact.SUMMARY].content)
    assert {k: v for k, v in on_disk.items() if k != "slide"} == {
        k: v for k, v in summary.items() if k != "slide"}
    assert len(json.loads(geojson.content)["features"]) == summary["tiles"]

    result = html.unescape(client.get(page_url).text)
    assert "http-equiv" not in result and 'id="heatmap"' in result
    assert summary["caveat"] in result and "not recorded in MLflow" in result
    for _, key, _, fmt in FIGURES:
        assert f'data-key="{key}"' in result and figure(summary, key, fmt) in result
    assert client.get(f"/slide/{job}/mlflow.db").status_code == 404  # only the outputs
    assert client.get(f"/slide/{job}/..%2f..%2fetc%2fpasswd").status_code == 404

    folder, = job_folders(tmp_path)
    assert stat.S_IMODE(folder.stat().st_mode) == 0o700
    assert not any((folder / "upload").glob("*"))  # the slide deleted after its job
    assert client.post("/api/slide", files={"file": ("n.svs", b"no", "x")}).status_code == 415

    jobs = app.state.slide_jobs
    jobs.prune(now=time.time() + jobs.ttl_s + 1)
    assert job_folders(tmp_path) == [] and client.get(page_url).status_code == 404
    assert "expired" in client.get(f"/api/slide/{job}").json()["detail"]


# ----------------------------------------------------------------- real Chromium


@pytest.mark.slow
def test_slides_through_the_form_in_chromium(
    chromium, slide_store, real_slides, stitched_slides, tmp_path: Path
) -> None:
    """cmu_small_region.svs and a stitched real patient uploaded through the form with the
    real served model: the page refreshes itself until the heatmap has loaded, its numbers
    equal summary.json's, and no Content-Security-Policy violation is logged."""
    from browser import body_text, wait_until
    from helpers_mlflow import isolated_tracking

    from histomlf.web.app import create_app
    from histomlf.web.scorer import load_scorer

    with isolated_tracking():
        import mlflow

        mlflow.set_tracking_uri(slide_store.tracking_uri)
        scorer = load_scorer(slide_store.registered_uri)
    app = create_app(scorer, slide_dir=tmp_path / "slides")
    shots = Path(os.environ.get("HISTOMLF_SCREENSHOTS", tmp_path))
    with served(app) as url, chrome_with_console(chromium) as page:
        for slide in (real_slides.cmu, stitched_slides.plain):
            started = time.monotonic()
            page.get(url + "/slide")
            page.find_element("id", "slide").send_keys(str(slide))
            page.find_element("css selector", "form[action='/slide'] button").click()
            wait_until(lambda: "predicted IDC" in body_text(page), 90, "the slide result", page)
            wait_until(lambda: page.execute_script(
                "const i = document.getElementById('heatmap');"
                "return i.complete && i.naturalWidth > 0 && "
                "document.getElementById('tissue').naturalWidth > 0"), 20, "the heatmap", page)
            seconds = time.monotonic() - started
            link = page.find_element("css selector", "a[href$='summary.json']")
            summary = requests.get(link.get_attribute("href"), timeout=20).json()
            assert summary["slide"] == slide.name
            assert summary["model_name"] == "idc-slides" and summary["model_version"] == "1"
            shown = {dd.get_attribute("data-key"): (dd.get_attribute("data-value"), dd.text)
                     for dd in page.find_elements("css selector", "dl.slide-summary dd[data-key]")}
            for _, key, _, fmt in FIGURES:
                value, text = shown[key]
                assert float(value) == summary[key], key  # exact: the value itself is in the page
                assert text == figure(summary, key, fmt), key
            assert "v1" in shown["model"][1] and summary["caveat"] in body_text(page)
            assert policy_violations(page) == [], slide.name
            page.save_screenshot(str(shots / f"web-slide-{slide.stem}.png"))
            print(f"{slide.name}: {summary['tiles']} tiles, result in {seconds:.1f} s "
                  f"(scoring {summary['seconds']:.1f} s)")
