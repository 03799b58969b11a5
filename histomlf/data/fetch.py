"""Download the real Kaggle IDC dataset with kagglehub, or say in one line how to get it by hand.

kagglehub retries for minutes when Kaggle is unreachable, so reachability is checked first,
with a short deadline that also covers a DNS lookup that hangs. Without network or
credentials the command fails within seconds and names the manual route.
"""

from __future__ import annotations

import os
import threading
import urllib.error
import urllib.request
from pathlib import Path

from histomlf.errors import UserError

DATASET = "paultimothymooney/breast-histopathology-images"
DATASET_URL = f"https://www.kaggle.com/datasets/{DATASET}"
PROBE_URL = "https://www.kaggle.com/"
PROBE_TIMEOUT_S = 8.0


class FetchError(UserError, RuntimeError):
    """The dataset could not be downloaded; the message says what to do instead."""


def manual_instructions(dest: str | Path) -> str:
    return (
        f"download the archive from {DATASET_URL} by hand, unzip it into {dest}, "
        f"then run `histomlf data scan {dest}`"
    )


def kaggle_reachable(timeout: float = PROBE_TIMEOUT_S) -> str | None:
    """None when https://www.kaggle.com answers within `timeout` s, else the reason it did not.

    Goes through urllib so proxy settings apply; runs in a daemon thread so that a hanging
    name lookup cannot hold the caller past the deadline.
    """
    outcome: list[str | None] = []

    def probe() -> None:
        try:
            request = urllib.request.Request(PROBE_URL, method="HEAD")
            with urllib.request.urlopen(request, timeout=timeout):
                outcome.append(None)
        except urllib.error.HTTPError:
            outcome.append(None)  # the server answered: the network works
        except (OSError, ValueError) as error:
            reason = getattr(error, "reason", error)
            outcome.append(f"{type(error).__name__}: {reason}")

    thread = threading.Thread(target=probe, daemon=True)
    thread.start()
    thread.join(timeout + 1.0)
    if not outcome:
        return f"no answer within {timeout:.0f} s"
    return outcome[0]


def has_kaggle_credentials() -> bool:
    """KAGGLE_USERNAME/KAGGLE_KEY, a KAGGLE_API_TOKEN, or a kaggle.json where kagglehub looks."""
    if os.environ.get("KAGGLE_USERNAME") and os.environ.get("KAGGLE_KEY"):
        return True
    if os.environ.get("KAGGLE_API_TOKEN"):
        return True
    config_dir = Path(os.environ.get("KAGGLE_CONFIG_DIR", Path.home() / ".kaggle"))
    return (config_dir / "kaggle.json").is_file() or (config_dir / "access_token").is_file()


def fetch_dataset(dest: str | Path, *, timeout: float = PROBE_TIMEOUT_S) -> Path:
    """Download the IDC dataset into `dest` with kagglehub; returns `dest`.

    Raises `FetchError` (one line, with the manual route) when kagglehub is not installed,
    Kaggle is unreachable, credentials are missing or the download fails.
    """
    dest = Path(dest).expanduser()
    manual = manual_instructions(dest)
    try:
        import kagglehub
    except ImportError as error:
        raise FetchError(
            f"kagglehub is not installed (pip install 'histomlf[kaggle]'); or {manual}"
        ) from error
    unreachable = kaggle_reachable(timeout)
    if unreachable:
        raise FetchError(f"cannot reach www.kaggle.com ({unreachable}); {manual}")
    if not has_kaggle_credentials():
        raise FetchError(
            "no Kaggle credentials (set KAGGLE_USERNAME and KAGGLE_KEY or put kaggle.json in "
            f"~/.kaggle, see https://www.kaggle.com/docs/api); or {manual}"
        )
    dest.mkdir(parents=True, exist_ok=True)
    try:
        path = kagglehub.dataset_download(DATASET, output_dir=str(dest))
    except Exception as error:  # kagglehub raises many kinds; all mean "not downloaded"
        raise FetchError(
            f"kagglehub download failed ({type(error).__name__}: {error}); {manual}"
        ) from error
    return Path(path)
