"""``udf()``: a fitted estimator's method as a Spark Column function, for ``select``, SQL and streams."""

from __future__ import annotations

from typing import Any

from pyspark.sql import Column
from pyspark.sql import functions as F
from pyspark.sql.types import DataType

from ._features import quote_column
from ._scoring import ScoringRequest, build_plan, scoring_udf


class ScoringUDF:
    """A Column function running a fitted estimator's method; made by :func:`sklspark.udf`.

    Call it with columns to get a ``Column``, or register it for SQL with
    ``spark.udf.register(name, f)``. It carries the attributes Spark's registration reads from a
    pandas/Arrow UDF (``func``, ``returnType``, ``evalType``, ``deterministic``).
    """

    def __init__(
        self, spark_udf: Any, feature_names: tuple[str, ...] | None, n_features: int | None, keyed: bool
    ) -> None:
        self._udf = spark_udf
        self._feature_names = feature_names
        self._n_features = n_features
        self._keyed = keyed
        self.func = spark_udf.func
        self.returnType: DataType = spark_udf.returnType
        self.evalType: int = spark_udf.evalType
        self.deterministic: bool = spark_udf.deterministic

    def asNondeterministic(self) -> ScoringUDF:
        """This function, marked non-deterministic (as Spark's own UDFs offer)."""
        return ScoringUDF(self._udf.asNondeterministic(), self._feature_names, self._n_features, self._keyed)

    def __call__(self, *cols: str | Column) -> Column:
        """The scoring Column over ``cols``: one vector/array column, or one column per feature.

        With no columns, the estimator's ``feature_names_in_`` name them. For a mapping of models, the
        key column comes first: ``f("store", "features")``.
        """
        if self._keyed:
            if not cols:
                raise TypeError("pass the key column first, then the feature columns: f('store', 'features')")
            key, *features = cols
            return self._udf(*self._columns((key,)), *self._columns(self._features(tuple(features))))
        return self._udf(*self._columns(self._features(cols)))

    def _features(self, cols: tuple[str | Column, ...]) -> tuple[str | Column, ...]:
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
        return cols

    @staticmethod
    def _columns(cols: tuple[str | Column, ...]) -> list[Column]:
        return [F.col(quote_column(c)) if isinstance(c, str) else c for c in cols]


def udf(
    estimator: Any,
    method: str = "predict",
    *,
    return_type: DataType | str | None = None,
    chunk_size: int | None = None,
    on_error: str = "raise",
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
    estimator : object or mapping
        A fitted scikit-learn estimator, ``Pipeline`` or any object with the method; or a mapping from
        key values to such estimators, each row scored by the model of its key: the Column function
        then takes the key column first, ``f("store", "features")`` (in SQL ``score(store, a, b)``).
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
    on_error : {"raise", "null"}, default="raise"
        ``"null"``: a row that cannot be scored does not fail the query; the Column is a struct of
        the result fields plus a string field ``error`` (null where the row was scored, else
        ``"<method>: <ExceptionType>: <message>"``), and the row's result fields are null (see
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
    request = ScoringRequest(
        estimator,
        method,
        "udf",
        method_kwargs,
        chunk_size=chunk_size,
        return_type=return_type,
        on_error=on_error,
        pandas_reader=pandas_reader,
    )
    plan = build_plan(request, None)
    return ScoringUDF(scoring_udf(plan), plan.feature_names, plan.n_features, plan.key is not None)
