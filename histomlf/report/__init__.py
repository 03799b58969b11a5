"""The study report: a `Study` (plain run data) in, one self-contained HTML file (and a PDF) out.

Nothing here imports MLflow: `store` picks the runs and builds their `RunRecord`s through the
thin queries of `histomlf.tracking.queries`, and logs the report run through them; the
rest are pure functions of a `Study`. `histomlf report` (histomlf/cli/report.py) wires them.
"""
