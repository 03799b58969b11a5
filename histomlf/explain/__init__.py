"""Explaining models: Grad-CAM maps of patches and patient maps over the tissue.

Pure functions of a Keras model, patches and prediction tables; nothing here imports mlflow.
`histomlf.explain.artifacts.write_explanations` writes the fixed `explain/` folder a run logs.
"""
