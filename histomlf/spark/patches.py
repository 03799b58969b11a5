"""Patch rows in Spark: the name parsed with Spark SQL, every file checked, bad ones quarantined.

The patient, x, y and label come from the file name through Spark SQL's `regexp_extract` with
the scanner's own `PATCH_NAME` pattern (one regex for both parsers; Java's `\\d` is ASCII
like the scanner's `re.ASCII`). Placement follows the scanner's rules for a Kaggle-layout
folder (`<pid>/<0|1>/name` under the folder or under a second top folder such as
`IDC_regular_ps50_idx5/`; the name's patient and class must match the folders), then every
file is decoded by the scanner's `check_patch_bytes` plus the two limits the served pyfunc adds
(PNG/JPEG only, at most its byte limit): the pyfunc fails a whole Arrow batch on one bad image,
so a bad file must never reach it. Copies of one name under both top folders count once; a copy
with other bytes is quarantined, as the scanner does.
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

from histomlf.data.manifest import QUARANTINE_COLUMNS
from histomlf.data.scan import NAME_PATTERN, PATCH_NAME, SECOND_TOP_FOLDER

# the columns of a kept patch, in output order (`label` is the class its name records)
PATCH_COLUMNS = ("path", "patient_id", "x", "y", "true_label")
MISPLACED = "misplaced: not inside a <pid>/<0|1>/ folder"
NOT_IN_CLASS = "misplaced: not inside a class folder 0 or 1"


def check_content(batches: Iterator[Any]) -> Iterator[Any]:
    """Executor side (`mapInPandas`): the scanner's verdict on each file's bytes, added to
    each row as `reason` (null when usable), `width`, `height`, `sha1`. Files with a placement
    verdict already are not decoded."""
    import hashlib

    from histomlf.data.scan import check_patch_bytes
    from histomlf.serving.inputs import DEFAULT_MAX_BYTES, image_kind

    for batch in batches:
        reasons, widths, heights, sha1s = [], [], [], []
        for data, placement in zip(batch["content"], batch["placement"], strict=True):
            data = bytes(data) if data is not None else b""
            verdict: Any
            if placement is not None and placement == placement:
                verdict = placement
            elif data and image_kind(data) is None:
                verdict = f"not a PNG or JPEG image (starts with {data[:8]!r})"
            elif len(data) > DEFAULT_MAX_BYTES:
                verdict = (f"larger than the served model accepts: {len(data)} bytes > "
                           f"{DEFAULT_MAX_BYTES}")
            else:
                verdict = check_patch_bytes(data)
            if isinstance(verdict, str):
                reasons.append(verdict)
                widths.append(None)
                heights.append(None)
            else:
                reasons.append(None)
                widths.append(verdict[0])
                heights.append(verdict[1])
            sha1s.append(hashlib.sha1(data).hexdigest())
        out = batch.assign(reason=reasons, width=widths, height=heights, sha1=sha1s)
        out["width"] = out["width"].astype("Int32")
        out["height"] = out["height"].astype("Int32")
        yield out


def parsed(files: Any) -> Any:
    """Add the name's fields and the placement verdict (`reason`, null when well placed)."""
    from pyspark.sql import functions as F

    pattern = PATCH_NAME.pattern
    where = F.coalesce("rel", "path")
    parts = F.split(where, "/")
    depth = F.size(parts)
    name = F.element_at(parts, -1)
    field = {k: F.regexp_extract(name, pattern, i) for i, k in enumerate(("pid", "x", "y", "c"), 1)}
    folder_pid, class_dir = F.element_at(parts, -3), F.element_at(parts, -2)
    top = F.when(depth == 4, F.element_at(parts, 1))
    first_is_patient = F.element_at(parts, 1).rlike(r"^[0-9]+$")
    in_layout = ((depth == 3) & first_is_patient) | ((depth == 4) & ~first_is_patient)
    mismatch_pid = F.concat(F.lit("patient mismatch: name says "), field["pid"],
                            F.lit(" but folder is "), folder_pid)
    mismatch_label = F.concat(F.lit("label mismatch: name says class"), field["c"],
                              F.lit(" but folder is "), class_dir)
    unparsable = F.lit(f"unparsable name: expected {NAME_PATTERN}")
    placement = (
        F.when(F.col("rel").isNull(), F.when(field["pid"] == "", unparsable))
        .when(depth == 1, F.lit(MISPLACED))
        .when(depth == 2, F.when(first_is_patient, F.lit(NOT_IN_CLASS)).otherwise(MISPLACED))
        .when((depth == 3) & ~first_is_patient, F.lit(NOT_IN_CLASS))
        .when(~in_layout, F.lit("misplaced: nested below a class folder"))
        .when(~class_dir.isin("0", "1"), F.lit(NOT_IN_CLASS))
        .when(field["pid"] == "", unparsable)
        .when(field["pid"] != folder_pid, mismatch_pid)
        .when(field["c"] != class_dir, mismatch_label)
    )
    # the scanner's order of top folders: the folder itself, the archive's second, the rest
    rank = (F.when(F.col("rel").isNull() | (depth == 3), F.lit(0))
            .when(top == SECOND_TOP_FOLDER, F.lit(1)).otherwise(F.lit(2)))
    return files.select(
        "path",
        "content",
        name.alias("name"),
        field["pid"].alias("patient_id"),
        F.when(field["x"] != "", field["x"].cast("int")).alias("x"),
        F.when(field["y"] != "", field["y"].cast("int")).alias("y"),
        F.when(field["c"] != "", field["c"].cast("int")).alias("true_label"),
        placement.alias("placement"),
        rank.alias("rank"),
    )


def checked(files: Any) -> Any:
    """Every file with its final `reason` (null: kept), duplicates marked `duplicate`."""
    from pyspark.sql import Window
    from pyspark.sql import functions as F
    from pyspark.sql.types import IntegerType, StringType, StructField, StructType

    rows = parsed(files)
    added = [StructField("reason", StringType()), StructField("width", IntegerType()),
             StructField("height", IntegerType()), StructField("sha1", StringType())]
    schema = StructType(rows.schema.fields + added)
    rows = rows.mapInPandas(check_content, schema)
    good = rows.withColumn("reason", F.coalesce("placement", "reason"))
    by_name = Window.partitionBy("name").orderBy("rank", "path")
    usable = F.col("reason").isNull()
    first = F.first(F.when(usable, F.struct("path", "sha1")), ignorenulls=True).over(
        by_name.rowsBetween(Window.unboundedPreceding, Window.unboundedFollowing)
    )
    good = good.withColumn("_first", first)
    conflict = F.concat(F.lit("conflicting duplicate: same name as "), F.col("_first.path"),
                        F.lit(", different bytes"))
    final = (
        F.when(~usable, F.col("reason"))
        .when(F.col("_first.path") == F.col("path"), F.lit(None))
        .when(F.col("_first.sha1") == F.col("sha1"), F.lit("duplicate"))
        .otherwise(conflict)
    )
    return good.withColumn("reason", final).drop("_first", "placement")


def quarantine(rows: Any) -> Any:
    """The quarantine table (`path`, `reason`), as the scanner writes it."""
    from pyspark.sql import functions as F

    bad = rows.where(F.col("reason").isNotNull() & (F.col("reason") != "duplicate"))
    return bad.select(*QUARANTINE_COLUMNS).orderBy("path")


def kept(rows: Any) -> Any:
    """The rows to score: `PATCH_COLUMNS` plus `content`."""
    from pyspark.sql import functions as F

    return rows.where(F.col("reason").isNull()).select(*PATCH_COLUMNS, "content")
