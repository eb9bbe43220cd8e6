"""``udf()``: a fitted estimator's method as a Spark Column function, for ``select``, SQL and streams."""

from __future__ import annotations

from typing import Any

import numpy as np
from pyspark.sql import Column, SparkSession
from pyspark.sql.pandas.types import to_arrow_type
from pyspark.sql.types import DataType, StructType, _parse_datatype_string

from ._distribute import _probe, batch_scorer, quoted, scoring_udf
from ._frames import READERS, frame_styles
from ._outputs import OutputColumn, default_names, output_columns
from ._shipping import ShippedModel
from ._validation import check_method, check_optional_chunk_size, check_scalar, declares_sparse, n_features_of


class ScoringUDF:
    """A Column function running a fitted estimator's method; made by :func:`sklspark.udf`.

    Call it with columns to get a ``Column``, or register it for SQL with
    ``spark.udf.register(name, f)``. It carries the attributes Spark's registration reads from a
    pandas/Arrow UDF (``func``, ``returnType``, ``evalType``, ``deterministic``).
    """

    def __init__(self, spark_udf: Any, feature_names: tuple[str, ...] | None, n_features: int | None) -> None:
        self._udf = spark_udf
        self._feature_names = feature_names
        self._n_features = n_features
        self.func = spark_udf.func
        self.returnType: DataType = spark_udf.returnType
        self.evalType: int = spark_udf.evalType
        self.deterministic: bool = spark_udf.deterministic

    def asNondeterministic(self) -> ScoringUDF:
        """This function, marked non-deterministic (as Spark's own UDFs offer)."""
        return ScoringUDF(self._udf.asNondeterministic(), self._feature_names, self._n_features)

    def __call__(self, *cols: str | Column) -> Column:
        """The scoring Column over ``cols``: one vector/array column, or one column per feature.

        With no columns, the estimator's ``feature_names_in_`` name them.
        """
        if not cols:
            if self._feature_names is None:
                raise TypeError(
                    "pass the feature columns: the estimator has no feature_names_in_ to name them "
                    "(it was not fitted on a pandas DataFrame)"
                )
            cols = self._feature_names
        if len(cols) > 1 and self._n_features is not None and len(cols) != self._n_features:
            raise ValueError(
                f"{len(cols)} feature columns were passed, but the estimator was fitted on {self._n_features} "
                f"features; pass one column per feature, or one vector/array column"
            )
        return self._udf(*(quoted(c) if isinstance(c, str) else c for c in cols))


def udf(
    estimator: Any,
    method: str = "predict",
    *,
    return_type: DataType | str | None = None,
    chunk_size: int | None = None,
    pandas_reader: str | None = None,
    **method_kwargs: Any,
) -> ScoringUDF:
    """A fitted estimator's prediction-time method as a Spark Column function.

    The result is used like any Spark UDF: ``df.select(f("features"))``,
    ``df.withColumn("score", f("a", "b", "c"))``, or registered for SQL with
    ``spark.udf.register("churn_score", f)``, and on streaming DataFrames as on static ones. Only
    the argument columns cross into Python, in Arrow batches; the model is serialised once here and
    loaded once per Python worker, and chunks run through the same runner as
    :func:`sklspark.distribute` (errors are :class:`sklspark.ChunkError`).

    Parameters
    ----------
    estimator : object
        A fitted scikit-learn estimator, ``Pipeline`` or any object with the method.
    method : str, default="predict"
        The method to run (see :func:`sklspark.distribute`).
    return_type : pyspark.sql.types.DataType or str, default=None
        The Column's type. ``None`` derives it from the fitted estimator without reading data
        (its method run on rows of zeros ``n_features_in_`` wide): the types of
        :func:`sklspark.distribute`'s result columns, and a struct of them for multi-part outputs
        (``kneighbors``: ``struct<distances, indices>``). Give it where the estimator records no
        ``n_features_in_`` or rejects rows of zeros.
    chunk_size : int, default=None
        Rows per call of the method; ``None`` means one call per Arrow batch (see
        :func:`sklspark.distribute`).
    pandas_reader : {"toPandas", "read_parquet", "read_csv"}, default=None
        For an estimator fitted on a pandas DataFrame: the reader whose frames each chunk imitates
        where the fitted estimator does not record it (see :func:`sklspark.distribute`).
    **method_kwargs
        Passed to the method, e.g. ``n_neighbors=5``.

    Returns
    -------
    ScoringUDF
        Called with columns, it returns a ``Column``: ``f("features")`` for one vector or
        ``array<numeric>`` column, ``f("a", "b", "c")`` (names or ``Column`` objects) for one
        numeric column per feature, in the order of ``feature_names_in_``, and ``f()`` for the
        columns named by ``feature_names_in_``.

    Raises
    ------
    TypeError
        If the return type cannot be derived from the estimator (pass ``return_type``).
    ValueError
        If the estimator is not fitted or lacks the method.
    RuntimeError
        If there is no active Spark session to ship the model through.

    Examples
    --------
    >>> from sklearn.linear_model import LogisticRegression
    >>> clf = LogisticRegression().fit([[0.0, 0.0], [1.0, 1.0], [0.0, 1.0], [1.0, 0.0]], [0, 1, 0, 1])
    >>> df = spark.createDataFrame([(1, 0.1, 0.2), (2, 0.9, 0.1)], "id long, a double, b double")
    >>> churn = udf(clf)
    >>> [row.churn for row in df.select("id", churn("a", "b").alias("churn")).orderBy("id").collect()]
    [0, 1]
    >>> _ = spark.udf.register("churn_score", churn)
    >>> df.createOrReplaceTempView("customers")
    >>> spark.sql("SELECT id, churn_score(a, b) AS churn FROM customers ORDER BY id").collect()
    [Row(id=1, churn=0), Row(id=2, churn=1)]
    """
    check_method(estimator, method)
    chunk_size = check_optional_chunk_size(chunk_size, "udf")
    check_scalar(pandas_reader, "pandas_reader", "udf", kind=str, options=READERS, none_ok=True)
    spark = SparkSession.getActiveSession()
    if spark is None:
        raise RuntimeError("sklspark.udf() ships the model through the active Spark session; start one first")
    columns = _return_columns(estimator, method, method_kwargs, return_type)
    model = ShippedModel(estimator, spark)
    frame = frame_styles(estimator, pandas_reader)  # the named columns' conversions, decided here once
    score = batch_scorer(model, method, method_kwargs, None, chunk_size, declares_sparse(estimator), columns, frame)
    names = frame.columns if frame is not None else None
    return ScoringUDF(scoring_udf(score, method, columns), names, n_features_of(estimator))


def _return_columns(
    estimator: Any, method: str, method_kwargs: dict, return_type: DataType | str | None
) -> list[OutputColumn]:
    """The result columns: from ``return_type`` when given, else from the fitted estimator."""
    if return_type is not None:
        spark_type = _parse_datatype_string(return_type) if isinstance(return_type, str) else return_type
        if not isinstance(spark_type, DataType):
            raise TypeError(f"return_type must be a Spark DataType or a DDL string, got {return_type!r}")
        fields = spark_type.fields if isinstance(spark_type, StructType) else None
        if fields is None:
            return [OutputColumn(default_names(method, 1)[0], to_arrow_type(spark_type), spark_type)]
        return [OutputColumn(f.name, to_arrow_type(f.dataType), f.dataType) for f in fields]
    name = f"{type(estimator).__name__}.{method}"
    try:
        sample = _probe(estimator, method, method_kwargs, n_features_of(estimator), np.dtype(np.float64), _no_rows)
    except ValueError as exc:
        raise TypeError(f"cannot derive the return type of {name}: {exc}; pass return_type=...") from exc
    if sample is None:
        raise TypeError(
            f"cannot derive the return type of {name} without reading data: the estimator records no "
            f'n_features_in_; pass return_type=..., e.g. return_type="double"'
        )
    return output_columns(method, sample, None, (), estimator)


def _no_rows() -> None:
    """A ``udf()`` is made before it meets any data: the probe has no rows to fall back on."""
