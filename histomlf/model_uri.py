"""The shape of a model URI, checked without MLflow: a typo answers in milliseconds.

MLflow takes seconds to import and `histomlf predict` would read the data first, so the forms
histomlf documents are checked here: `runs:/<run id>/<path>`, `models:/<name>@<alias>`,
`models:/<name>/<version|stage|latest>`, `models:/m-<model id>`, and a local model folder
(with its `MLmodel` file). Other schemes (`s3://`, `mlflow-artifacts:/`, ...) are MLflow's to
resolve. Whether a well-formed name or run exists is asked of the tracking store next
(`histomlf.tracking.lookup`, still without MLflow).
"""

from __future__ import annotations

import re
from pathlib import Path
from urllib.parse import urlparse

from histomlf.errors import UserError

FORMS = "runs:/<run id>/<path>, models:/<name>@<alias>, models:/<name>/<version> or a model folder"


class ModelUriError(UserError, ValueError):
    """A model URI that cannot name a model; the message shows the forms that can."""


def check_model_uri(uri: str) -> None:
    """Raise `ModelUriError` unless `uri` has one of the shapes in the module docstring."""
    text = uri.strip()
    if not text:
        raise ModelUriError(f"empty model URI; give {FORMS}")
    scheme = urlparse(text).scheme
    if text.startswith("runs:"):
        if not re.fullmatch(r"runs:/[0-9A-Za-z_-]+/\S.*", text):
            raise ModelUriError(
                f"malformed model URI {uri!r}: a run's model is runs:/<run id>/<path>"
            )
    elif text.startswith("models:"):
        rest = text[len("models:") :]
        ok = re.fullmatch(r"/[^/@]+@[^/@]+|/[^/@]+/[^/@]+|/m-[0-9A-Za-z]+", rest)
        if not ok:
            raise ModelUriError(
                f"malformed model URI {uri!r}: a registered model is models:/<name>@<alias> or "
                "models:/<name>/<version>"
            )
    elif scheme in ("", "file") or len(scheme) == 1:  # a path (one letter: a Windows drive)
        path = Path(text[len("file://") :] if scheme == "file" else text).expanduser()
        if not path.exists():
            raise ModelUriError(f"no model at {uri!r}: no such file or folder; give {FORMS}")
        if path.is_dir() and not (path / "MLmodel").is_file():
            raise ModelUriError(f"{uri!r} is a folder without an MLmodel file: not a logged model")
