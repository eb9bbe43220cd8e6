"""``distribute()``: a fitted estimator's method over every row of an RDD or DataFrame, by a scoring plan."""

from __future__ import annotations

import functools
from collections.abc import Sequence
from typing import Any

from pyspark import RDD
from pyspark.sql import DataFrame
from pyspark.sql import functions as F
from pyspark.sql.types import StructType

from ._features import quote_column
from ._operators import MAP_IN_ARROW
from ._scoring import ScoringRequest, build_plan, map_batches, score_rows, scoring_udf


def distribute(
    estimator: Any,
    method: str,
    data: RDD | DataFrame,
    *,
    chunk_size: int | None = None,
    features: str | Sequence[str] | None = None,
    output_cols: str | Sequence[str] | None = None,
    partitions: int | str | None = None,
    on_error: str = "raise",
    key: str | None = None,
    pandas_reader: str | None = None,
    **method_kwargs: Any,
) -> RDD | DataFrame:
    """Apply a fitted estimator's prediction-time method to every row of an RDD or DataFrame.

    The estimator is serialised once on the driver (cloudpickle), shipped once, and loaded once per
    Python worker process. Each partition is stacked into matrices (CSR when the rows are sparse and
    the estimator accepts sparse input) and the method runs once per matrix ("chunk"), with
    BLAS/OpenMP threads capped at ``spark.task.cpus``. The result is lazy, like any
    Spark transformation: nothing runs until an action (``collect``, ``count``, ``write``...).

    Parameters
    ----------
    estimator : object or mapping
        A fitted scikit-learn estimator, ``Pipeline`` or any object with the method; or a mapping from
        key values to such estimators ("a model per store"), each row scored by the model of its key
        (``key=`` for a DataFrame; an RDD's elements are then ``(key, features)`` pairs). The models
        must give the same result columns from the same features.
    method : str
        The method to run, e.g. ``"predict"``, ``"predict_proba"``, ``"transform"``,
        ``"decision_function"``, ``"score_samples"``, ``"kneighbors"``, ``"radius_neighbors"``.
        Methods that fit or need targets (``fit*``, ``partial_fit``, ``score``) are refused.
    data : pyspark.RDD or pyspark.sql.DataFrame
        An RDD whose elements are feature vectors (1-D numpy arrays, lists/tuples of numbers,
        ``pyspark.ml.linalg`` vectors or 1-row scipy sparse matrices), or, for an estimator with
        ``feature_names_in_``, ``dict`` or ``Row`` records holding those fields; or a DataFrame.
    chunk_size : int, default=None
        Rows passed to one call of the method; bounds the memory a task needs. ``None``: for a
        DataFrame, one call per Arrow batch Spark hands to Python
        (``spark.sql.execution.arrow.maxRecordsPerBatch``, 10,000 rows by default; batches over
        65,536 rows are cut), with no copy; for an RDD, 4,096 rows; for a mapping of models over a
        DataFrame, as many rows as make 64 MiB of features (each model is called once per key in a
        chunk, so fewer, larger calls). An int: chunks of exactly that many rows (the last of a
        partition may be shorter), re-cut across Arrow batches.
    features : str or list of str, default=None
        DataFrame only: a ``VectorUDT`` column, an ``array<numeric>`` column, a list of
        numeric columns, or one string column of documents (passed as a 1-D array of ``str``).
        ``None`` means the column ``"features"``, or, for an estimator fitted on a pandas
        DataFrame (it has ``feature_names_in_``), exactly the columns it was fitted on, by name,
        handed over as a pandas DataFrame (see :func:`sklspark._validation.frame_spec` for the
        types); a list given for such an estimator must name the same columns.
    output_cols : str or list of str, default=None
        DataFrame only: names of the result columns, one per part of the method's output.
        Defaults: ``prediction`` (predict), ``probability`` (predict_proba), ``log_probability``
        (predict_log_proba), ``distances`` and ``indices`` (kneighbors, radius_neighbors), and the
        method's own name otherwise.
    partitions : int or "auto", default=None
        Repartition the input into this many balanced partitions first, so that every core works on
        an input with few partitions (one Parquet file is one partition). ``"auto"``: at least two
        per core for ``kneighbors`` and ``radius_neighbors``, the input's own partitions for other
        methods. An RDD keeps its order (it is counted and numbered first: two small jobs); a
        DataFrame is repartitioned round-robin. Without it, ``kneighbors`` and ``radius_neighbors``
        on fewer partitions than cores warn (see :mod:`sklspark._partitions`).
    on_error : {"raise", "null"}, default="raise"
        What a row that cannot be scored does (a NaN the model refuses, a ragged or null row, an
        output that does not fit its column). ``"raise"``: the job fails with a ``ChunkError``
        naming the method, partition, rows and cause. ``"null"``: the job goes on; a DataFrame gets
        a string column ``error`` (null where the row was scored, else
        ``"<method>: <ExceptionType>: <message>"``) and null results for that row; an RDD's
        elements become pairs ``(result, None)`` or ``(None, reason)``. A failing chunk is cut in
        halves until the failing rows stand alone, so every other row's result is exact.
    key : str, default=None
        DataFrame with a mapping of models: the column whose value picks each row's model. Inside each
        chunk the rows are grouped by key and each model called once per group; no shuffle. A key
        without a model, or a null key, fails naming the key and rows (or is a null result with its
        reason under ``on_error="null"``). Each model is serialised once; a worker loads only the
        models of the keys it meets (see :class:`sklspark._shipping.ShippedFleet` for the memory bound).
    pandas_reader : {"toPandas", "read_parquet", "read_csv"}, default=None
        For an estimator fitted on a pandas DataFrame: the reader of the frame it was fitted on, which
        each chunk imitates (null marker ``None`` or ``np.nan``; dates, decimals and timestamps as
        objects, strings or numbers) where the fitted estimator does not record it. What it records
        wins: an encoder's ``categories_`` holding ``None`` or ``nan``, ``datetime.date``, ``str`` or
        ``Decimal`` values, a ``SimpleImputer``'s ``missing_values=None``. ``None``: inferred from that
        evidence, else as ``toPandas()``. See docs/pipelines.md for the type table and the rules.
    **method_kwargs
        Passed to the method, e.g. ``n_neighbors=5`` or ``return_distance=False``.

    Returns
    -------
    pyspark.RDD or pyspark.sql.DataFrame
        For an RDD: one element per input element, in the same order, holding the method's
        output for that row (a scalar for ``predict``, a 1-D array for ``predict_proba`` or
        ``transform``, a ``(distances, indices)`` tuple for ``kneighbors``...).
        For a DataFrame: every input column plus the typed result columns (see
        :mod:`sklspark._outputs` for the types), in the input's row order and partitioning. On a
        narrow table (every other column a number, boolean, date or timestamp) all columns go
        through Python once, by ``mapInArrow``, the cheapest path there (a filter written after
        ``distribute()`` is then not pushed below the scoring: filter first); otherwise only the
        feature columns cross into Python and every other column stays in the JVM (an Arrow UDF;
        see :mod:`sklspark._operators`). A row with a
        missing feature value in a vector, array or numeric column gets null results, as Spark's
        own functions give null for null input (named columns hand nulls to the pipeline as
        missing values). A streaming DataFrame gives a streaming DataFrame, with no Spark job
        started on the driver.

    Raises
    ------
    TypeError, ValueError
        Before any task runs, if the estimator is not fitted or lacks the method, ``chunk_size``
        or ``features`` are invalid, the feature width differs from ``n_features_in_``, or the
        method rejects ``method_kwargs``. A row that cannot be scored fails its task with a
        ``ChunkError`` naming the method, partition, rows and cause (``on_error="raise"``).

    Examples
    --------
    >>> from sklearn.neighbors import NearestNeighbors
    >>> nn = NearestNeighbors(n_neighbors=2).fit([[0.0, 0.0], [1.0, 0.0], [0.0, 2.0]])
    >>> df = spark.createDataFrame([(7, [0.1, 0.0]), (8, [0.0, 1.9])], "id long, features array<double>")
    >>> out = distribute(nn, "kneighbors", df)
    >>> [(row.id, row.indices) for row in out.orderBy("id").collect()]
    [(7, [0, 1]), (8, [2, 0])]
    >>> distribute(nn, "kneighbors", spark.sparkContext.parallelize([[0.9, 0.1]]), return_distance=False).collect()
    [array([1, 0])]
    """
    request = ScoringRequest(
        estimator,
        method,
        "distribute",
        method_kwargs,
        chunk_size=chunk_size,
        features=features,
        output_cols=output_cols,
        partitions=partitions,
        on_error=on_error,
        key=key,
        pandas_reader=pandas_reader,
    )
    plan = build_plan(request, data)
    assert plan.partitioning is not None
    data = plan.partitioning.apply(data, stacklevel=2)
    if isinstance(data, RDD):
        return data.mapPartitions(functools.partial(score_rows, plan), preservesPartitioning=True)
    assert plan.spec is not None and plan.operator is not None
    if plan.operator.operator == MAP_IN_ARROW:  # a narrow table: every column through Python, nothing queued
        schema = StructType([*data.schema.fields, *(c.field for c in plan.columns)])
        return data.mapInArrow(functools.partial(map_batches, plan), schema)
    arguments = [plan.key] if plan.key is not None else []
    result = scoring_udf(plan)(*(F.col(quote_column(c)) for c in [*arguments, *plan.spec.columns]))
    columns = plan.columns
    if len(columns) == 1:
        return data.select("*", result.alias(columns[0].name))
    packed = f"__sklspark_{plan.model.token}"
    return (
        data.select("*", result.alias(packed))
        .withColumns({c.name: F.col(packed).getField(c.name) for c in columns})
        .drop(packed)
    )
