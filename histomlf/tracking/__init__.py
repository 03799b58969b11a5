"""Everything that talks to MLflow: runs, logged models, the pyfunc wrapper, the registry gate.

The only package allowed to import `mlflow`; training, evaluation and serving stay pure.
"""
