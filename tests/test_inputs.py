"""Every input layout, dense and sparse, and the chunking contract, against the in-process call."""

import numpy as np
import pyarrow as pa
import pytest
import scipy.sparse as sp
from _helpers import DENSE_KINDS, SPARSE_KINDS, assert_same, collect_df, collect_rdd, features_arg, make_input
from pyspark.sql import functions as F
from pyspark.sql.types import ArrayType, DoubleType, FloatType, StringType
from sklearn.cluster import KMeans
from sklearn.decomposition import PCA, TruncatedSVD
from sklearn.ensemble import IsolationForest
from sklearn.linear_model import LogisticRegression
from sklearn.naive_bayes import GaussianNB
from sklearn.neighbors import NearestNeighbors
from sklearn.pipeline import make_pipeline
from sklearn.preprocessing import FunctionTransformer, MaxAbsScaler, OneHotEncoder, StandardScaler

from sklspark import distribute
from sklspark._outputs import default_names, output_parts
from sklspark._scoring import _accepts_sparse as accepts_sparse

RNG = np.random.default_rng(42)
X = RNG.normal(size=(97, 5))
Y = (X[:, 0] + X[:, 1] > 0).astype(int)
X_SPARSE = sp.random(97, 12, density=0.2, format="csr", random_state=3)
Y_SPARSE = (np.asarray(X_SPARSE.sum(axis=1)).ravel() > 1).astype(int)

DENSE_CASES = {
    "kneighbors": (NearestNeighbors(n_neighbors=4).fit(X), "kneighbors", {}),
    "kneighbors-indices-only": (NearestNeighbors().fit(X), "kneighbors", {"n_neighbors": 3, "return_distance": False}),
    "radius_neighbors": (NearestNeighbors(radius=1.5).fit(X), "radius_neighbors", {"sort_results": True}),
    "predict_proba": (LogisticRegression().fit(X, Y), "predict_proba", {}),
    "pipeline-lambda": (
        make_pipeline(FunctionTransformer(lambda Z: Z * 2.0 + 1.0), StandardScaler(), LogisticRegression()).fit(X, Y),
        "predict",
        {},
    ),
    "pca": (PCA(3).fit(X), "transform", {}),
    "kmeans": (KMeans(3, n_init=2, random_state=0).fit(X), "predict", {}),
    "isolation-forest": (IsolationForest(random_state=0).fit(X), "score_samples", {}),
    "onehot-sparse-output": (OneHotEncoder().fit(np.round(X)), "transform", {}),
}

SPARSE_CASES = {
    "kneighbors": (NearestNeighbors(n_neighbors=3).fit(X_SPARSE), "kneighbors", {}),
    "predict_proba": (LogisticRegression().fit(X_SPARSE, Y_SPARSE), "predict_proba", {}),
    "truncated-svd": (TruncatedSVD(4, random_state=0).fit(X_SPARSE), "transform", {}),
    "pipeline": (make_pipeline(MaxAbsScaler(), LogisticRegression()).fit(X_SPARSE, Y_SPARSE), "decision_function", {}),
    "dense-only-estimator": (GaussianNB().fit(X_SPARSE.toarray(), Y_SPARSE), "predict_proba", {}),
}


def _run(spark, est, method, kwargs, X_in, kind, **options):
    query = np.round(X_in) if est is DENSE_CASES["onehot-sparse-output"][0] else X_in
    in_process = (
        query if not sp.issparse(query) or accepts_sparse(est, method, kwargs, query.shape[1]) else query.toarray()
    )
    expected = getattr(est, method)(in_process, **kwargs)
    width = query.shape[1]
    data = make_input(spark, query, kind)
    if kind.startswith("rdd"):
        return collect_rdd(distribute(est, method, data, **options, **kwargs), expected), expected
    result = distribute(est, method, data, features=features_arg(kind, width), **options, **kwargs)
    return collect_df(result, default_names(method, len(output_parts(expected))), expected), expected


@pytest.mark.parametrize("kind", DENSE_KINDS)
@pytest.mark.parametrize("case", DENSE_CASES)
def test_dense_inputs(spark, case, kind):
    est, method, kwargs = DENSE_CASES[case]
    got, expected = _run(spark, est, method, kwargs, X, kind, chunk_size=10)
    assert_same(got, expected)


@pytest.mark.parametrize("kind", SPARSE_KINDS)
@pytest.mark.parametrize("case", SPARSE_CASES)
def test_sparse_inputs(spark, case, kind):
    est, method, kwargs = SPARSE_CASES[case]
    got, expected = _run(spark, est, method, kwargs, X_SPARSE, kind, chunk_size=10)
    assert_same(got, expected)


@pytest.mark.parametrize("kind", SPARSE_KINDS)
def test_sparse_rows_reach_sparse_estimators_as_csr(spark, kind):
    def _is_sparse(Z):  # local functions travel by value (cloudpickle); module-level ones by import
        return np.full(Z.shape[0], sp.issparse(Z))

    accepts = FunctionTransformer(_is_sparse, accept_sparse=True).fit(X_SPARSE)
    refuses = make_pipeline(StandardScaler(), FunctionTransformer(_is_sparse)).fit(X_SPARSE.toarray())
    for est, want in ((accepts, True), (refuses, False)):
        data = make_input(spark, X_SPARSE, kind)
        result = distribute(est, "transform", data, chunk_size=8)
        flags = result.collect() if kind.startswith("rdd") else [r["transform"] for r in result.collect()]
        assert flags == [want] * X_SPARSE.shape[0]


def test_mixed_dense_and_sparse_rdd_rows(spark):
    est = NearestNeighbors(n_neighbors=2).fit(X)
    rows = [sp.csr_matrix(r) if i % 3 == 0 else r for i, r in enumerate(X)]
    got = collect_rdd(distribute(est, "kneighbors", spark.sparkContext.parallelize(rows, 4)), est.kneighbors(X))
    assert_same(got, est.kneighbors(X))


def _chunk_size_recorder():
    """A transformer whose output for each row is the number of rows in the chunk it came in."""

    def chunk_rows(Z):
        return np.full(Z.shape[0], Z.shape[0])

    return FunctionTransformer(chunk_rows).fit(X)


def _expected_chunks(partition_sizes, chunk_size):
    out = []
    for size in partition_sizes:
        full, rest = divmod(size, chunk_size)
        out += [chunk_size] * (full * chunk_size) + [rest] * rest
    return out


@pytest.mark.parametrize("chunk_size", [1, 7, 16, 100_000])
def test_rdd_chunks_are_at_most_chunk_size_rows(spark, chunk_size):
    est = _chunk_size_recorder()
    rdd = spark.sparkContext.parallelize(list(X), 3)
    sizes = rdd.glom().map(len).collect()
    assert distribute(est, "transform", rdd, chunk_size=chunk_size).collect() == _expected_chunks(sizes, chunk_size)


@pytest.mark.parametrize("chunk_size", [1, 7, 16, 100_000])
def test_dataframe_chunks_are_stacked_across_arrow_batches(spark, chunk_size):
    """Arrow batches of 5 rows are re-cut into chunks of exactly chunk_size rows per partition."""
    est = _chunk_size_recorder()
    df = make_input(spark, X, "df-vector")
    sizes = df.rdd.glom().map(len).collect()
    spark.conf.set("spark.sql.execution.arrow.maxRecordsPerBatch", "5")
    try:
        rows = distribute(est, "transform", df, chunk_size=chunk_size).collect()
    finally:
        spark.conf.unset("spark.sql.execution.arrow.maxRecordsPerBatch")
    assert [r["transform"] for r in rows] == _expected_chunks(sizes, chunk_size)


def test_empty_partitions_and_one_row(spark):
    est = NearestNeighbors(n_neighbors=2).fit(X)
    for n_rows in (1, 5):
        rdd = spark.sparkContext.parallelize(list(X[:n_rows]), 8)  # most partitions empty
        got = collect_rdd(distribute(est, "kneighbors", rdd), est.kneighbors(X[:n_rows]))
        assert_same(got, est.kneighbors(X[:n_rows]))
        df = make_input(spark, X[:n_rows], "df-vector", n_partitions=8)
        assert_same(
            collect_df(distribute(est, "kneighbors", df), ["distances", "indices"], est.kneighbors(X[:n_rows])),
            est.kneighbors(X[:n_rows]),
        )


def test_empty_inputs_give_empty_typed_results(spark):
    est = LogisticRegression().fit(X, Y)
    empty_df = make_input(spark, X, "df-array").limit(0)
    result = distribute(est, "predict_proba", empty_df)
    assert result.count() == 0
    assert result.schema["probability"].dataType == ArrayType(DoubleType(), True)
    assert distribute(est, "predict", spark.sparkContext.emptyRDD()).collect() == []


def test_float32_stays_float32(spark):
    X32 = X.astype(np.float32)
    pca = PCA(2).fit(X32)
    table = pa.table({"id": np.arange(len(X32)), "features": list(X32)})
    df = spark.createDataFrame(table)
    assert df.schema["features"].dataType == ArrayType(FloatType(), True)
    result = distribute(pca, "transform", df)
    assert result.schema["transform"].dataType == ArrayType(FloatType(), True)
    expected = pca.transform(X32)
    assert expected.dtype == np.float32
    assert_same(collect_df(result, ["transform"], expected), expected)


def test_string_classes_and_output_cols(spark):
    labels = np.where(Y == 1, "yes", "no")
    est = LogisticRegression().fit(X, labels)
    df = make_input(spark, X, "df-vector")
    result = distribute(est, "predict", df, output_cols="label")
    assert result.schema["label"].dataType == StringType()
    assert_same(collect_df(result, ["label"], est.predict(X)), est.predict(X))
    nn = NearestNeighbors(n_neighbors=2).fit(X)
    result = distribute(nn, "kneighbors", df, output_cols=["d", "i"])
    assert result.columns == ["id", "features", "d", "i"]


def test_input_columns_pass_through_unchanged(spark):
    df = make_input(spark, X, "df-columns").withColumn("tag", F.lit("t"))
    est = KMeans(2, n_init=1, random_state=0).fit(X)
    result = distribute(est, "predict", df, features=features_arg("df-columns", 5))
    assert result.columns == [*df.columns, "prediction"]
    assert sorted(result.drop("prediction").collect()) == sorted(df.collect())


def test_partitions_spreads_one_partition_and_keeps_rdd_order(spark):
    X = np.random.default_rng(5).normal(size=(90, 4))
    nn = NearestNeighbors(n_neighbors=3).fit(X)
    expected = nn.kneighbors(X)
    rdd = make_input(spark, X, "rdd-ndarray", n_partitions=1)
    with pytest.warns(UserWarning, match=r"kneighbors will run on 1 partition\(s\).*pass partitions="):
        distribute(nn, "kneighbors", rdd)
    spread = distribute(nn, "kneighbors", rdd, partitions=4)
    assert spread.getNumPartitions() == 4
    assert_same(collect_rdd(spread, expected), expected)
    df = make_input(spark, X, "df-array").coalesce(1)
    out = distribute(nn, "kneighbors", df, partitions=3)
    assert out.rdd.getNumPartitions() == 3
    assert_same(collect_df(out, ["distances", "indices"], expected), expected)
    with pytest.raises(ValueError, match=r"The 'partitions' parameter of distribute must be an int .* Got 0 instead"):
        distribute(nn, "kneighbors", df, partitions=0)


@pytest.mark.parametrize("layout", ["array", "vector"])
def test_null_feature_rows_of_slices_match_a_row_by_row_check(layout):
    """The no-copy fast path (no null in the whole element array) and the slow one agree with each row's check."""
    from sklspark._features import FeatureSpec
    from sklspark._inputs import null_feature_rows

    rows = [[1.0, 2.0], [None, 1.0], None, [3.0, 4.0], [5.0, None], [6.0, 7.0], [8.0, 9.0]]
    for values in (rows, [r if r is None or None not in r else [0.0, 0.0] for r in rows]):
        lists = pa.array(values, type=pa.list_(pa.float64()))
        if layout == "vector":  # a VectorUDT struct: type, size, indices, values
            n = len(values)
            column = pa.StructArray.from_arrays(
                [
                    pa.array([1] * n, pa.int8()),
                    pa.array([None] * n, pa.int32()),
                    pa.array([None] * n, pa.list_(pa.int32())),
                    lists,
                ],
                names=["type", "size", "indices", "values"],
                mask=pa.array([v is None for v in values]),
            )
        else:
            column = lists
        spec = FeatureSpec(layout=layout, columns=("f",), dtype=np.dtype(np.float64))
        for start, stop in ((0, 7), (0, 1), (2, 4), (5, 7), (3, 4)):
            batch = pa.RecordBatch.from_arrays([column.slice(start, stop - start)], names=["f"])
            expected = np.array([v is None or None in v for v in values[start:stop]])
            got = null_feature_rows(batch, spec)
            assert np.array_equal(got if got is not None else np.zeros(stop - start, bool), expected)
