"""`histomlf web` under load and abuse: security headers, the scoring cap, the event loop kept
free while uploads are decoded, and long file names shortened.

The app runs around a stand-in scorer (`FakeScorer`: the real `Scorer` with the pyfunc call
and Grad-CAM replaced by arithmetic, so no model is trained or loaded), on real sample patches.
Concurrency is checked against a real uvicorn server in a thread, so requests really overlap
on one event loop; the Content-Security-Policy is checked in headless Chromium (slow).
"""

from __future__ import annotations

import contextlib
import io
import re
import threading
import time
import zipfile
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest
import requests
from helpers_mlflow import free_port, sample_patches

from histomlf.web.limits import Limits
from histomlf.web.model_card import ModelCard

MB = 1024 * 1024
SECURITY = {
    "x-content-type-options": "nosniff",
    "x-frame-options": "DENY",
    "referrer-policy": "no-referrer",
}
PATIENT = "13693"


# ----------------------------------------------------------------- a scorer without a model


def fake_scorer(**limits):
    """A `Scorer` whose probabilities are the patch's mean brightness and whose Grad-CAM is a
    ramp; `gate` (a threading.Event) makes every scoring call wait until it is set."""
    from histomlf.web.scorer import Scorer

    class FakeScorer(Scorer):
        gate: threading.Event | None = None
        entered: threading.Semaphore
        fail = False

        def probabilities(self, patches: np.ndarray) -> np.ndarray:
            self.entered.release()
            if self.fail:
                raise RuntimeError("the model broke")
            if self.gate is not None:
                assert self.gate.wait(30), "the test never opened the gate"
            return patches.reshape(len(patches), -1).mean(axis=1) / 255.0

        def explain(self, patches: np.ndarray, classes: np.ndarray) -> np.ndarray:
            ramp = np.linspace(0, 1, 50 * 50).reshape(50, 50)
            return np.repeat(ramp[None], len(patches), axis=0)

    card = ModelCard(uri="models:/fake@champion", name="fake", version="1",
                     aliases=("champion",), backbone="simplecnn",
                     metrics={"test_roc_auc": 0.9, "test_f1": 0.8, "test_accuracy": 0.85})
    scorer = FakeScorer(model=None, card=card, threshold=0.5, max_images=1024,
                        max_bytes=256 * 1024, max_pixels=2500, limits=Limits(**limits))
    scorer.entered = threading.Semaphore(0)
    return scorer


def make_app(scorer, **options):
    from histomlf.web.app import create_app

    return create_app(scorer, **options)


@contextlib.contextmanager
def served(app) -> Iterator[str]:
    """The app on a real uvicorn server in a thread (one event loop, as `histomlf web`)."""
    import uvicorn

    port = free_port()
    server = uvicorn.Server(uvicorn.Config(app, host="127.0.0.1", port=port, log_level="warning"))
    thread = threading.Thread(target=server.run, daemon=True)
    thread.start()
    deadline = time.monotonic() + 30
    while not server.started:
        assert thread.is_alive() and time.monotonic() < deadline, "uvicorn did not start"
        time.sleep(0.05)
    try:
        yield f"http://127.0.0.1:{port}"
    finally:
        server.should_exit = True
        thread.join(15)


def in_background(call) -> tuple[threading.Thread, dict]:
    """Run `call()` in a thread; its answer (or exception) lands in the returned dict."""
    out: dict = {}

    def run() -> None:
        try:
            out["answer"] = call()
        except Exception as error:  # noqa: BLE001 - reported by the test
            out["error"] = error

    thread = threading.Thread(target=run, daemon=True)
    thread.start()
    return thread, out


class Http(requests.Session):
    """requests against one base URL, 20 s unless told (each thread gets its own connection)."""

    def __init__(self, base: str) -> None:
        super().__init__()
        self.base = base

    def request(self, method, url, *args, **kwargs):
        kwargs.setdefault("timeout", 20)
        return super().request(method, self.base + url, *args, **kwargs)


@pytest.fixture(scope="module")
def patches(idc_sample: Path) -> list[tuple[str, bytes]]:
    return [(p.name, p.read_bytes()) for p in sample_patches(idc_sample, full=3, border=1)]


def patient_zip(idc_sample: Path, extra: dict[str, bytes] | None = None) -> bytes:
    buffer = io.BytesIO()
    with zipfile.ZipFile(buffer, "w") as archive:
        for path in sorted((idc_sample / PATIENT).rglob("*.png"))[:12]:
            archive.writestr(str(path.relative_to(idc_sample)), path.read_bytes())
        for name, data in (extra or {}).items():
            archive.writestr(name, data)
    return buffer.getvalue()


def files_of(patches: list[tuple[str, bytes]]) -> list:
    return [("files", (name, data, "image/png")) for name, data in patches]


# ----------------------------------------------------------------- security headers


def assert_secure(answer, what: str) -> None:
    for name, value in SECURITY.items():
        assert answer.headers.get(name) == value, (what, name, answer.headers.get(name))
    policy = answer.headers.get("content-security-policy", "")
    assert "frame-ancestors 'none'" in policy, (what, policy)
    assert "default-src 'none'" in policy, (what, policy)


def test_every_route_sends_the_security_headers(patches, idc_sample: Path) -> None:
    from starlette.testclient import TestClient

    scorer = fake_scorer()
    client = TestClient(make_app(scorer), raise_server_exceptions=False)
    small = TestClient(make_app(fake_scorer(request_bytes=1000)))
    zipped = {"file": ("p.zip", patient_zip(idc_sample), "application/zip")}
    answers = {
        "home": client.get("/"),
        "about": client.get("/about"),
        "health": client.get("/health"),
        "api model": client.get("/api/model"),
        "css": client.get("/static/style.css"),
        "favicon": client.get("/favicon.ico"),
        "openapi": client.get("/openapi.json"),
        "docs": client.get("/docs"),
        "predict": client.post("/predict", files=files_of(patches)),
        "api predict": client.post("/api/predict", files=files_of(patches)),
        "patient": client.post("/patient", files=zipped),
        "api patient": client.post("/api/patient", files=zipped),
        "404": client.get("/nowhere"),
        "405": client.get("/predict"),
        "400": client.post("/predict", files=[("files", ("a.png", b"nope", "image/png"))]),
        "400 api": client.post("/api/patient", files=[("file", ("a.zip", b"no", "x"))]),
        "413": small.post("/predict", files=files_of(patches)),
    }
    scorer.fail = True
    answers["500"] = client.post("/api/predict", files=files_of(patches))
    expected = {"404": 404, "405": 405, "400": 400, "400 api": 400, "413": 413, "500": 500,
                "favicon": 204}
    for what, answer in answers.items():
        assert answer.status_code == expected.get(what, 200), (what, answer.text[:300])
        assert_secure(answer, what)
    page = answers["home"].headers["content-security-policy"]
    assert "script-src" not in page and "'unsafe-inline'" not in page  # nothing runs
    assert "img-src 'self' data:" in page and "form-action 'self'" in page
    docs = answers["docs"].headers["content-security-policy"]
    assert "script-src https://cdn.jsdelivr.net 'sha256-" in docs
    assert client.get("/redoc").status_code == 404  # it would need three more origins


def test_the_docs_policy_names_the_hash_of_the_pages_inline_script() -> None:
    import base64
    import hashlib

    from histomlf.web.security import docs_policy

    html = '<script src="https://cdn.jsdelivr.net/x.js"></script>\n<script>\nrun(1)\n</script>'
    digest = base64.b64encode(hashlib.sha256(b"\nrun(1)\n").digest()).decode()
    assert f"'sha256-{digest}'" in docs_policy(html)


# ----------------------------------------------------------------- the scoring cap


def test_busy_slots_answer_503_with_retry_after_while_health_answers(patches) -> None:
    scorer = fake_scorer()
    scorer.gate = threading.Event()
    with served(make_app(scorer)) as url:  # the default: 2 slots
        with Http(url) as http:
            busy = [in_background(lambda: http.post("/api/predict", files=files_of(patches)))
                    for _ in range(2)]
            try:
                for _ in busy:  # both requests are inside the scorer, holding the 2 slots
                    assert scorer.entered.acquire(timeout=20), "a request never reached scoring"
                started = time.monotonic()
                health = http.get("/health", timeout=3)
                health_s = time.monotonic() - started
                assert health.status_code == 200 and health_s < 1.0, health_s
                assert http.get("/", timeout=3).status_code == 200
                for path in ("/api/predict", "/predict"):
                    extra = http.post(path, files=files_of(patches), timeout=3)
                    assert extra.status_code == 503, (path, extra.status_code)
                    assert extra.headers["retry-after"] == "5"
                    assert "busy" in extra.text and "try again" in extra.text
                assert_secure(extra, "503")
                assert extra.headers["content-type"].startswith("text/html")
            finally:
                scorer.gate.set()
            for thread, out in busy:
                thread.join(20)
                assert out["answer"].status_code == 200, out
            # the slots are free again
            assert http.post("/api/predict", files=files_of(patches)).status_code == 200


def test_a_refused_upload_frees_its_slot() -> None:
    from starlette.testclient import TestClient

    from histomlf.web.security import DEFAULT_SCORING_SLOTS

    assert DEFAULT_SCORING_SLOTS == 2

    client = TestClient(make_app(fake_scorer(), scoring_slots=1))
    for _ in range(3):
        bad = client.post("/api/predict", files=[("files", ("a.png", b"nope", "image/png"))])
        assert bad.status_code == 400
    with pytest.raises(ValueError, match="scoring slots must be >= 1"):
        make_app(fake_scorer(), scoring_slots=0)


def test_the_cli_option_and_the_about_page_state_the_cap_and_the_missing_login() -> None:
    from click.testing import CliRunner
    from starlette.testclient import TestClient

    from histomlf.cli.web import web

    help_text = CliRunner().invoke(web, ["--help"]).output
    assert "--scoring-slots" in help_text and "503" in help_text and "[default: 2;" in help_text
    refused = CliRunner().invoke(web, ["--scoring-slots", "0"])
    assert refused.exit_code == 2 and "--scoring-slots" in refused.output
    html = TestClient(make_app(fake_scorer(), scoring_slots=3)).get("/about").text
    text = " ".join(re.sub(r"<[^>]+>", " ", html).split())
    for phrase in ("no login", "127.0.0.1", "reverse proxy with authentication", "auth_basic",
                   "OAuth2 proxy", "at most 3 uploads are scored at once"):
        assert phrase in text, phrase


# ----------------------------------------------------------------- the event loop stays free


@pytest.mark.parametrize(
    ("path", "blocking"),
    [("/predict", "decode_files"), ("/api/predict", "decode_files"),
     ("/patient", "read_patient_zip"), ("/api/patient", "read_patient_zip")],
)
def test_health_answers_while_an_upload_is_decoded(
    path: str, blocking: str, patches, idc_sample: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A decoder that takes seconds (a crafted PNG costs 0.2 s of CPU each) must not stall
    the other requests: it runs in a worker thread, not on the event loop."""
    import histomlf.web.app as app_module

    real = getattr(app_module, blocking)
    entered, release = threading.Event(), threading.Event()

    def slow(*args, **kwargs):
        entered.set()
        release.wait(8)  # blocks whichever thread runs it: the event loop on the base commit
        return real(*args, **kwargs)

    monkeypatch.setattr(app_module, blocking, slow)
    if path.endswith("patient"):
        files = {"file": ("p.zip", patient_zip(idc_sample), "application/zip")}
    else:
        files = files_of(patches)
    with served(make_app(fake_scorer())) as url, Http(url) as http:
        thread, out = in_background(lambda: http.post(path, files=files))
        try:
            assert entered.wait(20), "the upload never reached its decoder"
            started = time.monotonic()
            try:
                health = http.get("/health", timeout=2)
            except requests.Timeout:
                pytest.fail(f"/health did not answer in 2 s while {path} was being decoded")
            assert health.status_code == 200 and time.monotonic() - started < 1.0
        finally:
            release.set()
            thread.join(20)
        assert out["answer"].status_code == 200, out


# ----------------------------------------------------------------- long and hostile file names


def test_display_names_keep_head_and_tail_within_80_characters() -> None:
    from histomlf.web.results import display_message, display_name

    assert display_name("10253_idx5_x1001_y1001_class0.png") == "10253_idx5_x1001_y1001_class0.png"
    name = "a" * 1000 + "_x51_y51_class1.png"
    short = display_name(name)
    assert len(short) == 80 and short.startswith("a" * 40) and short.endswith("_class1.png")
    assert "\u2026" in short and display_name(short) == short
    assert display_name("b" * 81) == "b" * 40 + "\u2026" + "b" * 39
    message = f"same position as {'c' * 5000}.png: skipped"
    assert len(display_message(message)) < 120 and display_message(message).endswith("skipped")
    assert len(display_message("word " * 10_000)) == 400


def test_long_file_names_are_shortened_and_escaped_in_every_row(
    patches, idc_sample: Path
) -> None:
    from starlette.testclient import TestClient

    client = TestClient(make_app(fake_scorer()))
    long_good = "g" * 4_000 + "_good.png"  # python-multipart refuses a part header > 4,224 B
    long_bad = "b" * 4_000 + "_bad.png"
    hostile = "<img src=x onerror=alert(1)>&.png"
    upload = [(long_good, patches[0][1]), (hostile, patches[1][1]), (long_bad, b"not an image")]
    plain = [("good.png", patches[0][1]), (hostile, patches[1][1]), ("bad.png", b"not an image")]

    html = client.post("/predict", files=files_of(upload)).text
    baseline = client.post("/predict", files=files_of(plain)).text
    # a name was echoed 4 times in its row (data-file, the cell, two alt texts), 2 if refused
    assert len(html) - len(baseline) < 6 * 80, len(html) - len(baseline)
    assert re.search(r"[gb]{81}", html) is None
    assert 'data-file="' + "g" * 40 + "\u2026" + "g" * 30 + '_good.png"' in html
    assert "b" * 40 + "\u2026" in html and "_bad.png</code>: not a PNG or JPEG" in html
    assert "<img src=x" not in html and "&lt;img src=x onerror=alert(1)&gt;&amp;.png" in html

    api = client.post("/api/predict", files=files_of(upload)).json()
    files = [row["file"] for row in api["predictions"]] + [e["file"] for e in api["errors"]]
    assert [len(f) for f in files] == [80, len(hostile), 80]
    assert files[0].endswith("_good.png") and files[2].endswith("_bad.png")
    assert files[1] == hostile  # JSON carries it as data; only HTML needed escaping

    refused = client.post("/api/predict", files=files_of([(long_bad, b"x")]))
    assert refused.status_code == 400 and len(refused.text) < 2_000

    # a patient zip: good patches in a long folder, a bad member with a 60 KB path
    good = sorted((idc_sample / PATIENT / "0").glob("*.png"))[:2]
    members = {f"{'f' * 5000}/{p.name}": p.read_bytes() for p in good}
    members[f"{'d' * 60_000}/{PATIENT}_idx5_x5001_y5001_class0.png"] = b"broken"
    buffer = io.BytesIO()
    with zipfile.ZipFile(buffer, "w") as archive:
        for name, data in members.items():
            archive.writestr(name, data)
    zipped = {"file": ("p.zip", buffer.getvalue(), "application/zip")}
    page = client.post("/patient", files=zipped)
    assert page.status_code == 200, page.text[:500]
    assert re.search(r"[fd]{81}", page.text) is None and "d" * 40 + "\u2026" in page.text
    body = client.post("/api/patient", files=zipped).json()
    assert [len(e["file"]) for e in body["errors"]] == [80]
    assert body["errors"][0]["file"].endswith("_x5001_y5001_class0.png")


def test_patient_rows_and_id_are_shortened_for_display(idc_sample: Path) -> None:
    """Whatever names the zip reader lets through (a long patient id, long coordinates), the
    rows, the summary and the CSV show them at most 80 characters long."""
    import pandas as pd

    from histomlf.web.results import score_patient
    from histomlf.web.uploads import FileError, PatientFiles

    pid = "7" * 300
    names = [f"{pid}_idx5_x{x}_y51_class{y}.png" for x, y in ((51, 1), (101, 0))]
    rows = pd.DataFrame({"file": names, "patient_id": pid, "x": [51, 101], "y": 51,
                         "label": [1, 0]})
    patch = np.full((50, 50, 3), 200, np.uint8)
    files = PatientFiles(pid, rows, np.stack([patch, patch // 2]),
                         [FileError("e" * 9000, f"same position as {'n' * 9000}: skipped")])
    results = score_patient(fake_scorer(), files, pictures=True)
    assert len(results.patient_id) == len(results.summary["patient_id"]) == 80
    assert results.predictions["file"].str.len().tolist() == [80, 80]
    assert results.predictions["file"].str.endswith("_y51_class1.png").tolist() == [True, False]
    assert len(results.errors[0].file) == 80 and len(results.errors[0].message) < 120
    assert len(results.csv_uri) < 2_000


# ----------------------------------------------------------------- the policy in a real browser


@contextlib.contextmanager
def chrome_with_console(chromium) -> Iterator:
    """Headless Chromium (as tests/browser.py) that keeps the console log for `get_log`."""
    from selenium import webdriver
    from selenium.webdriver.chrome.service import Service

    options = webdriver.ChromeOptions()
    options.binary_location = str(chromium.browser)
    for flag in ("--headless=new", "--no-sandbox", "--disable-gpu",
                 "--disable-background-networking", "--disable-dev-shm-usage",
                 "--window-size=1500,1000"):
        options.add_argument(flag)
    options.set_capability("goog:loggingPrefs", {"browser": "ALL"})
    driver = webdriver.Chrome(service=Service(str(chromium.driver)), options=options)
    try:
        yield driver
    finally:
        driver.quit()


def policy_violations(page) -> list[str]:
    return [entry["message"] for entry in page.get_log("browser")
            if "Content Security Policy" in entry["message"]]


@pytest.mark.slow
def test_the_pages_work_in_chromium_under_their_policy(
    chromium, patches, idc_sample: Path, tmp_path: Path
) -> None:
    from browser import body_text, wait_until

    for name, data in patches:
        (tmp_path / name).write_bytes(data)
    archive = tmp_path / f"{PATIENT}.zip"
    archive.write_bytes(patient_zip(idc_sample))

    def images_loaded(page) -> bool:
        images = page.find_elements("tag name", "img")
        return bool(images) and all(
            i.get_property("complete") and i.get_property("naturalWidth") > 0 for i in images)

    with served(make_app(fake_scorer())) as url, chrome_with_console(chromium) as page:
        checked = {}
        for path in ("/", "/about"):
            page.get(url + path)
            wait_until(lambda: "fake" in body_text(page), 20, path, page)
            color = page.execute_script(
                "return getComputedStyle(document.querySelector('header.top')).backgroundColor")
            assert color == "rgb(122, 42, 106)", (path, color)  # the stylesheet applied
            checked[path] = policy_violations(page)

        page.get(url)
        page.find_element("id", "files").send_keys("\n".join(str(tmp_path / n) for n, _ in patches))
        page.find_element("css selector", "form[action='/predict'] button").click()
        wait_until(lambda: page.find_elements("css selector", "tr.prediction"), 30, "rows", page)
        wait_until(lambda: images_loaded(page), 20, "thumbnails and overlays", page)
        assert len(page.find_elements("tag name", "img")) == 2 * len(patches)
        checked["/predict"] = policy_violations(page)

        page.get(url)
        page.find_element("id", "zip").send_keys(str(archive))
        page.find_element("css selector", "form[action='/patient'] button").click()
        wait_until(lambda: "predicted IDC" in body_text(page), 30, "the patient page", page)
        wait_until(lambda: images_loaded(page), 20, "the patient map", page)
        link = page.find_element("css selector", "a[download]")
        assert link.get_attribute("href").startswith("data:text/csv;base64,")
        checked["/patient"] = policy_violations(page)

        page.get(url + "/nowhere")
        wait_until(lambda: "no page at /nowhere" in body_text(page), 10, "the 404 page", page)
        checked["/nowhere"] = policy_violations(page)

        # /docs: its inline script runs under the hash (offline, the CDN's bundle is missing,
        # so the script's own ReferenceError is what shows that it ran)
        page.get(url + "/docs")
        time.sleep(1.0)
        log = [entry["message"] for entry in page.get_log("browser")]
        checked["/docs"] = [m for m in log if "Content Security Policy" in m]
        assert checked == {path: [] for path in checked}, checked
        assert page.find_elements("css selector", ".swagger-ui") or any(
            "SwaggerUIBundle is not defined" in m for m in log), log

        # the console does report a violation: a script put into the page is refused
        page.get(url + "/about")
        page.execute_script(
            "const s = document.createElement('script'); s.textContent = 'window.ran = 1';"
            "document.body.appendChild(s);"
            "const i = document.createElement('img'); i.src = 'http://127.0.0.2:9/x.png';"
            "document.body.appendChild(i);")
        time.sleep(0.5)
        assert page.execute_script("return window.ran") is None
        refused = policy_violations(page)
        assert any("script" in m for m in refused) and any("img-src" in m for m in refused), \
            refused
