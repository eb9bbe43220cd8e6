"""distribute() on a DataFrame by mapInArrow (a narrow table) or the Arrow UDF (a wide one), against in-process."""

from __future__ import annotations

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from _helpers import assert_same, collect_df, features_arg, make_input
from pyspark.ml.linalg import VectorUDT
from pyspark.sql import functions as F
from pyspark.sql.types import ArrayType, DoubleType, LongType, StringType, StructField, StructType
from sklearn.linear_model import LogisticRegression
from sklearn.neighbors import NearestNeighbors
from sklearn.preprocessing import StandardScaler

from sklspark import distribute
from sklspark._operators import ARROW_UDF, MAP_IN_ARROW, choose_operator

rng = np.random.default_rng(20)
X = rng.normal(size=(120, 5))
Y = (X[:, 0] + X[:, 1] > 0).astype(np.int64)

CASES = {
    "LogisticRegression.predict": (lambda: LogisticRegression().fit(X, Y), "predict", ["prediction"]),
    "StandardScaler.transform": (lambda: StandardScaler().fit(X), "transform", ["transform"]),
    "NearestNeighbors.kneighbors": (lambda: NearestNeighbors(n_neighbors=3).fit(X), "kneighbors", None),
}

#: A column added beside id and the features, and the operator it leads to.
EXTRA = {"none": MAP_IN_ARROW, "date": MAP_IN_ARROW, "string": ARROW_UDF}


def _with_extra(df, extra: str):
    if extra == "date":
        return df.withColumn("day", F.date_add(F.lit("2026-01-01").cast("date"), F.col("id").cast("int")))
    if extra == "string":
        return df.withColumn("tag", F.concat(F.lit("row-"), F.col("id").cast("string")))
    return df


def _operator_of(df) -> str:
    plan = df._jdf.queryExecution().executedPlan().toString()
    assert ("MapInArrow" in plan) != ("ArrowEvalPython" in plan), plan
    return MAP_IN_ARROW if "MapInArrow" in plan else ARROW_UDF


@pytest.mark.parametrize("extra", sorted(EXTRA))
@pytest.mark.parametrize("kind", ["df-array", "df-vector", "df-columns"])
@pytest.mark.parametrize("case", sorted(CASES))
def test_both_operators_equal_the_in_process_call(spark, case, kind, extra):
    make, method, names = CASES[case]
    est = make()
    df = _with_extra(make_input(spark, X, kind), extra)
    out = distribute(est, method, df, features=features_arg(kind, X.shape[1]))
    assert _operator_of(out) == EXTRA[extra]
    expected = getattr(est, method)(X)
    result_names = names or ["distances", "indices"]
    assert out.columns == [*df.columns, *result_names]
    assert_same(collect_df(out, result_names, expected), expected)
    # every other column comes back unchanged
    assert sorted(out.select(*df.columns).collect()) == sorted(df.collect())


@pytest.mark.parametrize("extra", ["none", "string"])
def test_rows_keep_their_order_and_partitions(spark, extra):
    df = _with_extra(make_input(spark, X, "df-vector", n_partitions=4), extra)
    est = LogisticRegression().fit(X, Y)
    out = distribute(est, "predict", df)
    assert _operator_of(out) == EXTRA[extra]
    ids_in = df.rdd.glom().map(lambda rows: [r.id for r in rows]).collect()
    parts_out = out.rdd.glom().map(lambda rows: [(r.id, r.prediction) for r in rows]).collect()
    assert [[i for i, _ in part] for part in parts_out] == ids_in
    expected = est.predict(X)
    assert all(p == expected[i] for part in parts_out for i, p in part)


@pytest.mark.parametrize("extra", ["none", "string"])
@pytest.mark.parametrize("chunk_size", [None, 7])
def test_null_in_null_out_and_on_error_on_both_operators(spark, extra, chunk_size):
    """A null element gives null results, a NaN row its reason (on_error="null"); every other row is exact."""
    rows = [list(map(float, r)) for r in X[:40]]
    rows[3][2] = None  # null in: null out
    rows[11][0] = float("nan")  # LogisticRegression refuses NaN: its reason, with on_error="null"
    schema = StructType([StructField("id", LongType()), StructField("features", ArrayType(DoubleType()))])
    df = _with_extra(spark.createDataFrame(list(enumerate(rows)), schema).repartition(3), extra)
    est = LogisticRegression().fit(X, Y)
    out = distribute(est, "predict", df, on_error="null", chunk_size=chunk_size)
    assert _operator_of(out) == EXTRA[extra]
    got = {r.id: (r.prediction, r.error) for r in out.collect()}
    expected = est.predict(X[:40])
    for i in range(40):
        if i == 3:
            assert got[i] == (None, None)
        elif i == 11:
            assert got[i][0] is None and got[i][1].startswith("predict: ValueError:") and "NaN" in got[i][1]
        else:
            assert got[i] == (expected[i], None)


def test_a_narrow_stream_is_scored_by_map_in_arrow(spark, tmp_path):
    table = pa.table({"id": np.arange(len(X)), "features": list(X)})
    pq.write_table(table, tmp_path / "part.parquet")
    est = StandardScaler().fit(X)
    schema = spark.read.parquet(str(tmp_path)).schema
    stream = distribute(est, "transform", spark.readStream.schema(schema).parquet(str(tmp_path)))
    query = stream.writeStream.format("memory").queryName("operators_stream").trigger(availableNow=True).start()
    query.awaitTermination()
    got = collect_df(spark.table("operators_stream"), ["transform"], est.transform(X))
    assert_same(got, est.transform(X))


def test_the_choice_follows_the_schema():
    features = StructField("features", VectorUDT())
    narrow = StructType([StructField("id", LongType()), features])
    assert choose_operator(narrow, ["features"], keyed=False).operator == MAP_IN_ARROW
    assert choose_operator(narrow, ["features"], keyed=True).operator == ARROW_UDF
    wide = StructType([*narrow.fields, *(StructField(f"s{i}", StringType()) for i in range(5))])
    choice = choose_operator(wide, ["features"], keyed=False)
    assert choice.operator == ARROW_UDF and "'s0' (string)" in choice.reason and "2 more" in choice.reason
    repeated = StructType([StructField("id", LongType()), StructField("id", LongType()), features])
    assert choose_operator(repeated, ["features"], keyed=False).operator == ARROW_UDF
    nested = StructType([*narrow.fields, StructField("more", ArrayType(DoubleType()))])
    assert choose_operator(nested, ["features"], keyed=False).operator == ARROW_UDF
