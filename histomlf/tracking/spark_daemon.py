"""The Python worker daemon of scoring executors: TensorFlow, Keras, MLflow imported once.

Spark starts one daemon per executor (`python -m <spark.python.daemon.module>`) and forks each
Python worker from it. pyspark's own `pyspark.daemon` forks bare workers, so every worker of a
scoring job imports TensorFlow, Keras and MLflow itself (seconds each, more on a loaded
machine). This module imports them in the daemon first and then runs pyspark's daemon, so the
forked workers start with them loaded (copy-on-write). Only imports happen before the fork: no
TensorFlow op runs and no model is loaded, so no TensorFlow threads exist to be lost by it.

Named (as a string, not imported) by `histomlf.spark.session.session_conf`
(`spark.python.daemon.module`); it lives in `tracking/` because it imports the pyfunc, which
`spark/` may not. Executors must be able to import histomlf (they must anyway, for the
pyfunc). `HISTOMLF_SPARK_PRELOAD=0` on the executors turns the imports off.
"""

from __future__ import annotations

import os
import sys

PRELOAD_ENV = "HISTOMLF_SPARK_PRELOAD"


def preload() -> None:
    """Import what every scoring worker imports anyway (the pyfunc and its dependencies)."""
    if os.environ.get(PRELOAD_ENV, "1") != "1":
        return
    # the daemon tells the JVM its port on stdout: nothing an import prints may land there
    saved = os.dup(1)
    os.dup2(2, 1)
    try:
        import mlflow.pyfunc  # noqa: F401
        import tensorflow  # noqa: F401

        import histomlf.data.scan  # noqa: F401
        import histomlf.tracking.pyfunc  # noqa: F401
    finally:
        sys.stdout.flush()
        os.dup2(saved, 1)
        os.close(saved)


if __name__ == "__main__":
    preload()
    from pyspark.daemon import manager

    manager()
