"""`histomlf web`: what a user uploads, what the page answers, and every way an upload is refused.

The upload rules (files, zips) are checked directly on real sample patches and hand-made bad
files. The app is checked through Starlette's TestClient over the session's study store
(`models:/idc-study@champion`, no new training), and once for real: a `histomlf web` process,
driven by headless Chromium, whose probabilities must equal the in-process pyfunc's.
"""

from __future__ import annotations

import base64
import dataclasses
import io
import os
import re
import stat
import struct
import zipfile
import zlib
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from helpers_mlflow import sample_patches
from helpers_web import web_process
from PIL import Image
from study_store import StudyStore, invoke_cli, tracking_env

DOCS = Path(__file__).resolve().parents[1] / "docs"
MODEL = "models:/idc-study@champion"
UI_URL = "http://mlflow.example:5000"
PATIENT = "13693"  # 70 patches in the sample, both classes
TOLERANCE = 1e-5


# ----------------------------------------------------------------- files the tests upload


def png_bytes(array: np.ndarray) -> bytes:
    buffer = io.BytesIO()
    Image.fromarray(array).save(buffer, format="PNG")
    return buffer.getvalue()


def bomb_png(width: int = 100_000, height: int = 100_000) -> bytes:
    """A valid PNG signature and IHDR declaring a huge image, with almost no data."""
    header = struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0)
    chunk = b"IHDR" + header
    ihdr = struct.pack(">I", len(header)) + chunk + struct.pack(">I", zlib.crc32(chunk))
    return b"\x89PNG\r\n\x1a\n" + ihdr + b"\x00" * 64


def bad_files(good: bytes) -> dict[str, tuple[bytes, str]]:
    """file name -> (bytes, a phrase its refusal must contain)."""
    return {
        "notes.png": (b"these are not pixels", "not a PNG or JPEG"),
        "truncated.png": (good[: len(good) // 2], "not a readable image"),
        "bomb.png": (bomb_png(), "decompression bomb"),
        "huge.png": (b"\x89PNG\r\n\x1a\n" + b"\x00" * (300 * 1024), "too large"),
        "tile.png": (png_bytes(np.full((40, 60, 3), 200, np.uint8)), "larger than a 50x50"),
        "empty.png": (b"", "empty file"),
    }


def zip_of(members: dict[str, bytes], *, compression: int = zipfile.ZIP_STORED) -> bytes:
    buffer = io.BytesIO()
    with zipfile.ZipFile(buffer, "w", compression) as archive:
        for name, data in members.items():
            archive.writestr(name, data)
    return buffer.getvalue()


def patient_members(idc_sample: Path, patient: str = PATIENT, flat: bool = False) -> dict:
    files = sorted((idc_sample / patient).rglob("*.png"))
    return {(f.name if flat else str(f.relative_to(idc_sample))): f.read_bytes() for f in files}


# ----------------------------------------------------------------- the upload rules (fast)


def test_each_bad_file_gets_its_own_reason_and_the_good_ones_decode(idc_sample: Path) -> None:
    from histomlf.serving import images_from_base64
    from histomlf.web.uploads import decode_files

    good = sample_patches(idc_sample, full=3, border=2)
    uploads = [(p.name, p.read_bytes()) for p in good]
    bad = bad_files(uploads[0][1])
    uploads[2:2] = [(name, data) for name, (data, _) in bad.items()]
    decoded = decode_files(uploads, max_bytes=256 * 1024, max_pixels=2500)

    assert decoded.names == [p.name for p in good]
    reasons = {e.file: e.message for e in decoded.errors}
    assert sorted(reasons) == sorted(bad)
    for name, (_, phrase) in bad.items():
        assert phrase in reasons[name], (name, reasons[name])
    # the served model's own decoding (base64 rows) gives the same padded patches
    served = images_from_base64([base64.b64encode(p.read_bytes()).decode() for p in good])
    np.testing.assert_array_equal(decoded.patches, served)


def test_a_patient_zip_reads_the_same_from_kaggle_layout_and_flat(idc_sample: Path) -> None:
    from histomlf.web.limits import Limits
    from histomlf.web.uploads import read_patient_zip

    kaggle = patient_members(idc_sample)
    flat = patient_members(idc_sample, flat=True)
    read = [read_patient_zip(zip_of(m), Limits(), max_bytes=256 * 1024, max_pixels=2500)
            for m in (kaggle, flat)]
    for files in read:
        assert files.patient_id == PATIENT and files.errors == []
        assert len(files.rows) == len(kaggle) == len(files.patches)
        assert set(files.rows["label"]) == {0, 1}
    pd.testing.assert_frame_equal(read[0].rows, read[1].rows)
    np.testing.assert_array_equal(read[0].patches, read[1].patches)


def test_a_patient_zip_names_each_unusable_member(idc_sample: Path) -> None:
    from histomlf.web.limits import Limits
    from histomlf.web.uploads import read_patient_zip

    members = patient_members(idc_sample)
    first = next(iter(members))
    name = Path(first).name
    other = "1" if "class0" in name else "0"
    members.update({
        "__MACOSX/._x.png": b"litter", f"{PATIENT}/.DS_Store": b"litter",
        f"{PATIENT}/readme.txt": b"hello",
        f"{PATIENT}/0/{PATIENT}_idx5_x9951_y9951_class0.png": b"not an image",
        f"{PATIENT}/{other}/{name}": members[first],
        f"copy/{name}": members[first],
    })  # fmt: skip
    files = read_patient_zip(zip_of(members), Limits(), max_bytes=256 * 1024, max_pixels=2500)
    reasons = {e.file: e.message for e in files.errors}
    assert "Kaggle patch name" in reasons[f"{PATIENT}/readme.txt"]
    assert "not a PNG or JPEG" in reasons[f"{PATIENT}/0/{PATIENT}_idx5_x9951_y9951_class0.png"]
    assert "same position" in reasons[f"copy/{name}"]
    assert any("but named class" in m for m in reasons.values())
    assert files.skipped == 2 and len(reasons) == 4
    assert len(files.rows) == len(patient_members(idc_sample))


def _encrypted_zip() -> bytes:
    """A zip whose one entry is flagged encrypted (bit 0 of the general purpose flags, set in
    the local header and the central directory; zipfile cannot write encryption itself)."""
    data = bytearray(zip_of({"p/secret.png": b"x"}))
    central = data.index(b"PK\x01\x02")
    for offset in (6, central + 8):
        data[offset] |= 0x1
    return bytes(data)


def _symlink_zip() -> bytes:
    buffer = io.BytesIO()
    with zipfile.ZipFile(buffer, "w") as archive:
        link = zipfile.ZipInfo("p/link.png")
        link.external_attr = (stat.S_IFLNK | 0o777) << 16
        archive.writestr(link, "/etc/passwd")
    return buffer.getvalue()


@pytest.mark.parametrize(
    ("make", "status", "phrase"),
    [
        (lambda: b"PK\x03\x04 not really", 400, "not a readable zip"),
        (lambda: zip_of({f"p/{i}.png": b"x" for i in range(12)}), 413, "12 entries"),
        (lambda: zip_of({"p/a.png": b"x" * 30_000}), 413, "unpacks to 30,000 bytes"),
        (lambda: zip_of({"/etc/a.png": b"x"}), 400, "absolute path"),
        (lambda: zip_of({"p/../../a.png": b"x"}), 400, "leaving its folder"),
        (_symlink_zip, 400, "symbolic link"),
        (_encrypted_zip, 400, "encrypted entry"),
        (lambda: zip_of({"p/zeros.png": bytes(20_000_000)}, compression=zipfile.ZIP_DEFLATED),
         400, "zip bomb"),
        (lambda: zip_of({"p/readme.txt": b"hello"}), 400, "no usable patch"),
    ],
    ids=["not-zip", "entries", "bytes", "absolute", "dotdot", "symlink", "encrypted", "ratio",
         "nothing"],
)
def test_a_zip_is_refused_from_its_directory(make, status: int, phrase: str) -> None:
    from histomlf.web.limits import Limits
    from histomlf.web.uploads import UploadError, read_patient_zip

    limits = Limits(zip_members=10, zip_bytes=25_000_000 if phrase == "zip bomb" else 20_000)
    with pytest.raises(UploadError) as refused:
        read_patient_zip(make(), limits, max_bytes=256 * 1024, max_pixels=2500)
    assert refused.value.status == status
    assert phrase in str(refused.value)


def test_positions_must_be_on_one_slide(idc_sample: Path) -> None:
    from histomlf.web.limits import Limits
    from histomlf.web.uploads import UploadError, read_patient_zip

    patch = sample_patches(idc_sample, full=1, border=0)[0].read_bytes()
    far = {f"{PATIENT}_idx5_x1_y1_class0.png": patch,
           f"{PATIENT}_idx5_x0_y51_class0.png": patch,
           f"{PATIENT}_idx5_x999999951_y1_class1.png": patch}
    with pytest.raises(UploadError, match="span 20,000,000 x 1 cells") as refused:
        read_patient_zip(zip_of(far), Limits(), max_bytes=256 * 1024, max_pixels=2500)
    assert [e.message for e in refused.value.errors] == [
        "positions are 1-based: x and y must be >= 1"]


def test_the_map_tissue_equals_stitching_the_files_then_shrinking(idc_sample: Path) -> None:
    from histomlf.explain.patient_map import patient_grid, shrink, stitch_tissue
    from histomlf.web.limits import Limits
    from histomlf.web.results import stitch_patches
    from histomlf.web.uploads import read_patient_zip

    files = read_patient_zip(zip_of(patient_members(idc_sample)), Limits(),
                             max_bytes=256 * 1024, max_pixels=2500)
    frame = files.rows.assign(probability=0.5)
    by_name = {p.name: p for p in (idc_sample / PATIENT).rglob("*.png")}
    on_disk = frame.assign(path=[str(by_name[f]) for f in frame["file"]])
    expected = shrink(stitch_tissue(on_disk, patient_grid(on_disk, 0.5)))
    np.testing.assert_array_equal(stitch_patches(frame, files.patches, 0.5), expected)


def test_two_patients_in_one_zip_are_refused(idc_sample: Path) -> None:
    from histomlf.web.limits import Limits
    from histomlf.web.uploads import UploadError, read_patient_zip

    members = {**patient_members(idc_sample), **patient_members(idc_sample, "12749")}
    with pytest.raises(UploadError, match="one patient per zip: found 2"):
        read_patient_zip(zip_of(members), Limits(), max_bytes=256 * 1024, max_pixels=2500)


def test_the_cli_refuses_an_unknown_model_in_one_line(tmp_path: Path) -> None:
    with tracking_env(MLFLOW_TRACKING_URI=f"sqlite:///{tmp_path / 'mlflow.db'}"):
        result = invoke_cli("web", "--model", "models:/nope@champion", expect_exit=1)
    errors = [line for line in result.output.splitlines() if line.startswith("Error")]
    assert errors == ["Error: models:/nope@champion: Registered Model with name=nope not found"]
    assert "Traceback" not in result.output


# ----------------------------------------------------------------- the app (study store)


@pytest.fixture(scope="module")
def scorer(study_store: StudyStore):
    from histomlf.web.scorer import load_scorer

    with tracking_env(MLFLOW_TRACKING_URI=study_store.tracking_uri):
        return load_scorer(MODEL)


@pytest.fixture(scope="module")
def reference(study_store: StudyStore):
    """The champion loaded on its own, as any MLflow user would: `mlflow.pyfunc.load_model`."""
    import mlflow

    with tracking_env(MLFLOW_TRACKING_URI=study_store.tracking_uri):
        return mlflow.pyfunc.load_model(MODEL)


def pyfunc_probabilities(model, files: list[bytes]) -> np.ndarray:
    frame = pd.DataFrame({"image": [base64.b64encode(data).decode() for data in files]})
    return model.predict(frame)["probability"].to_numpy(np.float64)


def make_client(scorer, **limits):
    from starlette.testclient import TestClient

    from histomlf.web.app import create_app
    from histomlf.web.limits import Limits

    if limits:
        scorer = dataclasses.replace(scorer, limits=Limits(**limits))
    return TestClient(create_app(scorer, mlflow_ui_url=UI_URL))


@pytest.fixture(scope="module")
def client(scorer):
    return make_client(scorer)


def rows_of(html: str) -> dict[str, float]:
    """file -> the unrounded probability of each result row."""
    found = re.findall(r'<tr class="prediction[^"]*" data-file="([^"]+)" '
                       r'data-probability="([^"]+)"', html)
    return {file: float(value) for file, value in found}


def images_of(html: str) -> list[Image.Image]:
    sources = re.findall(r'<img src="([^"]+)"', html)
    images = []
    for source in sources:
        assert source.startswith("data:image/png;base64,"), source[:60]
        images.append(Image.open(io.BytesIO(base64.b64decode(source.split(",", 1)[1]))))
        images[-1].load()
    return images


def local_only(html: str) -> None:
    """No script, and every address is this app's, inline data, or the MLflow UI link."""
    assert "<script" not in html.lower()
    for address in re.findall(r'(?:src|href)="([^"]+)"', html):
        assert address.startswith(("/", "data:", "#", UI_URL)), address


@pytest.mark.slow
def test_home_says_which_model_answers(client, study_store: StudyStore) -> None:
    from mlflow.tracking import MlflowClient

    from histomlf.evaluation.text import metric_with_interval

    store = MlflowClient(study_store.tracking_uri)
    version = store.get_model_version_by_alias("idc-study", "champion")
    run = store.get_run(version.run_id)
    answer = client.get("/")
    assert answer.status_code == 200
    html = answer.text
    local_only(html)
    for expected in (f"<strong>idc-study</strong> version {version.version}", "@champion",
                     "simplecnn", version.tags["data_digest"][:12],
                     version.tags["split_digest"][:12],
                     f'href="{UI_URL}/#/experiments/{run.info.experiment_id}/runs/{run.info.run_id}"',
                     metric_with_interval(run.data.metrics, "test_roc_auc"),
                     metric_with_interval(run.data.metrics, "test_f1"),
                     '<label for="files">', '<label for="zip">', 'enctype="multipart/form-data"',
                     "not a diagnostic device"):  # fmt: skip
        assert expected in html, expected
    assert "95 % CI" in html
    css = client.get("/static/style.css")
    assert css.status_code == 200 and css.headers["content-type"].startswith("text/css")


@pytest.mark.slow
def test_about_puts_unseen_patient_scores_next_to_the_original_study(
    client, study_store: StudyStore
) -> None:
    from mlflow.tracking import MlflowClient

    from histomlf.evaluation.text import metric_with_interval

    store = MlflowClient(study_store.tracking_uri)
    run = store.get_run(store.get_model_version_by_alias("idc-study", "champion").run_id)
    html = client.get("/about").text
    local_only(html)
    for number in ("0.8673", "0.8892", "0.8343", "0.8609", "0.8848", "0.8569", "0.9196",
                   "0.8871", "0.8760", "0.8784", "0.8684", "0.8734"):
        assert number in html, number
    for key in ("test_accuracy", "test_precision", "test_recall", "test_f1"):
        assert metric_with_interval(run.data.metrics, key) in html, key
    text = re.sub(r"<[^>]+>", " ", html)
    for phrase in ("random patch split", "patients it never saw", "Grad-CAM", "patient map",
                   "not a diagnostic device", "does not show"):
        assert phrase.lower() in " ".join(text.split()).lower(), phrase


@pytest.mark.slow
def test_patches_are_scored_as_the_pyfunc_scores_them_and_bad_ones_named(
    client, scorer, reference, idc_sample: Path
) -> None:
    good = sample_patches(idc_sample, full=6, border=3)
    data = [p.read_bytes() for p in good]
    bad = bad_files(data[0])
    upload = [("files", (p.name, d, "image/png")) for p, d in zip(good, data, strict=True)]
    upload[3:3] = [("files", (name, d, "image/png")) for name, (d, _) in bad.items()]
    expected = dict(zip([p.name for p in good], pyfunc_probabilities(reference, data),
                        strict=True))

    answer = client.post("/predict", files=upload)
    assert answer.status_code == 200
    html = answer.text
    local_only(html)
    shown = rows_of(html)
    assert list(shown) == [p.name for p in good]
    for name, probability in shown.items():
        assert abs(probability - expected[name]) < TOLERANCE, name
    for name, (_, phrase) in bad.items():
        assert re.search(rf'data-file="{re.escape(name)}"><code>[^<]+</code>: [^<]*{phrase}',
                         html), name
    images = images_of(html)
    assert len(images) == 2 * len(good)  # a thumbnail and a Grad-CAM overlay per patch
    assert [image.size for image in images] == [(100, 100), (204, 100)] * len(good)

    api = client.post("/api/predict", files=upload).json()
    assert [p["file"] for p in api["predictions"]] == [p.name for p in good]
    threshold = api["model"]["threshold"]
    for row in api["predictions"]:
        assert abs(row["probability"] - expected[row["file"]]) < TOLERANCE
        assert row["label"] == int(row["probability"] >= threshold)
    assert {e["file"] for e in api["errors"]} == set(bad)
    assert api["model"]["name"] == "idc-study" and "champion" in api["model"]["aliases"]

    # scored in chunks of 4 (below the model's max_images): the same probabilities
    chunked = make_client(scorer, chunk=4).post("/api/predict", files=upload).json()
    assert [p["probability"] for p in chunked["predictions"]] == pytest.approx(
        [p["probability"] for p in api["predictions"]], abs=1e-6)


@pytest.mark.slow
def test_a_patient_zip_gives_the_map_the_summary_and_a_csv(
    client, reference, idc_sample: Path
) -> None:
    members = patient_members(idc_sample)
    members[f"{PATIENT}/0/{PATIENT}_idx5_x9951_y9951_class0.png"] = b"garbage"
    archive = zip_of(members)
    answer = client.post("/patient", files={"file": ("p.zip", archive, "application/zip")})
    assert answer.status_code == 200
    html = answer.text
    local_only(html)
    (patient_map,) = images_of(html)
    assert patient_map.size[0] > 500 and patient_map.size[1] > 300
    assert "x9951_y9951_class0.png</code>: not a PNG or JPEG" in html

    csv_uri = re.search(r'href="(data:text/csv;base64,[^"]+)" download="([^"]+)"', html)
    assert csv_uri and csv_uri[2] == f"patient-{PATIENT}-predictions.csv"
    table = pd.read_csv(io.BytesIO(base64.b64decode(csv_uri[1].split(",", 1)[1])))
    good = {Path(k).name: v for k, v in members.items() if v != b"garbage"}
    assert sorted(table["file"]) == sorted(good)
    expected = dict(zip(good, pyfunc_probabilities(reference, list(good.values())), strict=True))
    for row in table.itertuples():
        assert abs(row.probability - expected[row.file]) < TOLERANCE
    in_csv = dict(zip(table["file"], table["probability"], strict=True))
    assert rows_of(html) == pytest.approx(in_csv, abs=1e-12)

    api = client.post("/api/patient", files={"file": ("p.zip", archive, "application/zip")})
    body = api.json()
    assert body["summary"]["patient_id"] == PATIENT
    assert body["summary"]["patches"] == len(good)
    predicted = (table["predicted"] == 1).mean()
    assert body["summary"]["predicted_idc_share"] == pytest.approx(predicted)
    assert f"{100 * predicted:.1f} % predicted IDC" in html
    assert [e["file"] for e in body["errors"]] == [f"{PATIENT}/0/{PATIENT}_idx5_x9951_y9951"
                                                   "_class0.png"]


@pytest.mark.slow
@pytest.mark.parametrize(
    ("method", "path", "kwargs", "status", "phrase"),
    [
        ("post", "/predict", {"files": [("other", ("a.png", b"x", "image/png"))]}, 400,
         "no file in the field 'files'"),
        ("post", "/predict", {"files": [("files", ("a.png", b"nope", "image/png"))]}, 400,
         "none of the 1 file(s) is a usable patch"),
        ("post", "/predict", {"data": {"files": "a.png"}}, 400, "multipart/form-data"),
        ("post", "/predict", {"content": b"--x\r\nbroken", "headers": {
            "content-type": "multipart/form-data; boundary=x"}}, 400, "no file"),
        ("get", "/predict", {}, 405, "use its form"),
        ("get", "/nowhere", {}, 404, "no page at /nowhere"),
        ("post", "/patient", {"files": [("file", ("a.zip", b"not a zip", "application/zip"))]},
         400, "not a readable zip"),
        ("post", "/patient", {"files": [("file", ("a.zip", zip_of({"a/b.png": b"1"}), "x")),
                                        ("file", ("b.zip", zip_of({"a/b.png": b"1"}), "x"))]},
         400, "send one zip"),
    ],
    ids=["no-field", "all-bad", "not-multipart", "broken-multipart", "get", "unknown",
         "not-zip", "two-zips"],
)
def test_refusals_say_what_was_wrong_as_a_page_and_as_json(
    client, method: str, path: str, kwargs: dict, status: int, phrase: str
) -> None:
    page = getattr(client, method)(path, **kwargs)
    assert page.status_code == status
    assert page.headers["content-type"].startswith("text/html")
    assert phrase in page.text.replace("&#39;", "'")
    assert "<h1>Not scored" in page.text
    api_path = f"/api{path}"
    api = getattr(client, method)(api_path, **kwargs)
    assert api.status_code == status
    assert phrase.replace(path, api_path) in api.json()["detail"]


@pytest.mark.slow
def test_caps_answer_413_by_content_length_and_while_streaming(scorer, idc_sample: Path) -> None:
    small = make_client(scorer, request_bytes=40_000, files=3, zip_members=5)
    patch = sample_patches(idc_sample, full=1, border=0)[0].read_bytes()

    # Content-Length over the cap: refused before the body is read
    big = [("files", (f"{i}.png", patch, "image/png")) for i in range(20)]
    answer = small.post("/predict", files=big)
    assert answer.status_code == 413
    assert "40,000 bytes allowed" in answer.text and "<h1>Not scored" in answer.text
    assert small.post("/api/predict", files=big).json()["detail"].startswith("the upload is too")

    # no Content-Length (chunked): counted while streaming
    body = b"--b\r\n" + b"x" * 60_000

    def chunks() -> Iterator[bytes]:
        for start in range(0, len(body), 8192):
            yield body[start : start + 8192]

    answer = small.post("/predict", content=chunks(),
                        headers={"content-type": "multipart/form-data; boundary=b"})
    assert answer.status_code == 413 and "too large" in answer.text

    four = [("files", (f"{i}.png", patch, "image/png")) for i in range(4)]
    answer = small.post("/api/predict", files=four)
    assert answer.status_code == 413 and "more than 3" in answer.json()["detail"]
    entries = zip_of({f"{PATIENT}_idx5_x{i}1_y1_class0.png": patch for i in range(6)})
    answer = small.post("/patient", files={"file": ("p.zip", entries, "application/zip")})
    assert answer.status_code == 413 and "6 entries" in answer.text


@pytest.mark.slow
def test_uploads_leave_no_file_behind(client, idc_sample: Path, tmp_path: Path,
                                      monkeypatch: pytest.MonkeyPatch) -> None:
    import tempfile

    spool, work = tmp_path / "tmp", tmp_path / "cwd"
    spool.mkdir()
    work.mkdir()
    monkeypatch.setattr(tempfile, "tempdir", str(spool))
    monkeypatch.chdir(work)
    members = patient_members(idc_sample)
    members["notes/blob.bin"] = np.random.default_rng(0).bytes(1_200_000)
    archive = zip_of(members)  # over 1 MB: Starlette spools it to a temporary file
    answer = client.post("/patient", files={"file": ("p.zip", archive, "application/zip")})
    assert answer.status_code == 200
    assert list(spool.iterdir()) == [] and list(work.iterdir()) == []


@pytest.mark.slow
def test_the_openapi_page_describes_the_json_api(client) -> None:
    schema = client.get("/openapi.json").json()
    assert set(schema["paths"]) == {"/api/predict", "/api/patient", "/api/model",
                                    "/api/slide", "/api/slide/{job_id}"}  # whole-slide jobs
    body = schema["paths"]["/api/predict"]["post"]["requestBody"]["content"]
    assert body["multipart/form-data"]["schema"]["properties"]["files"]["type"] == "array"
    answers = schema["paths"]["/api/patient"]["post"]["responses"]
    assert {"200", "400", "413"} <= set(answers)
    assert client.get("/docs").status_code == 200
    assert client.get("/api/model").json()["name"] == "idc-study"
    assert client.get("/health").json() == {"status": "ok", "model": MODEL}
    assert client.get("/favicon.ico").status_code == 204


# ----------------------------------------------------------------- a real browser


def every_image_loaded(page) -> bool:
    images = page.find_elements("tag name", "img")
    return bool(images) and all(
        image.get_property("complete") and image.get_property("naturalWidth") > 0
        for image in images
    )


def shot(page, tmp_path: Path, name: str, min_bytes: int = 40_000) -> Path:
    path = tmp_path / f"{name}.png"
    page.save_screenshot(str(path))
    assert path.stat().st_size > min_bytes, f"{name}: screenshot looks empty"
    if os.environ.get("HISTOMLF_DOCS_SCREENSHOTS"):
        page.save_screenshot(str(DOCS / f"{name}.png"))
    return path


@pytest.mark.slow
def test_a_browser_user_scores_patches_and_maps_a_patient(
    study_store: StudyStore, chromium, reference, idc_sample: Path, tmp_path: Path
) -> None:
    from browser import body_text, headless_chrome, wait_until

    good = sample_patches(idc_sample, full=6, border=2)
    garbage = tmp_path / "garbage.png"
    garbage.write_bytes(b"this is not an image")
    expected = dict(zip([p.name for p in good],
                        pyfunc_probabilities(reference, [p.read_bytes() for p in good]),
                        strict=True))
    members = patient_members(idc_sample)
    archive = tmp_path / f"{PATIENT}.zip"
    archive.write_bytes(zip_of(members))
    expected_patient = dict(zip([Path(m).name for m in members],
                                pyfunc_probabilities(reference, list(members.values())),
                                strict=True))

    with web_process(MODEL, study_store.tracking_uri, tmp_path / "web.log", UI_URL) as url, \
            headless_chrome(chromium.browser, chromium.driver) as page:
        page.get(url)
        wait_until(lambda: "idc-study" in body_text(page), 30, "the home page", page)
        shot(page, tmp_path, "web-home")
        files = [str(p) for p in good[:3]] + [str(garbage)] + [str(p) for p in good[3:]]
        page.find_element("id", "files").send_keys("\n".join(files))
        page.find_element("css selector", "form[action='/predict'] button").click()
        wait_until(lambda: page.find_elements("css selector", "tr.prediction"), 60,
                   "the result table", page)
        rows = page.find_elements("css selector", "tr.prediction")
        shown = {r.get_attribute("data-file"): float(r.get_attribute("data-probability"))
                 for r in rows}
        assert set(shown) == set(expected)
        for name, probability in shown.items():
            assert abs(probability - expected[name]) < TOLERANCE, name
        refused = page.find_element("css selector", "li[data-file='garbage.png']").text
        assert "not a PNG or JPEG" in refused
        wait_until(lambda: every_image_loaded(page), 30, "every image decoded", page)
        assert len(page.find_elements("tag name", "img")) == 2 * len(good)
        page.set_window_size(1500, 1500)
        shot(page, tmp_path, "web-page")

        page.get(url)
        page.find_element("id", "zip").send_keys(str(archive))
        page.find_element("css selector", "form[action='/patient'] button").click()
        wait_until(lambda: "predicted IDC" in body_text(page), 60, "the patient page", page)
        wait_until(lambda: every_image_loaded(page), 30, "the patient map decoded", page)
        rows = page.find_elements("css selector", "tr.prediction")
        shown = {r.get_attribute("data-file"): float(r.get_attribute("data-probability"))
                 for r in rows}
        assert set(shown) == set(expected_patient)
        for name, probability in shown.items():
            assert abs(probability - expected_patient[name]) < TOLERANCE, name
        page.set_window_size(1500, 1900)
        shot(page, tmp_path, "web-patient")
