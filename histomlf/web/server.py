"""`histomlf web`'s process: load the model once, build the app, serve it with uvicorn."""

from __future__ import annotations

import uvicorn

from histomlf.web.app import create_app
from histomlf.web.model_card import ModelCard
from histomlf.web.scorer import Scorer, load_scorer
from histomlf.web.security import DEFAULT_SCORING_SLOTS


def serve(card: ModelCard, *, host: str, port: int, mlflow_ui_url: str | None = None,
          scoring_slots: int = DEFAULT_SCORING_SLOTS, **slides) -> None:
    """Load the model `card` describes, then serve until Ctrl-C / SIGTERM (`slides`: the slide
    options of `create_app`)."""
    scorer = load_scorer(card.uri, card=card)
    print(_ready_line(scorer, host, port), flush=True)
    app = create_app(scorer, mlflow_ui_url=mlflow_ui_url, scoring_slots=scoring_slots, **slides)
    uvicorn.run(app, host=host, port=port, log_level="info")


def _ready_line(scorer: Scorer, host: str, port: int) -> str:
    card = scorer.card
    which = f"{card.name} v{card.version}" if card.name else card.uri
    return (f"histomlf web: {which} ({card.backbone or 'unknown backbone'}, threshold "
            f"{scorer.threshold:.3f}) on http://{host}:{port}/")
