"""What each CLI verb does: train, cv, evaluate/predict, tune — wiring the layers below.

A recipe reads data (`histomlf.data`), trains (`histomlf.training`, `histomlf.tuning`), scores
(`histomlf.evaluation`) and hands every result to `histomlf.tracking`, the only layer that
talks to MLflow. Nothing below this package imports it.
"""
