"""The Spark operator that scores a DataFrame for ``distribute()``: ``mapInArrow`` or an Arrow UDF, chosen once.

Both give the same rows, columns, order and partitioning; they differ in what crosses into Python and
what Spark does around it (measured in ``benchmarks/cheap.py``):

* **mapInArrow**: every column goes to Python as Arrow batches and comes back unchanged beside the
  result columns. Nothing else happens in the JVM, which makes it the cheapest path when the columns
  other than the features are few fixed-width scalars (an ``id``, a date, a number): a narrow table.
  Spark cannot see through it, so a filter or a ``select`` written *after* ``distribute()`` is not
  pushed below the scoring (filter or select first).
* **Arrow UDF** (``ArrowEvalPython``): only the feature (and key) columns cross into Python; Spark
  queues each whole input row in the JVM and joins the results back. Taken when any other column is a
  string, binary, array, map, struct, vector or other variable-width value (a wide table, whose other
  columns need not travel to Python and back), for a mapping of models, and when column names repeat.

``udf()`` is a Column and always an Arrow UDF. The choice is made from the schema by
:func:`choose_operator`, held by the scoring plan and logged on the ``sklspark`` logger.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

from pyspark.sql.types import (
    BooleanType,
    DataType,
    DateType,
    NumericType,
    StructType,
    TimestampNTZType,
    TimestampType,
)

MAP_IN_ARROW = "mapInArrow"
ARROW_UDF = "arrow UDF"

#: Spark types of fixed width that pass through Python as cheaply as they are read.
_FIXED_WIDTH = (NumericType, BooleanType, DateType, TimestampType, TimestampNTZType)


@dataclass(frozen=True)
class OperatorChoice:
    """The operator of a DataFrame's scoring and why (for the log)."""

    operator: str
    reason: str


def _fixed_width(data_type: DataType) -> bool:
    return isinstance(data_type, _FIXED_WIDTH)


def choose_operator(schema: StructType, feature_columns: Sequence[str], keyed: bool) -> OperatorChoice:
    """``mapInArrow`` for a narrow table (every other column a fixed-width scalar), else the Arrow UDF.

    Parameters
    ----------
    schema : StructType
        The DataFrame's schema (after any repartitioning, which does not change it).
    feature_columns : sequence of str
        The columns the features are read from.
    keyed : bool
        A mapping of models (its key column goes to Python as an argument of the Arrow UDF).
    """
    if keyed:
        return OperatorChoice(ARROW_UDF, "a mapping of models")
    names = [f.name for f in schema.fields]
    if len(set(names)) != len(names):
        return OperatorChoice(ARROW_UDF, "the DataFrame repeats a column name")
    features = set(feature_columns)
    wide = [f for f in schema.fields if f.name not in features and not _fixed_width(f.dataType)]
    if wide:
        shown = ", ".join(f"{f.name!r} ({f.dataType.simpleString()})" for f in wide[:3])
        more = f" and {len(wide) - 3} more" if len(wide) > 3 else ""
        return OperatorChoice(ARROW_UDF, f"only the features cross into Python; other columns {shown}{more}")
    others = len(schema.fields) - len(features)
    return OperatorChoice(MAP_IN_ARROW, f"a narrow table: {others} fixed-width column(s) besides the features")
