"""Training: the fit (`histomlf.training.fit`) and the recipe's pure steps
(`histomlf.training.workflow`: data, fit, threshold, scores). Nothing here imports MLflow."""
