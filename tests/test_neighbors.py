"""sklspark.neighbors: exact kNN joins agree with in-process brute force and with each other, in every mode."""

from __future__ import annotations

import re
import time

import numpy as np
import pyarrow as pa
import pytest
from _helpers import no_spark_job
from numpy.testing import assert_allclose
from pyspark.errors import PythonException
from pyspark.ml.linalg import Vectors, VectorUDT
from pyspark.sql.types import LongType, StructField, StructType
from sklearn.metrics import pairwise_distances
from sklearn.neighbors import NearestNeighbors

import sklspark.neighbors._join as join_module
from sklspark.neighbors import AnnoyBackend, all_neighbors, kneighbors_join, to_edges
from sklspark.neighbors._sharded import stable_order

RNG = np.random.default_rng(0)
#: Integer coordinates: many exact duplicates (distance 0) and ties.
GRID = RNG.integers(0, 4, size=(240, 3)).astype(np.float64)


def array_df(spark, X, ids, n_partitions=3):
    """``id`` + ``features`` (array<double or float>) DataFrame, in a deterministic partitioning."""
    n, width = X.shape
    values = pa.array(X.ravel())
    features = pa.ListArray.from_arrays(pa.array(np.arange(n + 1) * width, type=pa.int32()), values)
    table = pa.table({"id": pa.array(ids), "features": features})
    return spark.createDataFrame(table).repartition(n_partitions)


def truth(Q, R, k, metric="euclidean", query_ids=None, ref_ids=None):
    """Brute force in-process: the whole distance matrix, ties to the smaller reference position."""
    D = pairwise_distances(Q, R, metric=metric)
    if query_ids is not None:  # exclude_self
        D[np.asarray(query_ids)[:, None] == np.asarray(ref_ids)[None, :]] = np.inf
    positions = np.broadcast_to(np.arange(R.shape[0]), D.shape)
    order = np.lexsort((positions, D), axis=-1)[:, :k]
    return order, np.take_along_axis(D, order, axis=1)


def collect(result, id_col="id"):
    """(query ids, neighbour ids, distances) in query id order."""
    table = result.toArrow()
    table = table.take(np.argsort(table.column(id_col).to_numpy(zero_copy_only=False), kind="stable"))
    rows = lambda name: table.column(name).to_pylist()  # noqa: E731
    return np.array(rows(id_col)), np.array(rows("neighbor_ids")), np.array(rows("distances"))


def reference_order(df):
    """The reference's rows in the order the join reads them (its positions): partition, then id."""
    table = stable_order(df, "id", ["features"]).toArrow()
    return table.column("id").to_numpy(zero_copy_only=False), np.array(table.column("features").to_pylist())


def assert_matches_truth(got, Q, R, ref_ids, k, metric="euclidean", exclude_self=False, query_ids=None):
    _, neighbor_ids, distances = got
    excl = (query_ids, ref_ids) if exclude_self else (None, None)
    positions, expected = truth(Q, R, k, metric, *excl)
    np.testing.assert_array_equal(neighbor_ids, np.asarray(ref_ids)[positions])
    assert_allclose(distances, expected, rtol=1e-9, atol=1e-12)


def assert_identical(a, b):
    for x, y in zip(a, b):
        assert np.array_equal(x, y)


#: The message of a bad ``k``, as scikit-learn words it: format with the function's name and the value.
K_MESSAGE = "The 'k' parameter of {} must be an int in the range [1, inf). Got {!r} instead."


@pytest.fixture
def modes(monkeypatch):
    """The execution modes the joins of a test ran in, in call order."""
    seen = []
    for name in ("broadcast_join", "sharded_join"):
        original = getattr(join_module, name)

        def spy(*args, _original=original, _name=name, **kwargs):
            seen.append(_name.split("_")[0])
            return _original(*args, **kwargs)

        monkeypatch.setattr(join_module, name, spy)
    return seen


@pytest.fixture(scope="module")
def grid(spark):
    df = array_df(spark, GRID, np.arange(len(GRID)) * 7 + 3).cache()
    ids, X = reference_order(df)
    return df, ids, X


def test_all_modes_and_faiss_identical_and_exact(grid, monkeypatch, modes):
    df, ids, X = grid
    broadcast = collect(all_neighbors(df, 6))
    sharded = collect(all_neighbors(df, 6, shards=3))
    faiss = collect(all_neighbors(df, 6, backend="faiss"))
    monkeypatch.setattr(join_module, "BROADCAST_MAX_BYTES", 0)
    auto_sharded = collect(all_neighbors(df, 6))
    assert modes == ["broadcast", "sharded", "broadcast", "sharded"]
    for other in (sharded, faiss, auto_sharded):
        assert_identical(broadcast, other)
    query_ids = broadcast[0]
    order = np.argsort(ids)
    assert_matches_truth(broadcast, X[order], X, ids, 6, exclude_self=True, query_ids=query_ids)
    # exclude_self drops the query's own ID only: exact duplicates at distance 0 stay
    assert not (broadcast[1] == query_ids[:, None]).any()
    assert (broadcast[2][:, 0] == 0).sum() > 100


def test_string_ids_and_join_without_exclude(spark, modes):
    R, Q = GRID[:150], GRID[150:200] + 0.5
    ref = array_df(spark, R, [f"r{i:03d}" for i in range(len(R))], n_partitions=2)
    queries = array_df(spark, Q, [f"q{i:03d}" for i in range(len(Q))], n_partitions=2)
    ref_ids, R_order = reference_order(ref)
    broadcast = collect(kneighbors_join(queries, ref, 4))
    sharded = collect(kneighbors_join(queries, ref, 4, shards=2, chunk_size=7))
    assert_identical(broadcast, sharded)
    assert modes == ["broadcast", "sharded"]
    assert broadcast[1].dtype.kind in "UO"
    assert_matches_truth(broadcast, Q, R_order, ref_ids, 4)


@pytest.mark.parametrize("k", [1, 29])
def test_k_extremes(spark, k):
    X = GRID[:30]
    df = array_df(spark, X, np.arange(30), n_partitions=2)
    ids, R = reference_order(df)
    got = collect(all_neighbors(df, k, shards=2))
    assert_identical(got, collect(all_neighbors(df, k)))
    assert_matches_truth(got, R[np.argsort(ids)], R, ids, k, exclude_self=True, query_ids=got[0])
    if k == 1:  # and k = reference size without exclude_self
        full = collect(kneighbors_join(df, df, 30))
        assert_matches_truth(full, R[np.argsort(ids)], R, ids, 30)


def test_sharded_groups_meet_across_many_shuffle_partitions(spark):
    """Without adaptive coalescing, the (block, shard) groups spread over 200 shuffle partitions.

    Query and reference sides must hash their group keys alike (both long): an int key on one side
    and a long on the other sent a group's halves to different partitions (found at 20,000 rows).
    """
    X = RNG.normal(size=(400, 4))
    df = array_df(spark, X, np.arange(400), n_partitions=4)
    ids, R = reference_order(df)
    spark.conf.set("spark.sql.adaptive.coalescePartitions.enabled", "false")
    try:
        got = collect(all_neighbors(df, 3, shards=3))
    finally:
        spark.conf.unset("spark.sql.adaptive.coalescePartitions.enabled")
    assert len(got[0]) == 400
    assert_matches_truth(got, R[np.argsort(ids)], R, ids, 3, exclude_self=True, query_ids=got[0])


@pytest.mark.parametrize("metric", ["cosine", "manhattan"])
def test_other_metrics(spark, metric):
    X = RNG.normal(size=(200, 5))
    X[10] = X[20]  # a duplicate pair
    df = array_df(spark, X, np.arange(200), n_partitions=2)
    ids, R = reference_order(df)
    broadcast = collect(all_neighbors(df, 5, metric=metric))
    assert_identical(broadcast, collect(all_neighbors(df, 5, metric=metric, shards=3)))
    assert_matches_truth(broadcast, R[np.argsort(ids)], R, ids, 5, metric, exclude_self=True, query_ids=broadcast[0])


def test_vector_and_column_layouts_long_ids(spark):
    X = GRID[:80]
    schema = StructType([StructField("id", LongType()), StructField("features", VectorUDT())])
    vectors = spark.createDataFrame([(i, Vectors.dense(x)) for i, x in enumerate(X)], schema).repartition(2)
    columns = spark.createDataFrame(pa.table({"id": np.arange(80), "a": X[:, 0], "b": X[:, 1], "c": X[:, 2]}))
    ids, _ = reference_order(vectors)
    from_vectors = collect(all_neighbors(vectors, 3, shards=2))
    assert_matches_truth(from_vectors, X, X[ids], ids, 3, exclude_self=True, query_ids=from_vectors[0])
    from_columns = collect(kneighbors_join(columns, columns, 3, features_col=["a", "b", "c"]))
    assert_matches_truth(from_columns, X, X, np.arange(80), 3)


def test_annoy_recall_on_clusters(spark):
    centers = RNG.normal(scale=10, size=(20, 16))
    X = (centers[RNG.integers(0, 20, size=3000)] + RNG.normal(size=(3000, 16))).astype(np.float32)
    df = array_df(spark, X, np.arange(3000), n_partitions=2)
    ids, R = reference_order(df)
    exact = collect(all_neighbors(df, 10, backend="faiss"))
    recalls = {}
    for backend in ("annoy", AnnoyBackend(n_trees=5)):  # by name (50 trees), and a configured instance
        got = collect(all_neighbors(df, 10, backend=backend))
        label = backend if isinstance(backend, str) else f"n_trees={backend.n_trees}"
        recalls[label] = recall = np.mean([len(set(a) & set(b)) / 10 for a, b in zip(got[1], exact[1])])
        assert recall >= 0.9
    print(f"annoy recall@10: {recalls}")
    # the distances of what annoy found are exact nonetheless
    by_id = dict(zip(ids.tolist(), R.astype(np.float64)))
    q = np.stack([by_id[i] for i in got[0]])
    found = np.stack([[by_id[j] for j in row] for row in got[1][:50]])
    assert_allclose(got[2][:50], np.sqrt(((q[:50, None] - found) ** 2).sum(-1)), rtol=1e-12)


def test_fitted_nearest_neighbors_reference(spark):
    R, Q = GRID[:100], GRID[100:140]
    queries = array_df(spark, Q, np.arange(100, 140), n_partitions=2)
    nn = NearestNeighbors(algorithm="kd_tree").fit(R)
    names = [f"item-{i}" for i in range(100)]
    got = collect(kneighbors_join(queries, nn, 5, reference_ids=names))
    assert_matches_truth(got, Q, R, names, 5)
    positions = collect(kneighbors_join(queries, nn, 5, backend="faiss"))
    assert_matches_truth(positions, Q, R, np.arange(100), 5)


def test_to_edges(grid):
    df, ids, _ = grid
    result = all_neighbors(df, 3)
    _, neighbor_ids, distances = collect(result)
    edges = to_edges(result).toArrow()
    assert edges.column_names == ["src", "dst", "distance", "rank"]
    assert edges.num_rows == 3 * len(ids)
    table = edges.sort_by([("src", "ascending"), ("rank", "ascending")])
    assert table.column("rank").to_pylist()[:3] == [1, 2, 3]
    np.testing.assert_array_equal(table.column("dst").to_numpy().reshape(-1, 3), neighbor_ids)
    np.testing.assert_array_equal(table.column("distance").to_numpy().reshape(-1, 3), distances)


def test_errors_before_any_job(spark, grid):
    df, _, _ = grid
    nn = NearestNeighbors().fit(GRID[:10])
    sc = spark.sparkContext
    with no_spark_job(sc):
        with pytest.raises(ValueError, match=re.escape(K_MESSAGE.format("all_neighbors", 0))):
            all_neighbors(df, 0)
        with pytest.raises(ValueError, match=re.escape(K_MESSAGE.format("kneighbors_join", -2))):
            kneighbors_join(df, df, -2)
        with pytest.raises(TypeError, match=re.escape(K_MESSAGE.format("kneighbors_join", 2.0))):
            kneighbors_join(df, df, 2.0)
        with pytest.raises(TypeError, match=r"The 'k' parameter of all_neighbors .* Got True instead"):
            all_neighbors(df, True)
        with pytest.raises(ValueError, match=r"'shards' parameter of kneighbors_join .* or None. Got 0 instead"):
            all_neighbors(df, 3, shards=0)
        with pytest.raises(TypeError, match="The 'exclude_self' parameter of all_neighbors must be a bool"):
            all_neighbors(df, 3, exclude_self="yes")
        with pytest.raises(ValueError, match="larger than the reference set"):
            kneighbors_join(df, nn, 11)
        with pytest.raises(ValueError, match="larger than the reference set"):
            kneighbors_join(df, nn, 10, exclude_self=True)
        with pytest.raises(
            ValueError,
            match=re.escape(
                "The 'backend' parameter of kneighbors_join must be a str among {'annoy', 'faiss', 'sklearn'} "
                "or an instance of 'Backend'. Got 'hnsw' instead."
            ),
        ):
            all_neighbors(df, 3, backend="hnsw")
        with pytest.raises(
            ValueError,
            match=re.escape("The 'metric' parameter of backend 'faiss' must be a str among {'euclidean'}. Got 'manh"),
        ):
            all_neighbors(df, 3, backend="faiss", metric="manhattan")
        with pytest.raises(ValueError, match="cannot use metric 'nonsense'"):
            all_neighbors(df, 3, metric="nonsense")
        with pytest.raises(ValueError, match="duplicate IDs"):
            kneighbors_join(df, nn, 3, reference_ids=[1, 2, 3, 4, 5, 6, 7, 8, 9, 1])
        with pytest.raises(ValueError, match="id column 'key' not found in the queries"):
            all_neighbors(df, 3, id_col="key")
        with pytest.raises(ValueError, match="metric 'euclidean' but metric='cosine'"):
            kneighbors_join(df, nn, 3, metric="cosine")
        with pytest.raises(ValueError, match="feature column"):
            all_neighbors(df, 3, features_col="vec")


@pytest.mark.parametrize("shards", [None, 2])
def test_duplicate_and_too_few_reference_rows(spark, shards):
    dupes = array_df(spark, GRID[:20], [1, 2] * 10, n_partitions=2)
    with pytest.raises(ValueError, match=r"duplicate IDs \(e.g. \[1, 2\]"):
        all_neighbors(dupes, 3, shards=shards)
    small = array_df(spark, GRID[:20], np.arange(20), n_partitions=2)
    with pytest.raises(ValueError, match="k=20 is larger than the reference set"):
        all_neighbors(small, 20, shards=shards)


@pytest.mark.parametrize("side", ["queries", "reference"])
def test_sharded_bad_row_raises_chunk_error(spark, side):
    """A NaN row in sharded mode fails the job like the core does: a ChunkError naming side, rows and ID."""
    R, Q = GRID[:40].copy(), GRID[40:60].copy()
    (Q if side == "queries" else R)[7, 1] = np.nan
    ref = array_df(spark, R, np.arange(40), n_partitions=1)
    queries = array_df(spark, Q, np.arange(100, 120), n_partitions=1)
    with pytest.raises(PythonException) as info:
        kneighbors_join(queries, ref, 3, shards=2).collect()
    message = str(info.value)
    assert "sklspark._runner.ChunkError: sklspark: bad input for SklearnBackend." in message
    bad_id = 107 if side == "queries" else 7
    what = "search of the queries' block 0 in shard" if side == "queries" else "build on the reference's shard"
    assert re.search(rf"{what} \d in partition \d+: row \d+ \(id {bad_id}\) has NaN or infinite features", message)


@pytest.mark.slow
def test_all_neighbors_100k_x_64_matches_sklearn(spark, modes):
    X = np.random.default_rng(1).normal(size=(100_000, 64)).astype(np.float32)
    ids = np.arange(len(X)) * 2
    features = pa.FixedSizeListArray.from_arrays(pa.array(X.ravel()), 64).cast(pa.list_(pa.float32()))
    df = spark.createDataFrame(pa.table({"id": ids, "features": features}))
    _, positions = NearestNeighbors(n_neighbors=11, algorithm="brute").fit(X).kneighbors(X)
    expected = np.array([[p for p in row if p != i][:10] for i, row in enumerate(positions)]) * 2
    results = []
    for shards in (None, 4):  # broadcast, then sharded: the reference never reaches the driver
        start = time.perf_counter()
        results.append(collect(all_neighbors(df, 10, shards=shards)))
        print(f"all_neighbors 100,000 x 64, k=10, shards={shards}: {time.perf_counter() - start:.1f} s")
        np.testing.assert_array_equal(results[-1][1], expected)
    assert modes == ["broadcast", "sharded"]
    assert_identical(*results)
