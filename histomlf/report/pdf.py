"""Print the report's HTML to PDF with headless Chromium (`--print-to-pdf`).

Chromium renders the same HTML and CSS a reader's browser does (the PDF looks like the page),
needs no Python dependency, and is the browser the test suite already uses. Its binary is
found as `$HISTOMLF_CHROMIUM`, else `chromium`, `chromium-browser`, `google-chrome` on PATH.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import tempfile
from pathlib import Path

CANDIDATES = ("chromium", "chromium-browser", "google-chrome", "google-chrome-stable")
TIMEOUT_S = 120
HEADLESS_FLAGS = (
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-background-networking",
    "--disable-extensions",
    "--no-first-run",
    "--hide-scrollbars",
)


class PdfError(RuntimeError):
    """Chromium is missing or could not print the page."""


def find_chromium() -> str:
    """The Chromium binary to print with, or a one-line error naming what to install."""
    configured = os.environ.get("HISTOMLF_CHROMIUM")
    if configured:
        if not shutil.which(configured):
            raise PdfError(f"HISTOMLF_CHROMIUM={configured} is not an executable")
        return configured
    for name in CANDIDATES:
        found = shutil.which(name)
        if found:
            return found
    raise PdfError(
        "--pdf needs headless Chromium: install it (Debian/Ubuntu: apt-get install chromium) "
        "or set HISTOMLF_CHROMIUM to its path"
    )


def chromium_command(html: Path, *extra: str) -> list[str]:
    """Chromium headless on a fresh profile, reading `html` from disk."""
    return [find_chromium(), *HEADLESS_FLAGS, *extra, html.resolve().as_uri()]


def run_chromium(html: Path, *extra: str, timeout: float = TIMEOUT_S) -> None:
    """Run headless Chromium with a throwaway profile; one-line error on failure."""
    with tempfile.TemporaryDirectory(prefix="histomlf-chromium-") as profile:
        command = chromium_command(html, f"--user-data-dir={profile}", *extra)
        try:
            done = subprocess.run(
                command, capture_output=True, text=True, timeout=timeout, check=False
            )
        except subprocess.TimeoutExpired as error:
            raise PdfError(f"Chromium did not finish within {timeout:.0f} s") from error
    if done.returncode != 0:
        last = (done.stderr.strip().splitlines() or ["no output"])[-1]
        raise PdfError(f"Chromium exited with {done.returncode}: {last}")


def print_pdf(html: Path, pdf: Path) -> Path:
    """Print `html` (an HTML file on disk) to `pdf`, A4 landscape as the page's CSS asks."""
    pdf.parent.mkdir(parents=True, exist_ok=True)
    pdf.unlink(missing_ok=True)
    run_chromium(html, f"--print-to-pdf={pdf.resolve()}", "--no-pdf-header-footer")
    if not pdf.is_file() or pdf.stat().st_size == 0:
        raise PdfError(f"Chromium wrote no PDF at {pdf}")
    return pdf
