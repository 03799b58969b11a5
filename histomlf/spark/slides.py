"""Slides on Spark: one task per slide, each running a task function on its executor.

The driver lists the slides and passes `(slide path, output folder)` pairs; `run_per_slide`
makes one partition (one task) per slide, so slides are scored in parallel across executor
cores and a lost task reruns only its slide. The task function (from
`histomlf.tracking.spark_slides`) opens the slide on the executor — OpenSlide handles do not
pickle — and returns plain rows; nothing but those rows comes back to the driver. Slides and
output folders must be paths the executors see as the driver does (a shared filesystem).
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Iterator, Sequence
from typing import Any

SlideTask = Callable[[Iterable[tuple[str, str]]], Iterator[dict[str, Any]]]


def run_per_slide(spark: Any, items: Sequence[tuple[str, str]], task: SlideTask) -> list[dict]:
    """Run `task` over `items`, one task per item; the rows in the order of `items`."""
    if not items:
        return []
    context = spark.sparkContext
    context.setJobDescription(f"histomlf slide predict: {len(items)} slides")
    try:
        rows = context.parallelize(list(items), len(items)).mapPartitions(task).collect()
    finally:
        context.setJobDescription(None)
    order = {path: index for index, (path, _) in enumerate(items)}
    return sorted(rows, key=lambda row: order[row["path"]])
