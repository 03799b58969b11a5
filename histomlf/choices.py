"""The closed choice lists of the recipe: defined here once, imported wherever code branches.

`TrainConfig` validates against them, the CLI offers them as `click.Choice`s, the tuning space
draws from them, and the modules that act on a value (`data/augment.py`, `data/balance.py`,
`training/fit.py`, `models/averaging.py`) refuse anything else. Nothing is imported here, so
every layer may use it.
"""

from __future__ import annotations

AUGMENT_CHOICES = ("none", "light", "strong", "stronger")
BALANCE_CHOICES = ("class_weight", "undersample", "none")
OPTIMIZER_CHOICES = ("adam", "adamw", "sgd", "rmsprop")
LR_SCHEDULE_CHOICES = ("constant", "cosine")
TTA_CHOICES = ("none", "dihedral8")
LOG_MODELS_CHOICES = ("best", "all")
DIRECTION_CHOICES = ("max", "min")
# `histomlf cv --final`: what the folds leave behind, and how that final model is calibrated.
FINAL_CHOICES = ("none", "ensemble", "refit")
CALIBRATION_CHOICES = ("platt", "none")
