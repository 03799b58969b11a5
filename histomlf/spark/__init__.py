"""Apache Spark glue: sessions and a local standalone cluster (`session`, `cluster`), patch
sources (`sources`: a Kaggle-layout folder, a manifest, an `s3://` prefix), checks and
quarantine (`patches`), the Parquet outputs (`outputs`), and one task per slide (`slides`).

Nothing here imports MLflow: the model is applied through `histomlf.tracking.spark_scoring`
(`mlflow.pyfunc.spark_udf`), and `histomlf.recipes.spark_predict` wires the two. `pyspark` is
an optional dependency (`pip install -e ".[spark]"`), imported inside functions only, so the
rest of histomlf imports without it.
"""
