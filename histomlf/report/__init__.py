"""The study report: a `Study` (plain run data) in, one self-contained HTML file (and a PDF) out.

Pure: nothing here imports MLflow; `histomlf.tracking.report_store` reads the runs and logs the
report run, `histomlf report` (histomlf/cli/report.py) wires the two.
"""
