"""The run record as one schema: names in `histomlf.schema`, no copies of them elsewhere.

A `histomlf.*` tag key or an artifact path typed as a string outside `histomlf/schema.py` is a
second copy a reader must match; this test finds them in the package source (docstrings and
comments aside) and in the Jinja templates. The writer→reader round trip over a real study is
`tests/test_schema_roundtrip.py`.
"""

from __future__ import annotations

import ast
import re
from pathlib import Path

import pytest

from histomlf import schema
from histomlf.evaluation.metrics import (
    BRIEF,
    HEADLINE,
    METRICS,
    TABLED,
    headline_keys,
    headline_metrics,
)
from histomlf.schema import Artifact, Explain, GradcamName, RunKind, Tag, run_kind

PACKAGE = Path(schema.__file__).resolve().parent
SCHEMA = Path(schema.__file__).resolve()
MODULE_NAMES = {
    ".".join(p.relative_to(PACKAGE.parent).with_suffix("").parts).removesuffix(".__init__")
    for p in PACKAGE.rglob("*.py")
}
TAG_KEY = re.compile(r"histomlf\.[a-z_]+(?:\.[a-z_]+)*")
ARTIFACT_ROOTS = ("config", "environment", "data", "evaluation", "predictions", "explain",
                  "search", "cv", "report", "probe", "images", "gradcam")
ARTIFACT_PATH = re.compile(rf"(?<![\w/.:-])(?:{'|'.join(ARTIFACT_ROOTS)})/[\w<>{{}}.-]*")


def _docstrings(tree: ast.AST) -> set[int]:
    found = set()
    for node in ast.walk(tree):
        body = getattr(node, "body", None)
        if isinstance(body, list):
            found |= {id(stmt.value) for stmt in body
                      if isinstance(stmt, ast.Expr) and isinstance(stmt.value, ast.Constant)}
    return found


def literal_copies(path: Path) -> list[str]:
    """`file:line: text` for each tag key or artifact path written as a string in `path`."""
    tree = ast.parse(path.read_text())
    skipped = _docstrings(tree)
    found = []
    for node in ast.walk(tree):
        if id(node) in skipped or not isinstance(node, ast.Constant):
            continue
        if not isinstance(node.value, str):
            continue
        text = node.value
        tags = [m for m in TAG_KEY.findall(text) if m not in MODULE_NAMES]
        paths = ARTIFACT_PATH.findall(text)
        if tags or paths:
            inside = path.is_relative_to(PACKAGE.parent)
            where = path.relative_to(PACKAGE.parent) if inside else path.name
            found.append(f"{where}:{node.lineno}: {tags + paths}")
    return found


def test_the_finder_finds_a_tag_key_and_a_path_but_not_a_module_or_a_docstring(
    tmp_path: Path,
) -> None:
    source = tmp_path / "probe.py"
    source.write_text('"""Doc: histomlf.kind, evaluation/x.png."""\n'
                      'A = "histomlf.kind"\nB = f"evaluation/{1}_roc.png"\n'
                      'C = "histomlf.models.heads"\nD = "s3://bucket/data/x"\n')
    found = literal_copies(source)
    assert [line.split(":")[1] for line in found] == ["2", "3"]


def test_no_tag_key_or_artifact_path_is_typed_outside_the_schema() -> None:
    offenders = [line for path in sorted(PACKAGE.rglob("*.py")) if path != SCHEMA
                 for line in literal_copies(path)]
    assert offenders == [], "\n".join(offenders)


@pytest.mark.parametrize("template", sorted(PACKAGE.rglob("*.j2")) + sorted(
    (PACKAGE / "web" / "templates").glob("*.html")), ids=lambda p: p.name)
def test_templates_take_tag_keys_and_paths_from_python(template: Path) -> None:
    text = template.read_text()
    assert [m for m in TAG_KEY.findall(text) if m not in MODULE_NAMES] == []
    assert ARTIFACT_PATH.findall(text) == []


def test_run_kinds_keep_the_values_old_stores_hold() -> None:
    """Old stores hold these values: none may be renamed or dropped (a new kind needs no line)."""
    assert {k.value for k in RunKind} >= {
        "train", "tune", "tune-trial", "tune-resume", "cv", "cv-fold", "evaluate", "report",
        "slide", "slide-batch", "spark-predict", "cv-final"}
    assert len(RunKind.__members__) == len(RunKind)  # no member aliases another's value
    assert f"{RunKind.CV_FOLD}" == "cv-fold"
    assert run_kind({}) == "train" and run_kind({"mlflow.parentRunId": "x"}) == "nested"
    assert run_kind({Tag.KIND: "tune"}) == RunKind.TUNE


def test_tag_keys_are_distinct_and_prefixed() -> None:
    keys = [v for k, v in vars(Tag).items() if k.isupper()]
    assert len(keys) == len(set(keys)) and all(k.startswith(schema.PREFIX) for k in keys)
    assert Tag.resolved("data_dir") == "histomlf.resolved.data_dir"
    assert Tag.best("tuner/epochs") == "histomlf.best.tuner.epochs"
    assert Tag.hyperband("outcome") == Tag.HYPERBAND_OUTCOME


def test_a_gradcam_name_parses_back_to_what_built_it() -> None:
    from histomlf.explain.artifacts import gradcam_name

    name = GradcamName("fp", 2, "10253", 1051, 2001)
    assert str(name) == gradcam_name("fp", 2, "10253", 1051, 2001) == "fp_2_10253_x1051_y2001.png"
    assert GradcamName.parse(name.path) == name == GradcamName.parse(str(name))
    assert name.path.startswith(Explain.GRADCAM + "/")
    assert GradcamName.parse("explain/patients/10253.png") is None


def test_artifact_patterns() -> None:
    assert Artifact.evaluation("test", "roc") == "evaluation/test_roc.png"
    assert Artifact.predictions("val") == "predictions/val_predictions.csv"
    assert Explain.patient_map("8863", "npz") == "explain/patients/8863.npz"


def test_metric_labels_and_headline_sets_come_from_the_metric_table() -> None:
    assert all(m.label and m.short_label and m.prose for m in METRICS.values())
    # The results table and the card show every headline metric, in the table's order.
    assert [m.name for m in TABLED] == [name for name in METRICS if METRICS[name] in TABLED]
    assert {m.name for m in headline_metrics()} <= {m.name for m in TABLED}
    assert headline_keys("test_", BRIEF) == ("test_roc_auc", "test_balanced_accuracy",
                                             "test_f1")
    ranks = sorted(m.headline for m in METRICS.values() if m.headline)
    assert ranks == list(range(1, len(ranks) + 1)) and len(ranks) >= HEADLINE
