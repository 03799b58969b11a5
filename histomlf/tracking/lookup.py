"""Does the store hold the run or registered model a URI names? Asked without importing MLflow.

`import mlflow` alone takes 2.4-3 s on a two-core machine and `MlflowClient` over 5 s, so a
well-formed URI naming nothing (`models:/no-such-model@champion`, a mistyped run id) would
answer only after that. `check_model_exists` asks the store directly and answers in
milliseconds:

- `sqlite:///<path>` (and an unset `$MLFLOW_TRACKING_URI`, MLflow's `sqlite:///mlflow.db` unless
  `./mlruns` holds data): a missing database file holds nothing (MLflow would create an empty one
  just to say so); otherwise one read-only query on the tables MLflow's SQL store keeps (`runs`,
  `registered_models`, `model_versions`, `registered_model_aliases`), across workspaces.
- `http(s)://`: the REST API's get calls (`runs/get`, `registered-models/get`,
  `registered-models/alias`, `model-versions/get`) with the same login as the server probe; only
  MLflow's own `RESOURCE_DOES_NOT_EXIST` answer counts as missing.

It only ever says "missing" when the store said so. Anything it cannot read with certainty (a
file store, another database, `models:/m-<id>`, a stage, an unexpected schema or answer) passes,
and MLflow, loading the model next, has the last word. `$MLFLOW_REGISTRY_URI`, when set, is the
store asked for `models:/` URIs, as in MLflow.
"""

from __future__ import annotations

import contextlib
import os
import re
import sqlite3
from pathlib import Path
from urllib.parse import quote, urlparse

from histomlf.errors import UserError

DEFAULT_SQLITE = "sqlite:///mlflow.db"
_LOOKUP_TIMEOUT_S = 5.0
STORE = "<store>"


class ModelNotFoundError(UserError, LookupError):
    """The store answered that the run, registered model, version or alias does not exist."""


def _store_uri(model_uri: str) -> str:
    tracking = os.environ.get("MLFLOW_TRACKING_URI", "")
    if model_uri.startswith("models:"):
        tracking = os.environ.get("MLFLOW_REGISTRY_URI", "") or tracking
    if not tracking:
        mlruns = Path("mlruns")
        return "" if mlruns.is_dir() and any(mlruns.iterdir()) else DEFAULT_SQLITE
    return tracking


def _queries(model_uri: str) -> list[tuple[str, str, tuple[str, ...], str]]:
    """What to ask, in order: (kind, SQL, arguments, the answer when it finds nothing)."""
    text = model_uri.strip()
    run = re.fullmatch(r"runs:/([0-9A-Za-z_-]+)/.*", text)
    if run:
        return [("run", "SELECT 1 FROM runs WHERE run_uuid = ?", (run[1],),
                 f"no run {run[1]!r}")]
    model = re.fullmatch(r"models:/([^/@]+)(?:@([^/@]+)|/([^/@]+))", text)
    if not model:  # models:/m-<id> (a logged model) and anything else: MLflow's to resolve
        return []
    name, alias, version = model[1], model[2], model[3]
    asks = [("model", "SELECT 1 FROM registered_models WHERE name = ?", (name,),
             f"no registered model {name!r}")]
    if alias is not None:
        asks.append(("alias", "SELECT 1 FROM registered_model_aliases WHERE name = ? AND alias = ?",
                     (name, alias), f"registered model {name!r} has no alias {alias!r}"))
    elif version is not None and version.isdigit():
        asks.append(("version", "SELECT 1 FROM model_versions WHERE name = ? AND version = ?",
                     (name, version), f"registered model {name!r} has no version {version}"))
    return asks


def _sqlite_missing(path: str, asks: list[tuple[str, str, tuple[str, ...], str]]) -> str | None:
    database = Path(path).expanduser()
    if not database.exists():
        return asks[0][3] + f" in {STORE} (it has no database file yet)"
    try:
        with contextlib.closing(sqlite3.connect(
            f"{database.resolve().as_uri()}?mode=ro", uri=True, timeout=_LOOKUP_TIMEOUT_S
        )) as connection:
            for _kind, sql, arguments, missing in asks:
                if connection.execute(sql, arguments).fetchone() is None:
                    return missing
    except sqlite3.Error:
        return None  # not a store this module can read with certainty: MLflow decides
    return None


def _rest_missing(base: str, asks: list[tuple[str, str, tuple[str, ...], str]]) -> str | None:
    import requests

    from histomlf.tracking.probe import _auth, _verify

    auth, headers = _auth()
    api = f"{base.rstrip('/')}/api/2.0/mlflow"
    for kind, _sql, arguments, missing in asks:
        name = quote(arguments[0], safe="")
        path = {
            "run": f"runs/get?run_id={name}",
            "model": f"registered-models/get?name={name}",
            "alias": f"registered-models/alias?name={name}&alias={quote(arguments[-1], safe='')}",
            "version": f"model-versions/get?name={name}&version={arguments[-1]}",
        }[kind]
        try:
            answer = requests.get(f"{api}/{path}", auth=auth, headers=headers, verify=_verify(),
                                  timeout=_LOOKUP_TIMEOUT_S)
            code = answer.json().get("error_code") if answer.status_code == 404 else None
        except (requests.RequestException, ValueError, AttributeError):
            return None
        if code == "RESOURCE_DOES_NOT_EXIST":
            return missing
    return None


def check_model_exists(model_uri: str) -> None:
    """Raise `ModelNotFoundError` when the store says `model_uri`'s run or model is missing.

    Call it after `histomlf.model_uri.check_model_uri` (the URI's shape) and, for a remote
    server, after the probe; see the module docstring for what is asked and what passes.
    """
    asks = _queries(model_uri)
    store = _store_uri(model_uri)
    if not asks or not store:
        return
    scheme = urlparse(store).scheme
    if scheme == "sqlite" and store.startswith("sqlite:///") and ":memory:" not in store:
        missing = _sqlite_missing(store[len("sqlite:///"):], asks)
    elif scheme in ("http", "https"):
        missing = _rest_missing(store, asks)
    else:
        return
    if missing:
        where = missing.replace(STORE, store) if STORE in missing else f"{missing} in {store}"
        raise ModelNotFoundError(f"{where}: check {model_uri!r}")
