"""Sharded mode's gemm search of a shard (``_shard_trial``): partitioned when it pays, exact either way.

In process, no Spark job: the thresholds are lowered so that small shards are tried (a Spark worker would not
see a patched module). Results are compared with float64 brute force, ties to the smaller position.
"""

from __future__ import annotations

import numpy as np
import pyarrow as pa
import pytest
from pyspark.sql.pandas.types import to_arrow_schema
from pyspark.sql.types import ArrayType, FloatType, LongType, StructField, StructType
from test_kernel import brute_force, mixture

import sklspark.neighbors._shard_trial as trial_module
import sklspark.neighbors._sharded as sharded_module
from sklspark._features import check_features
from sklspark.neighbors import GemmBackend, SklearnBackend
from sklspark.neighbors._plan import SearchSpec
from sklspark.neighbors._rerank import exact_top_k
from sklspark.neighbors._shard_merge import POSITIONS, partial_schema
from sklspark.neighbors._shard_trial import TrialPartition, shard_engine

RNG = np.random.default_rng(7)


@pytest.fixture
def small_trial(monkeypatch):
    """Shards of a few thousand rows tried, with a trial of 300 queries."""
    monkeypatch.setattr(trial_module, "MIN_PAIRS", 1000)
    monkeypatch.setattr(trial_module, "MIN_ROWS", 100)
    monkeypatch.setattr(trial_module, "TRIAL_QUERIES", 300)


def test_which_shards_are_tried():
    """Only the gemm backend's automatic choice, euclidean, a shard below the partition's own threshold with many
    queries; every other case gets a fresh copy of the plan's backend."""
    gemm = GemmBackend()
    tried = shard_engine(gemm, "euclidean", 25_000, 100_000, 100_000)
    assert isinstance(tried, TrialPartition) and tried.cluster_rows == np.sqrt(100_000)  # the whole reference's
    for engine, metric, rows, queries in [
        (gemm, "euclidean", 25_000, 100),  # too few pairs: brute force is quick
        (gemm, "euclidean", 100, 10**9),  # too few rows for k-means
        (gemm, "euclidean", 200_000, 100_000),  # the backend's own trial decides
        (gemm, "cosine", 25_000, 100_000),
        (GemmBackend(clustered=False), "euclidean", 25_000, 100_000),
        (GemmBackend(clustered=True), "euclidean", 25_000, 100_000),
        (SklearnBackend(), "euclidean", 25_000, 100_000),
    ]:
        engine_copy = shard_engine(engine, metric, rows, queries, 4 * rows)
        assert type(engine_copy) is type(engine) and engine_copy is not engine


@pytest.mark.parametrize("first_chunk", [1000, 120])
def test_clustered_shard_is_searched_as_a_partition_and_equals_brute_force(small_trial, first_chunk):
    """A mixture (exact ties, duplicates): the trial keeps the partition (its queries scored at most
    ``MAX_FRACTION`` of their pairs); the answer is brute force's, whether the trial ends within the first search or
    spans two."""
    X = mixture(3000, 16, 30)
    backend = shard_engine(GemmBackend(), "euclidean", len(X), len(X), len(X))
    assert isinstance(backend, TrialPartition)
    backend.build(X, "euclidean")
    assert backend.choice == "trial"
    keys = np.arange(len(X))
    found = [exact_top_k(backend, X, keys, X[s : s + first_chunk], 10, "euclidean") for s in (0, first_chunk)]
    assert backend.choice == "partition"
    rest = exact_top_k(backend, X, keys, X[2 * first_chunk :], 10, "euclidean")
    positions = np.concatenate([f[0] for f in found] + [rest[0]])
    distances = np.concatenate([f[1] for f in found] + [rest[1]])
    expected_positions, expected_distances = brute_force(X, X, 10)
    np.testing.assert_array_equal(positions, expected_positions)
    np.testing.assert_array_equal(distances, expected_distances)


def test_uniform_shard_falls_back_to_brute_force(small_trial):
    """Uniform data: the trial scores most pairs, the rest is brute force, the answer brute force's."""
    X = RNG.random((2000, 32), dtype=np.float32)
    backend = shard_engine(GemmBackend(), "euclidean", len(X), len(X), len(X))
    backend.build(X, "euclidean")
    positions, distances = exact_top_k(backend, X, np.arange(len(X)), X[:700], 10, "euclidean")
    assert isinstance(backend, TrialPartition) and backend.choice == "brute force" and not backend.clustered
    expected_positions, expected_distances = brute_force(X[:700], X, 10)
    np.testing.assert_array_equal(positions, expected_positions)
    np.testing.assert_allclose(distances, expected_distances, rtol=1e-12)


def test_a_group_of_sharded_mode_tries_its_shard(small_trial):
    """One (query block, shard) group as a sharded task runs it on Arrow tables: the shard partitioned, the
    candidates (IDs, distances, positions) those of brute force over the shard, positions being the global ones."""
    X = mixture(4000, 8, 20)
    shard = np.arange(1, 4000, 2)  # shard 1 of 2: the odd positions
    schema = StructType([StructField("id", LongType()), StructField("features", ArrayType(FloatType()))])
    spec = check_features(schema, "features")
    search = SearchSpec(5, "id", spec, spec, GemmBackend(), "euclidean", 500, "raise", 500, reference_rows=4000)

    def table(rows: np.ndarray, key: str) -> pa.Table:
        offsets = pa.array(np.arange(len(rows) + 1) * 8, pa.int32())
        features = pa.ListArray.from_arrays(offsets, pa.array(X[rows].ravel()))
        columns = {key: pa.array(rows, pa.int64()), "id": pa.array(rows + 100, pa.int64()), "features": features}
        return pa.table({**columns, sharded_module.BLOCK: [0] * len(rows), sharded_module.SHARD: [1] * len(rows)})

    out = partial_schema("id", LongType(), LongType())
    queries = np.arange(4000)
    built = sharded_module._build_shard(search, table(shard, sharded_module.POSITION), len(queries))
    assert isinstance(built.backend, TrialPartition)
    # clusters of sqrt(4,000) rows, as the whole reference's partition would have, not sqrt(2,000) of the shard's
    assert 16 <= len(built.backend._partition.centroids) <= 2000 / np.sqrt(4000) < np.sqrt(2000)
    got = sharded_module._search_block(search, table(queries, sharded_module.QUERY), built, to_arrow_schema(out))
    assert built.backend.choice == "partition"
    expected_positions, expected_distances = brute_force(X[queries], X[shard], 5)
    assert got.column(POSITIONS).to_pylist() == shard[expected_positions].tolist()
    assert got.column("neighbor_ids").to_pylist() == (shard[expected_positions] + 100).tolist()
    np.testing.assert_array_equal(got.column("distances").to_pylist(), expected_distances)
