"""Render a `Study` into one self-contained HTML file (Jinja2, CSS inline, images as data URIs).

Autoescaping is on: run names, tags and params are user text and land in the page as text.
"""

from __future__ import annotations

from pathlib import Path

import jinja2

from histomlf.report.content import build_context
from histomlf.report.model import Study
from histomlf.schema import Artifact, Explain, RunKind, Tag

TEMPLATES = Path(__file__).parent / "templates"


def environment() -> jinja2.Environment:
    """Jinja2 with the run record's names (`Tag`, `Artifact`, `RunKind`) as globals, so the
    template's tag keys and artifact paths come from `histomlf.schema`, never typed there."""
    env = jinja2.Environment(
        loader=jinja2.FileSystemLoader(TEMPLATES),
        autoescape=True,
        undefined=jinja2.StrictUndefined,
        trim_blocks=True,
        lstrip_blocks=True,
    )
    env.globals.update(Tag=Tag, Artifact=Artifact, Explain=Explain, RunKind=RunKind)
    return env


def render_html(study: Study) -> str:
    """The whole report as one HTML document."""
    return environment().get_template("report.html.j2").render(**build_context(study))


def write_html(study: Study, out: Path) -> Path:
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(render_html(study), encoding="utf-8")
    return out
