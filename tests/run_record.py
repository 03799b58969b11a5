"""The user-visible keys of a tracked study: params, metric keys, tags and artifact paths.

`record(client, experiment_id)` lists, per run kind (`histomlf.kind`, children by their own
kind), the union over that kind's runs of every param key, metric key, tag key (MLflow's own
`mlflow.*` bookkeeping tags left out) and artifact path. `tests/data/run_record_keys.json` holds
the list recorded on commit a5fd88d, before the run record became one schema
(`histomlf/schema.py`); `tests/test_run_record_keys.py` compares today's study against it, so a
refactor that renames a key a user (or an old store's reader) sees fails a test. Metric keys
logged for every metric of the table (`histomlf.evaluation.metrics.METRICS`) are recorded as one
template (`test_{metric}`; `test_{metric}_ci_low` over the `bootstrap=True` ones), so a metric
added to the table needs no new lines here, and one a run forgets to log shows up as the
template's literal keys.

Run as a script to record a fresh list (it builds the study store, then logs a report), or
to list an existing study store's keys:
    PYTHONPATH=$PWD python tests/run_record.py OUT.json [sqlite:///.../mlflow.db]
"""

from __future__ import annotations

import json
import re
import sys
from pathlib import Path
from typing import Any

# Names that carry a number of the run rather than a key: a patient id, a rank, a position.
_NUMBERS = re.compile(r"\d+")
# `mlflow.log_image(key=...)` files: `images/<key>+step+<n>+timestamp+<t>+<uuid>[+compressed]`.
_LOGGED_IMAGE = re.compile(r"^(images/[^+]+)\+step\+.*?(\+compressed)?\.(png|webp)$")


def normalise(path: str) -> str:
    """An artifact path with its numbers replaced by `N` (patients 8863 and 9036 are one key)
    and MLflow's logged-image file names cut to their key."""
    path = _LOGGED_IMAGE.sub(lambda m: f"{m[1]}{m[2] or ''}.{m[3]}", path)
    return _NUMBERS.sub("N", path)


def _artifacts(client: Any, run_id: str, folder: str = "") -> list[str]:
    found = []
    for item in client.list_artifacts(run_id, folder or None):
        if item.is_dir:
            found += _artifacts(client, run_id, item.path)
        else:
            found.append(item.path)
    return found


SYSTEM_METRICS = "system/"
METRIC = "{metric}"
CI_SUFFIXES = ("_ci_low", "_ci_high")


def fold_metrics(keys: set[str]) -> set[str]:
    """`keys` with each family logged for the whole metric table as one `{metric}` template.

    `test_accuracy`, `test_precision`, ... (one per `METRICS` name) become `test_{metric}`;
    `test_accuracy_ci_low`, ... become `test_{metric}_ci_low` when they cover every
    `bootstrap=True` metric (only those get an interval). A family missing even one metric
    stays as its literal keys.
    """
    from histomlf.evaluation.metrics import METRICS

    every = set(METRICS)
    bootstrapped = {name for name, m in METRICS.items() if m.bootstrap}
    members: dict[str, set[str]] = {}
    covered: dict[str, set[str]] = {}
    for key in keys:
        for name in every:
            for match in re.finditer(rf"(?<![a-z0-9]){re.escape(name)}(?![a-z0-9])", key):
                template = key[: match.start()] + METRIC + key[match.end() :]
                members.setdefault(template, set()).add(name)
                covered.setdefault(template, set()).add(key)
    folded = set(keys)
    for template, found in members.items():
        if found == (bootstrapped if template.endswith(CI_SUFFIXES) else every):
            folded = (folded - covered[template]) | {template}
    return folded


def record(client: Any, *experiment_ids: str) -> dict[str, dict[str, list[str]]]:
    """Per run kind: sorted `params`, `metrics` (table-wide families folded, `fold_metrics`),
    `tags` and `artifacts` (numbers as `N`)."""
    kinds: dict[str, dict[str, set[str]]] = {}
    for run in client.search_runs(list(experiment_ids), max_results=5000):
        tags = run.data.tags
        kind = tags.get("histomlf.kind", "train")
        if kind == "tune-resume":
            continue
        entry = kinds.setdefault(kind, {"params": set(), "metrics": set(), "tags": set(),
                                        "artifacts": set()})
        entry["params"] |= set(run.data.params)
        # MLflow's own system/* metrics are sampled every 10 s: a short run may log none.
        entry["metrics"] |= {k for k in run.data.metrics if not k.startswith(SYSTEM_METRICS)}
        entry["tags"] |= {k for k in tags if not k.startswith("mlflow.")}
        entry["artifacts"] |= {normalise(p) for p in _artifacts(client, run.info.run_id)}
    for entry in kinds.values():
        entry["metrics"] = fold_metrics(entry["metrics"])
    return {kind: {field: sorted(values) for field, values in entry.items()}
            for kind, entry in sorted(kinds.items())}


def difference(recorded: dict, today: dict) -> list[str]:
    """Lines naming each key recorded but missing today, or new today (empty: the same)."""
    lines = []
    for kind in sorted(set(recorded) | set(today)):
        for field in ("params", "metrics", "tags", "artifacts"):
            before = {k for k in recorded.get(kind, {}).get(field, ())
                      if not (field == "metrics" and k.startswith(SYSTEM_METRICS))}
            after = set(today.get(kind, {}).get(field, ()))
            lines += [f"{kind} {field}: lost {key}" for key in sorted(before - after)]
            lines += [f"{kind} {field}: new {key}" for key in sorted(after - before)]
    return lines


def main(out: Path, existing: str = "") -> None:
    """Build a study (or read the sqlite store `existing`, already reported on) and write
    its keys to `out`."""
    import tempfile

    from conftest import SAMPLE_DIR
    from mlflow.tracking import MlflowClient
    from study_store import STUDY_EXPERIMENT, build_study, invoke_cli, tracking_env

    if existing:
        client = MlflowClient(existing)
        experiment_id = client.get_experiment_by_name(STUDY_EXPERIMENT).experiment_id
        root = existing
    else:
        root = Path(tempfile.mkdtemp(prefix="run-record-"))
        store = build_study(root / "study", SAMPLE_DIR)
        with tracking_env(MLFLOW_TRACKING_URI=store.tracking_uri):
            invoke_cli("report", "--experiment-name", store.experiment_name,
                       "--out", str(root / "report.html"))
        client, experiment_id = MlflowClient(store.tracking_uri), store.experiment_id
    keys = record(client, experiment_id)
    out.write_text(json.dumps(keys, indent=1, sort_keys=True) + "\n")
    print(f"wrote {out} ({len(keys)} kinds) from {root}")


if __name__ == "__main__":
    sys.path.insert(0, str(Path(__file__).resolve().parent))
    main(Path(sys.argv[1]), *sys.argv[2:])
