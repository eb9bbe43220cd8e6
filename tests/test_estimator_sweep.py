"""distribute() equals the in-process call for every estimator/method pair scikit-learn ships.

Every pair runs through the task functions that Spark runs (``score_rows`` for an RDD partition,
``score_batches`` for a DataFrame's Arrow batches: input adapter, shipped model, chunk runner, output
schema), called in this process on the same chunks a task would see. A representative sample, one pair
per kind of output (method, dtype, shape, sparse, tuple or list), also runs end to end through Spark.
"""

import warnings
from dataclasses import replace

import numpy as np
import pyarrow as pa
import pytest
import scipy.sparse as sp
from _estimators import (
    EXCLUDED,
    METHODS,
    NOT_ROW_WISE,
    TEXT_CASES,
    fitted,
    fitted_text,
    make_data,
    make_text,
    sweep_cases,
)
from _helpers import assert_same, collect_df, collect_rdd, column_values, make_input, stack_results
from pyspark.sql.types import ArrayType, DoubleType, LongType, StringType, StructField, StructType

from sklspark import distribute
from sklspark._features import check_features, resolve_features
from sklspark._outputs import default_names, output_columns, output_parts
from sklspark._probe import probe
from sklspark._scoring import ScoringPlan, score_batches, score_rows
from sklspark._shipping import ShippedModel

CASES = sweep_cases()
CHUNK_SIZE = 16
_ARRAY_SCHEMA = StructType([StructField("id", LongType()), StructField("features", ArrayType(DoubleType()))])


def _query(name):
    X = make_data()[0]  # the training rows: encoders refuse unseen categories
    return X[:, :1] if name == "IsotonicRegression" else X


def _expected(name, method):
    est = fitted(name)
    if isinstance(est, str):
        pytest.fail(f"{name}: {est}")
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        return est, getattr(est, method)(_query(name))


def _kind_of_output(output):
    """What decides how an output travels: container, sparse or dtype kind, item size and dimensions."""
    if isinstance(output, (tuple, list)):
        return (type(output).__name__, tuple(_kind_of_output(part) for part in output))
    if sp.issparse(output):
        return ("sparse",)
    return (output.dtype.kind, output.dtype.itemsize, output.ndim)


def _representative_cases():
    """The first pair of every (method, kind of output): what the Spark round trip can treat differently."""
    seen = {}
    for name, method in CASES:
        if method is not None:
            seen.setdefault((method, _kind_of_output(_expected(name, method)[1])), (name, method))
    return sorted(seen.values())


SPARK_CASES = _representative_cases()


@pytest.mark.parametrize("kind", ["rdd", "arrow"])
@pytest.mark.parametrize(("name", "method"), CASES, ids=[f"{n}.{m}" for n, m in CASES])
def test_task_functions_match_in_process(spark, name, method, kind):
    est, expected = _expected(name, method)
    X = _query(name)
    plan = ScoringPlan(ShippedModel(est, spark), method, f"{name}.{method}", chunk_size=CHUNK_SIZE)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        if kind == "rdd":
            rows = list(score_rows(plan, iter(list(X))))
            got = stack_results(rows, expected)
        else:
            width = X.shape[1]
            offsets = pa.array(np.arange(len(X) + 1) * width, type=pa.int32())
            table = pa.table({"id": np.arange(len(X)), "features": pa.ListArray.from_arrays(offsets, X.ravel())})
            spec = check_features(_ARRAY_SCHEMA, "features")
            sample = probe(est, method, {}, width, spec.dtype, lambda: X[:2])
            columns = tuple(output_columns(method, sample, None, table.column_names, est))
            # batches of 50 rows re-cut into chunks of 16, as a task re-cuts Arrow batches
            batches = table.to_batches(max_chunksize=50)
            result = pa.Table.from_batches(list(score_batches(replace(plan, spec=spec, columns=columns), batches)))
            parts = output_parts(expected)
            values = [column_values(result.column(c.name).combine_chunks(), p) for c, p in zip(columns, parts)]
            got = type(expected)(values) if isinstance(expected, (tuple, list)) else values[0]
    assert_same(got, expected)


@pytest.mark.parametrize("kind", ["rdd-ndarray", "df-array"])
@pytest.mark.parametrize(("name", "method"), SPARK_CASES, ids=[f"{n}.{m}" for n, m in SPARK_CASES])
def test_spark_round_trip_matches_in_process(spark, name, method, kind):
    est, expected = _expected(name, method)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        result = distribute(est, method, make_input(spark, _query(name), kind), chunk_size=CHUNK_SIZE)
        if kind.startswith("rdd"):
            got = collect_rdd(result, expected)
        else:
            got = collect_df(result, default_names(method, len(output_parts(expected))), expected)
    assert_same(got, expected)


_TEXT_SCHEMA = StructType([StructField("id", LongType()), StructField("text", StringType())])


@pytest.mark.parametrize("name", TEXT_CASES)
def test_text_vectorizers_task_function(spark, name):
    est, docs = fitted_text(name), make_text()
    expected = est.transform(docs)
    table = pa.table({"id": np.arange(len(docs)), "text": docs})
    spec = resolve_features(_TEXT_SCHEMA, est, "text")
    assert spec.layout == "text"
    columns = output_columns(
        "transform",
        probe(est, "transform", {}, None, spec.dtype, lambda: np.array(docs[:2])),
        None,
        table.column_names,
        est,
    )
    plan = ScoringPlan(
        ShippedModel(est, spark),
        "transform",
        f"{name}.transform",
        spec=spec,
        chunk_size=CHUNK_SIZE,
        columns=tuple(columns),
    )
    result = pa.Table.from_batches(list(score_batches(plan, table.to_batches(max_chunksize=50))))
    assert_same(column_values(result.column("transform").combine_chunks(), expected), expected)


def test_text_vectorizer_spark_round_trip(spark):
    est, docs = fitted_text("TfidfVectorizer"), make_text()
    df = spark.createDataFrame(pa.table({"id": np.arange(len(docs)), "text": docs})).repartition(3)
    got = collect_df(
        distribute(est, "transform", df, features="text", chunk_size=CHUNK_SIZE), ["transform"], est.transform(docs)
    )
    assert_same(got, est.transform(docs))


def test_sweep_covers_every_estimator():
    """Every estimator is swept, excluded with a reason, or has no prediction-time method."""
    from sklearn.utils import all_estimators

    swept = {n for n, _ in CASES} | {n for n, _ in NOT_ROW_WISE} | set(TEXT_CASES)
    for name, _ in all_estimators():
        if name in swept or name in EXCLUDED:
            continue
        est = fitted(name)
        assert not any(callable(getattr(est, m, None)) for m in METHODS), name
    assert len(CASES) > 300
    assert len(SPARK_CASES) >= 20  # every kind of output makes the Spark round trip
