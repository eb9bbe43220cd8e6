"""sklspark.neighbors: exact kNN joins agree with in-process brute force and with each other, in every mode."""

from __future__ import annotations

import os
import re
import subprocess
import sys
import time

import numpy as np
import pyarrow as pa
import pytest
import scipy.sparse as sp
from _helpers import no_spark_job
from numpy.testing import assert_allclose
from pyspark.errors import PythonException
from pyspark.ml.linalg import Vectors, VectorUDT
from pyspark.sql.pandas.types import to_arrow_schema
from pyspark.sql.types import LongType, StructField, StructType
from sklearn.metrics import pairwise_distances
from sklearn.neighbors import NearestNeighbors

import sklspark.neighbors._backends as backends_module
import sklspark.neighbors._broadcast as broadcast_module
import sklspark.neighbors._gemm as gemm_module
import sklspark.neighbors._join as join_module
import sklspark.neighbors._shard_route as route_module
import sklspark.neighbors._sharded as sharded_module
from sklspark._partitions import TASKS_PER_CORE
from sklspark.neighbors import AnnoyBackend, GemmBackend, HnswBackend, all_neighbors, kneighbors_join, to_edges
from sklspark.neighbors._backends import get_backend
from sklspark.neighbors._broadcast import ReferenceIndex
from sklspark.neighbors._names import BAD_ROW
from sklspark.neighbors._plan import JoinOptions, plan_join, stable_order
from sklspark.neighbors._rerank import exact_top_k, paired_distances
from sklspark.neighbors._shard_merge import QUERY, partial_schema

RNG = np.random.default_rng(0)
#: Integer coordinates: many exact duplicates (distance 0) and ties.
GRID = RNG.integers(0, 4, size=(240, 3)).astype(np.float64)
#: OpenBLAS kernel names of x86 CPUs without AVX2.
PRE_AVX2 = {"Prescott", "Core2", "Penryn", "Dunnington", "Nehalem", "Sandybridge", "Atom", "Barcelona", "Bobcat"}


def array_df(spark, X, ids, n_partitions=3):
    """``id`` + ``features`` (array<double or float>) DataFrame, in a deterministic partitioning."""
    n, width = X.shape
    values = pa.array(X.ravel())
    features = pa.ListArray.from_arrays(pa.array(np.arange(n + 1) * width, type=pa.int32()), values)
    table = pa.table({"id": pa.array(ids), "features": features})
    return spark.createDataFrame(table).repartition(n_partitions)


def truth(Q, R, k, metric="euclidean", query_ids=None, ref_ids=None):
    """Brute force in-process: the whole distance matrix, ties to the smaller reference position.

    The inner product's distance is ``-q . r`` (numpy, float64).
    """
    D = -(np.asarray(Q, np.float64) @ np.asarray(R, np.float64).T) if metric == "inner_product" else None
    D = pairwise_distances(Q, R, metric=metric) if D is None else D
    if query_ids is not None:  # exclude_self
        D[np.asarray(query_ids)[:, None] == np.asarray(ref_ids)[None, :]] = np.inf
    positions = np.broadcast_to(np.arange(R.shape[0]), D.shape)
    order = np.lexsort((positions, D), axis=-1)[:, :k]
    return order, np.take_along_axis(D, order, axis=1)


def _stack(values):
    """A 2-D array of equal-length lists, or a 1-D object array of arrays when lengths differ (max_distance)."""
    if len({len(v) for v in values}) <= 1:
        return np.array(values)
    out = np.empty(len(values), dtype=object)
    out[:] = [np.array(v) for v in values]
    return out


def collect(result, id_col="id"):
    """(query ids, neighbour ids, distances) in query id order."""
    table = result.toArrow()
    table = table.take(np.argsort(table.column(id_col).to_numpy(zero_copy_only=False), kind="stable"))
    rows = lambda name: table.column(name).to_pylist()  # noqa: E731
    return np.array(rows(id_col)), _stack(rows("neighbor_ids")), _stack(rows("distances"))


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


def _layouts(layout, monkeypatch, caplog):
    """Run a test in one of sharded mode's two layouts: shards by position (routing off), or shards of nearby rows
    wherever the data allow it (routing on, even where it would not pay); then check from the log that no join
    was routed (by position) or that every join whose routing was decided was routed (nearby rows)."""
    monkeypatch.setattr(route_module, "MAX_SHARE", 1.0 if layout == "nearby rows" else -1.0)
    with caplog.at_level("INFO", logger="sklspark"):
        yield
    messages = [r.getMessage() for r in caplog.records if r.name == "sklspark"]
    routed = sum("shards of nearby rows" in m for m in messages)
    if layout == "by position":
        assert routed == 0
    elif layout == "nearby rows":  # every join that could be routed was (sparse rows and other metrics cannot)
        assert routed == sum("shards by position" in m or "shards of nearby rows" in m for m in messages)


@pytest.fixture(params=["by position", "nearby rows"])
def shard_layout(request, monkeypatch, caplog):
    """The layout of the test's sharded joins (:func:`_layouts`)."""
    yield from _layouts(request.param, monkeypatch, caplog)


@pytest.fixture(params=["broadcast", "by position", "nearby rows"])
def shards(request, monkeypatch, caplog):
    """``shards=``: ``None`` (broadcast mode), or 2 in either layout (:func:`_layouts`)."""
    for _ in _layouts(request.param, monkeypatch, caplog):
        yield None if request.param == "broadcast" else 2


@pytest.fixture(scope="module")
def grid(spark):
    df = array_df(spark, GRID, np.arange(len(GRID)) * 7 + 3).cache()
    ids, X = reference_order(df)
    return df, ids, X


@pytest.mark.parametrize("metric", ["euclidean", "cosine"])
@pytest.mark.parametrize("data", ["grid", "normal"])
def test_gemm_kernel_across_tiles_equals_brute_force(monkeypatch, metric, data):
    """The gemm backend with tiny tiles (many tiles and query blocks): exact, with duplicates, ties and zero rows."""
    monkeypatch.setattr(gemm_module, "REFERENCE_TILE", 40)
    monkeypatch.setattr(gemm_module, "QUERY_BLOCK", 16)
    X = (RNG.integers(0, 3, size=(300, 3)) if data == "grid" else RNG.normal(size=(300, 8))).astype(np.float32)
    X[[5, 77]] = 0
    backend = get_backend("auto", metric)
    assert isinstance(backend, GemmBackend)
    backend.build(X, metric)
    sklearn = get_backend("sklearn", metric)
    sklearn.build(X, metric)
    for n in (1, 7, 45):  # within the first tile, and wider than one tile
        positions, distances = exact_top_k(backend, X, np.arange(300), X[:50], n, metric)
        # the sklearn backend's answer, after the same exact re-rank: identical, ties included
        assert_identical((positions, distances), exact_top_k(sklearn, X, np.arange(300), X[:50], n, metric))
        # and brute force, whose |q|^2 + |r|^2 - 2 q.r formula is off by ~1e-7 near 0 (tolerance)
        _, expected_distances = truth(X[:50].astype(np.float64), X.astype(np.float64), n, metric)
        assert_allclose(distances, expected_distances, rtol=1e-9, atol=1e-6)


@pytest.mark.parametrize("data", ["grid", "normal"])
def test_gemm_inner_product_equals_numpy_brute_force(monkeypatch, data):
    """Inner product across tiles: the largest q . r first, distance -q . r, ties to the smaller position."""
    monkeypatch.setattr(gemm_module, "REFERENCE_TILE", 40)
    monkeypatch.setattr(gemm_module, "QUERY_BLOCK", 16)
    X = (RNG.integers(-2, 3, size=(300, 3)) if data == "grid" else RNG.normal(size=(300, 8))).astype(np.float32)
    X[[5, 77]] = 0
    backend = get_backend("auto", "inner_product")
    assert isinstance(backend, GemmBackend)
    backend.build(X, "inner_product")
    for n in (1, 7, 45):
        positions, distances = exact_top_k(backend, X, np.arange(300), X[:50], n, "inner_product")
        expected_positions, expected = truth(X[:50], X, n, "inner_product")
        np.testing.assert_array_equal(positions, expected_positions)
        if data == "grid":  # small integers: every product and sum exact, ties are true ties
            np.testing.assert_array_equal(distances, expected)
        else:
            assert_allclose(distances, expected, rtol=1e-12, atol=1e-12)
        assert (np.diff(distances, axis=1) >= 0).all()


def test_faiss_runs_an_avx2_blas_kernel_where_the_cpu_has_avx2():
    """faiss-cpu's bundled OpenBLAS falls back to Prescott (SSE3) on CPUs it does not know; import_faiss avoids that."""
    if "OPENBLAS_CORETYPE" in os.environ:
        pytest.skip("OPENBLAS_CORETYPE is set for this machine; import_faiss leaves it alone")
    flags = backends_module._cpu_flags()
    if "avx2" not in flags:
        pytest.skip("this CPU has no AVX2")
    code = (
        "from sklspark.neighbors._backends import import_faiss; import_faiss(); from threadpoolctl import "
        "threadpool_info; print([i.get('architecture') for i in threadpool_info() if 'faiss' in i['filepath'] "
        "and i['internal_api'] == 'openblas'])"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    architectures = eval(out)  # a printed list of strings
    assert architectures == [backends_module.blas_coretype(flags)]
    assert not set(architectures) & PRE_AVX2


def test_all_modes_and_faiss_identical_and_exact(grid, monkeypatch, modes, shard_layout):
    """Every mode and backend gives the same lists on a grid full of ties. In shards of nearby rows, some of the
    grid's queries search one shard alone and most several: both passes of gemm's and of a file backend's
    (faiss) sharded join carry queries."""
    df, ids, X = grid
    searched = route_module.fit_router(X.astype(np.float32), 3, 7, np.inf).targets(X).sum(axis=1)
    assert (searched == 1).any() and (searched > 1).any()  # with cells fitted on all rows, as the join's sample is
    broadcast = collect(all_neighbors(df, 6))
    sharded = collect(all_neighbors(df, 6, shards=3))
    faiss = collect(all_neighbors(df, 6, backend="faiss"))
    faiss_sharded = collect(all_neighbors(df, 6, backend="faiss", shards=3))
    sklearn = collect(all_neighbors(df, 6, backend="sklearn"))
    monkeypatch.setattr(join_module, "REFERENCE_BROADCAST_MAX_BYTES", 0)
    auto_sharded = collect(all_neighbors(df, 6))
    assert modes == ["broadcast", "sharded", "broadcast", "sharded", "broadcast", "sharded"]
    for other in (sharded, faiss, faiss_sharded, sklearn, auto_sharded):
        assert_identical(broadcast, other)
    query_ids = broadcast[0]
    order = np.argsort(ids)
    assert_matches_truth(broadcast, X[order], X, ids, 6, exclude_self=True, query_ids=query_ids)
    # exclude_self drops the query's own ID only: exact duplicates at distance 0 stay
    assert not (broadcast[1] == query_ids[:, None]).any()
    assert (broadcast[2][:, 0] == 0).sum() > 100


def test_string_ids_and_join_without_exclude(spark, modes, shard_layout):
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


@pytest.mark.parametrize("ids", [np.arange(100, 220, dtype=np.int32), np.array([f"p{i:03d}" for i in range(120)])])
def test_self_join_scores_positions_not_a_second_read(spark, ids):
    """all_neighbors in broadcast mode scores the reference's own rows by position: no shuffle of the queries,
    the ID column's own type (int here stays int), the same result as the same rows given as queries."""
    df = array_df(spark, GRID[:120], ids, n_partitions=2)
    result = all_neighbors(df, 5)
    assert result.schema["id"].dataType == df.schema["id"].dataType
    plan = result._jdf.queryExecution().executedPlan().toString()
    assert "Range" in plan and "Exchange" not in plan  # positions from a range; the input not read twice
    got = collect(result)
    queries = df.select("*")  # the same rows, not the same DataFrame: queries read and spread as usual
    assert_identical(got, collect(kneighbors_join(queries, df, 5, exclude_self=True)))
    assert_identical(got, collect(all_neighbors(df, 5, chunk_size=7)))  # each range searched 7 own rows at a time
    ref_ids, R = reference_order(df)
    assert_matches_truth(got, R[np.argsort(ref_ids, kind="stable")], R, ref_ids, 5, exclude_self=True, query_ids=got[0])


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


@pytest.mark.parametrize("prebuilt", [False, True])
def test_a_shard_without_rows_keeps_its_queries(spark, prebuilt):
    """A (block, shard) group whose shard has no rows (a query routed only there, more shards than rows) gives each
    of its queries a row without candidates, not flagged: no query may be missing from the merge."""
    df = array_df(spark, GRID[:10], np.arange(10), n_partitions=1)
    plan = plan_join(df, df, 3, JoinOptions(), "all_neighbors")
    features = pa.array(GRID[:4].tolist(), pa.list_(pa.float64()))
    queries = pa.table({QUERY: np.arange(4), "id": np.arange(4), "features": features})
    queries = queries.append_column(sharded_module.BLOCK, pa.array([0] * 4)).append_column(
        sharded_module.SHARD, pa.array([1] * 4)
    )
    schema = to_arrow_schema(partial_schema("id", LongType(), LongType()))
    if prebuilt:  # shard 1 is not among the shards written
        got = sharded_module._search_prebuilt(plan.search, None, {0: "stem"}, queries, schema)
    else:
        got = sharded_module._partial_top(plan.search, queries, pa.table({"x": pa.array([], pa.int64())}), schema)
    assert got.column("id").to_pylist() == [0, 1, 2, 3]
    assert got.column("neighbor_ids").to_pylist() == [[]] * 4 and not any(got.column(BAD_ROW).to_pylist())


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


def test_inner_product_with_ties_in_both_modes(spark):
    """metric="inner_product" end to end: equal to numpy brute force (ties included), broadcast = sharded."""
    X = GRID[:120] - 1.5  # negative and positive inner products, many ties
    df = array_df(spark, X, np.arange(120) * 5, n_partitions=2)
    ids, R = reference_order(df)
    broadcast = collect(all_neighbors(df, 6, metric="inner_product"))
    assert_identical(broadcast, collect(all_neighbors(df, 6, metric="inner_product", shards=2)))
    Q = R[np.argsort(ids)]
    assert_matches_truth(broadcast, Q, R, ids, 6, "inner_product", exclude_self=True, query_ids=broadcast[0])
    # max_distance=-t keeps the neighbours with q . r >= t
    cut = collect(all_neighbors(df, 6, metric="inner_product", max_distance=-4.0))
    assert [list(n) for n in cut[1]] == [list(n[d <= -4.0]) for n, d in zip(broadcast[1], broadcast[2])]
    assert min(map(len, cut[1])) < 6 and max(map(len, cut[1])) == 6  # some lists cut short, some not


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


@pytest.fixture(scope="module")
def clusters(spark):
    """3,000 points in 20 clusters in 16 dimensions (float32): the data approximate backends are meant for."""
    centers = RNG.normal(scale=10, size=(20, 16))
    X = (centers[RNG.integers(0, 20, size=3000)] + RNG.normal(size=(3000, 16))).astype(np.float32)
    df = array_df(spark, X, np.arange(3000), n_partitions=2).cache()
    ids, R = reference_order(df)
    return df, ids, R


def recall(got, exact):
    """Mean fraction of each row's exact neighbour ids that ``got`` found too (recall@k)."""
    return np.mean([len(set(a) & set(b)) / len(b) for a, b in zip(got, exact)])


def test_annoy_recall_on_clusters(clusters):
    df, ids, R = clusters
    exact = collect(all_neighbors(df, 10, backend="faiss"))
    recalls = {}
    for backend in ("annoy", AnnoyBackend(n_trees=5)):  # by name (50 trees), and a configured instance
        got = collect(all_neighbors(df, 10, backend=backend))
        label = backend if isinstance(backend, str) else f"n_trees={backend.n_trees}"
        recalls[label] = recall(got[1], exact[1])
        assert recalls[label] >= 0.9
    print(f"annoy recall@10: {recalls}")
    # the distances of what annoy found are exact nonetheless
    by_id = dict(zip(ids.tolist(), R.astype(np.float64)))
    q = np.stack([by_id[i] for i in got[0]])
    found = np.stack([[by_id[j] for j in row] for row in got[1][:50]])
    assert_allclose(got[2][:50], np.sqrt(((q[:50, None] - found) ** 2).sum(-1)), rtol=1e-12)


@pytest.mark.parametrize("metric", ["euclidean", "cosine"])
def test_hnsw_recall_on_clusters_index_shipped_as_file(clusters, monkeypatch, metric):
    """hnsw in broadcast mode: its index travels as a file, recall@10 >= 0.95 against exact, exact distances."""
    df, ids, R = clusters
    shipped = []
    original = broadcast_module.ship_file
    monkeypatch.setattr(broadcast_module, "ship_file", lambda sc, path: shipped.append(path) or original(sc, path))
    exact = collect(all_neighbors(df, 10, metric=metric))
    got = collect(all_neighbors(df, 10, metric=metric, backend="hnsw"))
    assert [path.rsplit(".", 1)[-1] for path in shipped] == ["hnsw"]  # the gemm reference is pickled instead
    print(f"hnsw recall@10 ({metric}): {recall(got[1], exact[1]):.4f}")
    assert recall(got[1], exact[1]) >= 0.95
    # what hnsw found comes with exact distances, ascending
    position = {i: p for p, i in enumerate(ids.tolist())}
    queries = R[[position[i] for i in got[0]]]
    expected = paired_distances(queries, R, np.vectorize(position.get)(got[1]), metric)
    assert_allclose(got[2], expected, rtol=1e-12)
    assert (np.diff(got[2], axis=1) >= 0).all()
    if metric == "euclidean":  # sharded mode builds a graph per shard, in the tasks
        sharded = collect(all_neighbors(df, 10, backend=HnswBackend(M=16, ef_search=100), shards=2))
        assert recall(sharded[1], exact[1]) >= 0.95


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
                "The 'backend' parameter of kneighbors_join must be a str among {'annoy', 'auto', 'faiss', 'gemm', "
                "'hnsw', 'sklearn'} or an instance of 'Backend'. Got 'hnswlib' instead."
            ),
        ):
            all_neighbors(df, 3, backend="hnswlib")
        with pytest.raises(
            ValueError, match=re.escape("The 'metric' parameter of backend 'hnsw' must be a str among {'cosine', 'eu")
        ):
            all_neighbors(df, 3, backend="hnsw", metric="manhattan")
        with pytest.raises(ValueError, match=re.escape("'M' parameter of HnswBackend must be an int in the range [2,")):
            all_neighbors(df, 3, backend=HnswBackend(M=1))
        with pytest.raises(ValueError, match=r"The 'ef_search' parameter of HnswBackend .* Got 0 instead"):
            HnswBackend(ef_search=0)
        with pytest.raises(TypeError, match=r"'ef_construction' parameter of HnswBackend must be an int .* Got 8.5"):
            HnswBackend(ef_construction=8.5)
        with pytest.raises(
            ValueError,
            match=re.escape("The 'metric' parameter of backend 'faiss' must be a str among {'euclidean'}. Got 'manh"),
        ):
            all_neighbors(df, 3, backend="faiss", metric="manhattan")
        with pytest.raises(ValueError, match="cannot use metric 'nonsense'"):
            all_neighbors(df, 3, metric="nonsense")
        with pytest.raises(ValueError, match="backend 'sklearn' cannot use metric 'inner_product': NearestNeighbors"):
            all_neighbors(df, 3, metric="inner_product", backend="sklearn")
        with pytest.raises(ValueError, match=r"The 'metric' parameter of backend 'hnsw' must be a str among"):
            all_neighbors(df, 3, metric="inner_product", backend="hnsw")
        with pytest.raises(ValueError, match=r"'max_distance' parameter of kneighbors_join .* Got nan instead"):
            all_neighbors(df, 3, metric="inner_product", max_distance=float("nan"))
        with pytest.raises(ValueError, match="duplicate IDs"):
            kneighbors_join(df, nn, 3, reference_ids=[1, 2, 3, 4, 5, 6, 7, 8, 9, 1])
        with pytest.raises(ValueError, match="id column 'key' not found in the queries"):
            all_neighbors(df, 3, id_col="key")
        with pytest.raises(ValueError, match="metric 'euclidean' but metric='cosine'"):
            kneighbors_join(df, nn, 3, metric="cosine")
        with pytest.raises(ValueError, match="feature column"):
            all_neighbors(df, 3, features_col="vec")
        for bad in (-1.0, float("nan"), "1"):
            with pytest.raises((TypeError, ValueError), match=r"The 'max_distance' parameter of \w+ must be a float"):
                all_neighbors(df, 3, max_distance=bad)


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
    assert "sklspark._runner.ChunkError: sklspark: bad input for GemmBackend." in message  # the default backend
    bad_id = 107 if side == "queries" else 7
    what = r"search of the queries' block \d in shard" if side == "queries" else "build on the reference's shard"
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


def _parquet_files(path):
    return (os.path.join(path, name) for name in sorted(os.listdir(path)) if name.endswith(".parquet"))


def _stage_tasks(sc, group):
    """The number of tasks of every stage of the jobs run in job group ``group``."""
    tracker = sc.statusTracker()
    stages = [s for j in tracker.getJobIdsForGroup(group) for s in tracker.getJobInfo(j).stageIds]
    return [info.numTasks for info in map(tracker.getStageInfo, stages) if info is not None]


def test_one_parquet_file_spreads_over_every_core(spark, tmp_path, monkeypatch, modes):
    """One Parquet file is one partition; the search still runs as a few tasks on every core, in both modes."""
    X = RNG.normal(size=(600, 4))
    path = str(tmp_path / "points.parquet")
    array_df(spark, X, np.arange(600) * 3, n_partitions=1).coalesce(1).write.parquet(path)
    df = spark.read.parquet(path)
    assert df.rdd.getNumPartitions() == 1
    ids, R = reference_order(df)
    sc = spark.sparkContext
    cores = sc.defaultParallelism
    blocks = []
    original = join_module.sharded_join
    monkeypatch.setattr(
        join_module,
        "sharded_join",
        lambda plan, layout: blocks.append(layout.blocks * layout.shards) or original(plan, layout),
    )
    broadcast = all_neighbors(df, 5)
    assert broadcast.rdd.getNumPartitions() >= cores
    sc.setJobGroup("sklspark-spread", "one file")
    try:
        got = collect(broadcast)
    finally:
        sc.setLocalProperty("spark.jobGroup.id", None)
    assert max(_stage_tasks(sc, "sklspark-spread")) >= cores
    assert_matches_truth(got, R[np.argsort(ids)], R, ids, 5, exclude_self=True, query_ids=got[0])
    sharded = collect(all_neighbors(df, 5, shards=1))
    assert blocks[0] >= cores  # (block, shard) groups: at least one per core
    assert_identical(got, sharded)
    assert modes == ["broadcast", "sharded"]
    # Split by bytes, the file's one row group goes whole to one partition: the others are empty, and the
    # queries are spread over every core nonetheless
    spark.conf.set("spark.sql.files.maxPartitionBytes", str(os.path.getsize(next(_parquet_files(path))) // 3))
    try:
        split = spark.read.parquet(path)
        rows = split.rdd.mapPartitions(lambda part: [sum(1 for _ in part)]).collect()
        searched = all_neighbors(split, 5).rdd.mapPartitions(lambda part: [sum(1 for _ in part)]).collect()
    finally:
        spark.conf.unset("spark.sql.files.maxPartitionBytes")
    assert len(rows) >= cores and sorted(rows)[-2:] == [0, 600]
    assert len(searched) >= cores and min(searched) > 0 and sum(searched) == 600


def test_rows_without_size_statistics_are_counted_and_broadcast(spark, modes):
    """createDataFrame(list of rows) has no plan statistics (Long.MaxValue): a count decides, not the estimate."""
    X = GRID[:30]
    rows = [(int(i), x.tolist()) for i, x in enumerate(X)]
    df = spark.createDataFrame(rows, "id long, features array<double>")
    assert join_module._estimated_bytes(df) is None
    got = collect(all_neighbors(df, 3))
    assert modes == ["broadcast"]
    ids, R = reference_order(df)
    assert_matches_truth(got, R[np.argsort(ids)], R, ids, 3, exclude_self=True, query_ids=got[0])


def test_max_distance_keeps_only_near_neighbours(spark, shards):
    X = GRID[:120] + RNG.normal(scale=0.3, size=(120, 3))
    df = array_df(spark, X, np.arange(120), n_partitions=2)
    ids, R = reference_order(df)
    k, radius = 6, 0.9
    got = collect(all_neighbors(df, k, shards=shards, max_distance=radius))
    positions, distances = truth(R[np.argsort(ids)], R, k, query_ids=got[0], ref_ids=ids)
    expected_ids = [ids[p][d <= radius].tolist() for p, d in zip(positions, distances)]
    assert [list(n) for n in got[1]] == expected_ids
    for d, e in zip(got[2], distances):
        assert_allclose(d, e[e <= radius], rtol=1e-9, atol=1e-12)
    lengths = {len(n) for n in got[1]}
    assert min(lengths) < k and max(lengths) == k  # some lists are cut short, some are not
    # exactly at the radius stays: every neighbour within the k-th distance of a full list
    joined = collect(kneighbors_join(df, df, 2, max_distance=0.0, shards=shards))
    assert all(len(n) >= 1 and set(d) == {0.0} for n, d in zip(joined[1], joined[2]))


def _tfidf_like(n, width=1 << 18, per_row=12, vocabulary=400):
    """CSR rows of ``per_row`` entries from a small vocabulary spread over ``width`` columns (overlaps, ties)."""
    rng = np.random.default_rng(n)  # the same rows whichever tests ran before
    columns = rng.choice(vocabulary, size=(n, per_row)) * (width // vocabulary)
    values = rng.integers(1, 4, size=(n, per_row)).astype(np.float64)
    X = sp.csr_matrix((values.ravel(), columns.ravel(), np.arange(n + 1) * per_row), shape=(n, width))
    X.sum_duplicates()
    return X


def sparse_df(spark, X):
    """An ``id`` + ``features`` (SparseVector) DataFrame of the CSR rows ``X``, and its reference positions' ids."""
    rows = [(i, Vectors.sparse(X.shape[1], X[i].indices.tolist(), X[i].data.tolist())) for i in range(X.shape[0])]
    schema = StructType([StructField("id", LongType()), StructField("features", VectorUDT())])
    df = spark.createDataFrame(rows, schema).repartition(2)
    return df, stable_order(df, "id", ["features"]).select("id").toArrow().column("id").to_numpy()


def assert_matches_csr_brute_force(got, X, ids, k, metric):
    """Brute force on the CSR matrix, to its rounding, and the tie rule on the distances returned.

    Rows at mathematically equal distances (ties) may differ in their last bits, in scikit-learn's
    formula (|q|^2 + |r|^2 - 2 q.r, or 1 - q.r / |q||r|) as in the exact pair-wise one; so the neighbours
    found must be at the brute-force distances, and equal distances returned must be in position order.
    """
    R = X[ids]
    D = -(X @ R.T).toarray() if metric == "inner_product" else pairwise_distances(X, R, metric=metric)
    D[got[0][:, None] == ids[None, :]] = np.inf  # exclude_self
    expected = np.sort(D, axis=1)[:, :k]
    positions = np.searchsorted(ids, got[1], sorter=np.argsort(ids))
    positions = np.argsort(ids)[positions]  # of each neighbour found, its reference position
    assert_allclose(np.take_along_axis(D, positions, axis=1), expected, atol=1e-8)
    assert_allclose(got[2], expected, atol=1e-8)
    tied = got[2][:, 1:] == got[2][:, :-1]
    assert (positions[:, 1:] > positions[:, :-1])[tied].all() and tied.any()


@pytest.mark.parametrize("metric", ["euclidean", "cosine", "inner_product"])
def test_sparse_vectors_are_searched_as_csr(spark, monkeypatch, metric):
    """SparseVector features (2^18 columns): the reference stays CSR; equal to brute force on the CSR matrix."""
    X = _tfidf_like(300)
    df, ids = sparse_df(spark, X)
    fitted = []
    original = ReferenceIndex.fit
    monkeypatch.setattr(
        ReferenceIndex, "fit", lambda self, X, *a, **kw: fitted.append(X) or original(self, X, *a, **kw)
    )
    backends = ("auto",) if metric == "inner_product" else ("auto", "sklearn")  # sklearn has no inner product
    got = {b: collect(all_neighbors(df, 5, metric=metric, backend=b)) for b in backends}
    assert all(sp.issparse(x) for x in fitted)
    assert_identical(got["auto"], got.get("sklearn", got["auto"]))
    assert_matches_csr_brute_force(got["auto"], X, ids, 5, metric)


@pytest.mark.parametrize("metric", ["euclidean", "cosine"])
def test_sparse_vectors_stay_csr_in_sharded_mode(spark, monkeypatch, metric):
    """Sharded mode: shards and query chunks reach the backend as CSR (a dense shard would fail the task), and
    shards and blocks are sized by the entries stored, not by the 2^18 columns."""

    class CsrOnly(GemmBackend):  # defined here, so that it is pickled by value into the tasks
        def build(self, X, metric):
            if not sp.issparse(X):
                raise TypeError(f"a dense {X.shape} shard reached the backend")
            super().build(X, metric)

        def search(self, Q, n):
            if not sp.issparse(Q):
                raise TypeError(f"a dense {Q.shape} query chunk reached the backend")
            return super().search(Q, n)

    X = _tfidf_like(300)
    df, ids = sparse_df(spark, X)
    sizes = []
    original = join_module.sharded_join
    monkeypatch.setattr(
        join_module,
        "sharded_join",
        lambda plan, layout: sizes.append((layout.shards, layout.blocks)) or original(plan, layout),
    )
    monkeypatch.setattr(join_module, "REFERENCE_BROADCAST_MAX_BYTES", 0)
    got = collect(all_neighbors(df, 5, metric=metric, backend=CsrOnly()))
    assert_identical(got, collect(all_neighbors(df, 5, metric=metric, backend="sklearn", shards=2)))
    assert_matches_csr_brute_force(got, X, ids, 5, metric)
    # 300 rows of ~12 stored entries: one shard, and blocks only to keep every core busy (dense: 5 and 10)
    tasks = spark.sparkContext.defaultParallelism * TASKS_PER_CORE
    assert sizes == [(1, tasks), (2, -(-tasks // 2))]


@pytest.mark.parametrize("backend", ["auto", "sklearn", "faiss", "hnsw"])
@pytest.mark.parametrize("shards", [None, 2])
def test_nan_query_is_refused_naming_the_side_and_id_in_every_mode(spark, shards, backend):
    """A query row with NaN fails the job in both modes and with every backend, naming the queries and its ID.

    (Broadcast mode used to return the first reference rows with NaN distances for it, silently.)
    """
    R, Q = GRID[:40].copy(), GRID[40:60].copy()
    Q[7, 1] = np.nan
    ref = array_df(spark, R, np.arange(40), n_partitions=1)
    queries = array_df(spark, Q, np.arange(100, 120), n_partitions=1)
    with pytest.raises(Exception) as info:
        kneighbors_join(queries, ref, 3, shards=shards, backend=backend).collect()
    message = str(info.value)
    assert "queries" in message and re.search(r"row \d*\s*\(id 107\) has NaN or infinite features", message)


def test_nan_reference_row_is_refused_naming_the_side_and_id(spark, shards):
    R = GRID[:40].copy()
    R[5, 0] = np.inf
    ref = array_df(spark, R, np.arange(40) * 10, n_partitions=1)
    with pytest.raises(Exception, match=r"reference's (shard \d in partition \d+: )?row \d+ \(id 50\) has NaN or inf"):
        kneighbors_join(array_df(spark, GRID[40:50], np.arange(10)), ref, 3, shards=shards).collect()


def test_on_error_null_gives_bad_rows_null_lists_and_a_reason(spark, shards):
    """on_error="null": a NaN row has null neighbours and its reason, is nobody's neighbour; the others are exact."""
    X = RNG.normal(size=(60, 4))
    bad = [3, 31, 47]
    X[bad[0], 1], X[bad[1], 0], X[bad[2], 3] = np.nan, np.inf, -np.inf
    df = array_df(spark, X, np.arange(60) * 2, n_partitions=2)
    ids, R = reference_order(df)
    result = all_neighbors(df, 4, shards=shards, on_error="null")
    assert result.columns == ["id", "neighbor_ids", "distances", "error"]
    table = result.toArrow().sort_by("id")
    errors = table.column("error").to_pylist()
    assert [i for i, e in zip(table.column("id").to_pylist(), errors) if e is not None] == [2 * b for b in bad]
    assert errors[bad[0]] == "all_neighbors: ValueError: the queries' row (id 6) has NaN or infinite features"
    for column in ("neighbor_ids", "distances"):
        assert [v is None for v in table.column(column).to_pylist()] == [e is not None for e in errors]
    good = np.isfinite(R).all(axis=1)
    query_ids = table.column("id").to_numpy()
    finite = np.isin(query_ids, ids[good])
    got = (query_ids[finite], _stack(np.array(table.column("neighbor_ids").to_pylist(), dtype=object)[finite].tolist()))
    got += (_stack(np.array(table.column("distances").to_pylist(), dtype=object)[finite].tolist()),)
    Rg, ids_g = R[good], ids[good]
    assert_matches_truth(got, Rg[np.argsort(ids_g)], Rg, ids_g, 4, exclude_self=True, query_ids=got[0])
    # kneighbors_join: the same rule, the error names the function called
    joined = kneighbors_join(df, df, 2, shards=shards, on_error="null").where("error IS NOT NULL").collect()
    assert sorted(r.id for r in joined) == [2 * b for b in bad]
    assert all(r.error.startswith("kneighbors_join: ValueError: the queries' row (id ") for r in joined)


def _permuted_ties(n_ref=60, width=16, seed=4):
    """References that are permutations of one another's values, around a zero query: ties whose float sums
    depend on the order the terms are added in (numpy's pairwise sum against a left-to-right one); and exact
    duplicates, ties in any arithmetic."""
    rng = np.random.default_rng(seed)
    base = np.round(rng.uniform(0.1, 1.0, size=width), 1)
    R = np.stack([rng.permutation(base) * (1 + (i % 3 == 0)) for i in range(n_ref)])
    R[::4] = 0.0 + R[::4] * (rng.uniform(size=(len(R[::4]), width)) < 0.5)  # some zero entries: sparse rows differ
    R[n_ref // 2 :: 2] = R[: n_ref // 4]  # duplicates of earlier rows
    Q = np.vstack([np.zeros(width), R[[1, 2, 5]] * 0.5])
    return Q, R


@pytest.mark.parametrize("metric", ["manhattan", "euclidean"])
def test_dense_and_sparse_rows_break_exact_ties_alike(spark, metric, shards):
    """The same points as arrays and as SparseVectors: identical neighbours and distances, equal to numpy brute
    force that adds each distance's terms left to right, ties to the smaller reference position."""
    Q, R = _permuted_ties()
    terms = np.abs(Q[:, None, :] - R[None, :, :]) ** (1 if metric == "manhattan" else 2)
    ordered = np.cumsum(terms, axis=2)[..., -1]
    assert (terms.sum(axis=2) != ordered).any()  # the data tells summation orders apart
    D = ordered if metric == "manhattan" else np.sqrt(ordered)
    schema = StructType([StructField("id", LongType()), StructField("features", VectorUDT())])

    def frames(M, first_id):
        dense = array_df(spark, M, np.arange(len(M)) + first_id, n_partitions=1)
        vectors = [Vectors.sparse(M.shape[1], {j: v for j, v in enumerate(m) if v}) for m in M]
        rows = [(first_id + i, v) for i, v in enumerate(vectors)]
        return dense, spark.createDataFrame(rows, schema).coalesce(1)

    got = []
    for queries, ref in zip(frames(Q, 1000), frames(R, 0)):
        got.append(collect(kneighbors_join(queries, ref, 8, metric=metric, shards=shards)))
    assert_identical(*got)
    order = np.lexsort((np.broadcast_to(np.arange(len(R)), D.shape), D), axis=-1)[:, :8]  # positions = ids
    np.testing.assert_array_equal(got[0][1], order)
    np.testing.assert_array_equal(got[0][2], np.take_along_axis(D, order, axis=1))
    assert (np.diff(got[0][2], axis=1) == 0).any()  # ties in the lists, broken by position


@pytest.mark.parametrize("shards", [None, 2])
def test_exclude_self_compares_int_and_bigint_ids_as_long(spark, shards):
    X = GRID[:50]
    features = pa.ListArray.from_arrays(pa.array(np.arange(51) * 3, type=pa.int32()), pa.array(X.ravel()))
    queries = spark.createDataFrame(pa.table({"id": pa.array(np.arange(50), pa.int32()), "features": features}))
    ref = array_df(spark, X, np.arange(50), n_partitions=2)
    assert queries.schema["id"].dataType.simpleString() == "int"
    ids, R = reference_order(ref)
    got = collect(kneighbors_join(queries, ref, 3, exclude_self=True, shards=shards))
    assert_matches_truth(got, X, R, ids, 3, exclude_self=True, query_ids=got[0])


def test_decisions_are_logged_once_per_call(spark, caplog):
    df = array_df(spark, GRID[:40], np.arange(40), n_partitions=2)
    with caplog.at_level("INFO", logger="sklspark"):
        all_neighbors(df, 3, shards=2, metric="manhattan")
    messages = [r.getMessage() for r in caplog.records if r.name == "sklspark"]
    assert sum("backend sklearn, metric 'manhattan' (auto: gemm does not compute" in m for m in messages) == 1
    assert sum("all_neighbors: sharded mode: shards=2 given" in m for m in messages) == 1
    layout = r"2 shard\(s\) .* x \d+ query block\(s\) .* for \d+ cores"
    assert sum(re.search(layout, m) is not None for m in messages) == 1
    caplog.clear()
    with caplog.at_level("INFO", logger="sklspark"):
        kneighbors_join(df, df, 3)
    messages = [r.getMessage() for r in caplog.records if r.name == "sklspark"]
    assert sum("backend gemm, metric 'euclidean' (auto: gemm computes" in m for m in messages) == 1
    assert (
        sum(
            re.search(r"broadcast mode: reference of \d+ bytes .* <= REFERENCE_BROADCAST_MAX", m) is not None
            for m in messages
        )
        == 1
    )
    assert sum("broadcast reference of 40 rows x 3 features (dense), searched by" in m for m in messages) == 1


# --- sharded mode, backends whose index is a file: each shard's index built once --------------------------------


def _counting_hnsw(builds_dir, **params):
    """An hnsw backend (the plugin interface, like a user's) that leaves a file in ``builds_dir`` for every build."""

    class CountingHnsw(HnswBackend):
        def build(self, X, metric):
            super().build(X, metric)
            with open(os.path.join(builds_dir, f"build-{os.getpid()}-{time.perf_counter_ns()}"), "w") as f:
                f.write(str(X.shape[0]))

    return CountingHnsw(**params)


def per_shard_hnsw(X, shards, n, params):
    """What sharded hnsw computes, in-process: a graph per shard (rows ``i`` with ``i mod shards = s``, one
    thread), each searched and re-ranked exactly, the shards' lists merged by distance then position: the positions."""
    import faiss

    threads = faiss.omp_get_max_threads()
    faiss.omp_set_num_threads(1)
    try:
        lists = []
        for s in range(shards):
            keys = np.arange(s, len(X), shards)
            backend = HnswBackend(**params)
            backend.build(X[keys], "euclidean")
            positions, distances = exact_top_k(backend, X[keys], keys, X, n, "euclidean")
            lists.append((keys[positions], distances))
    finally:
        faiss.omp_set_num_threads(threads)
    keys, distances = np.hstack([p for p, _ in lists]), np.hstack([d for _, d in lists])
    return np.take_along_axis(keys, np.lexsort((keys, distances), axis=-1)[:, :n], axis=1)


def test_sharded_hnsw_builds_each_shard_once_and_every_block_searches_it(spark, tmp_path, monkeypatch, caplog):
    """Three shards searched by many query blocks: three builds (one file each, counted on the driver) and
    exactly the lists of a graph per shard built in-process, recall@10 >= 0.95 against brute force."""
    centers = RNG.normal(scale=10, size=(20, 16))
    X = (centers[RNG.integers(0, 20, size=2000)] + RNG.normal(size=(2000, 16))).astype(np.float32)
    df = array_df(spark, X, np.arange(2000), n_partitions=1)  # one partition: position = id, shard = id mod 3
    builds, indexes = tmp_path / "builds", tmp_path / "indexes"
    builds.mkdir(), indexes.mkdir()
    monkeypatch.setattr(sharded_module, "QUERY_BLOCK_MAX_BYTES", 16 << 10)  # 2,000 x 16 float32: 8 blocks
    monkeypatch.setattr(route_module, "MAX_SHARE", -1.0)  # shards by position, as per_shard_hnsw cuts them
    params = {"M": 8, "ef_construction": 40, "ef_search": 48}
    with caplog.at_level("INFO", logger="sklspark"):
        got = collect(all_neighbors(df, 10, backend=_counting_hnsw(str(builds), **params), shards=3, index_dir=indexes))
    messages = [r.getMessage() for r in caplog.records if r.name == "sklspark"]
    blocks = [int(m) for m in re.findall(r"3 shard\(s\) .* x (\d+) query block\(s\)", "\n".join(messages))]
    assert blocks and blocks[0] >= 8
    assert sorted(int(p.read_text()) for p in builds.iterdir()) == [666, 667, 667]  # once per shard, whole shard
    assert len(list(indexes.glob("*.hnsw"))) == 3
    positions = per_shard_hnsw(X.astype(np.float64), 3, 11, params)
    expected = [[p for p in row if p != i][:10] for i, row in enumerate(positions)]
    np.testing.assert_array_equal(got[1], np.array(expected))
    exact, _ = truth(X, X, 11)
    exact = [[p for p in row if p != i][:10] for i, row in enumerate(exact)]
    print(f"sharded hnsw recall@10: {recall(got[1], exact):.4f}")
    assert recall(got[1], exact) >= 0.95
    assert_allclose(got[2], np.sqrt(((X[:, None].astype(np.float64) - X[got[1]]) ** 2).sum(-1)), rtol=1e-12)


@pytest.mark.parametrize("backend", ["faiss", "annoy", "hnsw", "hnsw-cosine"])
def test_sharded_file_backends_against_broadcast_and_brute_force(clusters, backend, shard_layout):
    """Prebuilt shards: faiss (exact) equals broadcast mode and brute force; hnsw and annoy reach recall@10 >= 0.95
    in both modes, with exact distances."""
    df, ids, R = clusters
    backend, _, metric = backend.partition("-")
    metric = metric or "euclidean"
    sharded = collect(all_neighbors(df, 10, backend=backend, metric=metric, shards=3))
    broadcast = collect(all_neighbors(df, 10, backend=backend, metric=metric))
    if backend == "faiss":
        assert_identical(sharded, broadcast)
        assert_matches_truth(sharded, R[np.argsort(ids)], R, ids, 10, exclude_self=True, query_ids=sharded[0])
        return
    order = np.argsort(ids)  # sharded[0]: the ids in ascending order
    exact = ids[truth(R[order], R, 11, metric, query_ids=ids[order], ref_ids=ids)[0][:, :10]]
    recalls = recall(sharded[1], exact), recall(broadcast[1], exact)
    print(f"{backend} ({metric}) recall@10 sharded, broadcast: {recalls}")
    assert min(recalls) >= 0.95
    position = {i: p for p, i in enumerate(ids.tolist())}
    expected = paired_distances(R[[position[i] for i in sharded[0]]], R, np.vectorize(position.get)(sharded[1]), metric)
    assert_allclose(sharded[2], expected, rtol=1e-12)


def test_sharded_file_backend_with_a_shard_of_bad_rows_only(spark):
    """on_error="null" with every row of one shard NaN: that shard has no index, the rest is exact (as sklearn)."""
    X = RNG.normal(size=(40, 4))
    X[::2, 0] = np.nan  # one partition: position = id, so shard 0 of 2 holds the even ids, all bad
    df = array_df(spark, X, np.arange(40), n_partitions=1)
    faiss_result = all_neighbors(df, 3, backend="faiss", shards=2, on_error="null")
    sklearn_result = all_neighbors(df, 3, backend="sklearn", shards=2, on_error="null")
    got = faiss_result.toArrow().sort_by("id")
    assert got.equals(sklearn_result.toArrow().sort_by("id"))
    odd = np.arange(1, 40, 2)
    expected = np.sort(odd[truth(X[1::2], X[1::2], 4)[0][:, 1:]], axis=1)  # none is a tie: normal data
    np.testing.assert_array_equal(np.sort(got.column("neighbor_ids").to_pylist()[1::2], axis=1), expected)
    assert got.column("neighbor_ids").to_pylist()[::2] == [None] * 20


def test_index_dir_is_checked_on_the_driver(spark, sc, tmp_path):
    df = array_df(spark, GRID[:40], np.arange(40), n_partitions=1)
    with no_spark_job(sc):
        with pytest.raises(
            ValueError, match=r"index_dir= applies to backends .*\(faiss, hnsw, annoy\); backend 'gemm'"
        ):
            all_neighbors(df, 3, shards=2, index_dir=tmp_path)
        with pytest.raises(ValueError, match=r"index_dir '.*missing' is not a directory"):
            all_neighbors(df, 3, backend="faiss", shards=2, index_dir=tmp_path / "missing")
        with pytest.raises(TypeError, match=r"index_dir must be a directory's path \(str or os.PathLike\), got int"):
            all_neighbors(df, 3, backend="faiss", index_dir=3)
        nn = NearestNeighbors().fit(GRID[:40])
        with pytest.raises(ValueError, match="index_dir= applies to a sharded DataFrame reference; a fitted"):
            kneighbors_join(df, nn, 3, backend="faiss", index_dir=tmp_path)
