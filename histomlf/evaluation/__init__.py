"""Evaluation as pure functions of `(y_true, y_prob)`: the metric table, metrics, thresholds,
patient-level bootstrap intervals and figures. Nothing here trains, loads models or logs."""
