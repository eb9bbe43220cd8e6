"""The in-process exact kernel (``_gemm``) and the clustered exact search (``_clustered``) against numpy brute force.

Brute force here is float64, pair by pair (``sqrt(sum((q - r)^2))``, exact on small integers), ordered by
distance then reference position: the tie rule every exact backend must follow after the re-rank.
"""

from __future__ import annotations

import pickle
import subprocess
import sys
from pathlib import Path

import numpy as np
import pyarrow as pa
import pytest
from threadpoolctl import threadpool_limits

import sklspark.neighbors._clustered as clustered_module
import sklspark.neighbors._gemm as gemm_module
import sklspark.neighbors._rerank as rerank_module
import sklspark.neighbors._select as select_module
from sklspark.neighbors import GemmBackend, all_neighbors
from sklspark.neighbors._gemm import Scored, top_scores
from sklspark.neighbors._rerank import EXACT_MARGIN, exact_top_k

RNG = np.random.default_rng(20)


def brute_force(Q: np.ndarray, R: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray]:
    """Positions and distances of the ``k`` nearest rows, float64 pair by pair, ties to the smaller position."""
    Q64, R64 = Q.astype(np.float64), R.astype(np.float64)
    positions, distances = [], []
    for start in range(0, len(Q64), 64):
        D = np.sqrt(np.square(Q64[start : start + 64, None, :] - R64[None]).sum(axis=-1))
        order = np.lexsort((np.broadcast_to(np.arange(len(R64)), D.shape), D), axis=-1)[:, :k]
        positions.append(order)
        distances.append(np.take_along_axis(D, order, axis=1))
    return np.concatenate(positions), np.concatenate(distances)


def mixture(n: int, d: int, clusters: int, spread: int = 2, seed: int = 0) -> np.ndarray:
    """A Gaussian-like mixture on integers: far-apart centres, small integer offsets (many exact ties)."""
    rng = np.random.default_rng(seed)
    centres = rng.integers(-1000, 1000, size=(clusters, d))
    X = centres[rng.integers(0, clusters, n)] + rng.integers(-spread, spread + 1, size=(n, d))
    X[100:110] = X[50]  # duplicates: ties at distance 0
    return X.astype(np.float32)


def search(backend: GemmBackend, X: np.ndarray, Q: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray]:
    return exact_top_k(backend, X, np.arange(len(X)), Q, k, "euclidean")


@pytest.mark.parametrize("n", [1, 10, 45])
def test_top_scores_across_tiles_and_threads_equals_numpy(monkeypatch, n):
    """Many small tiles, the bias folded into the product, one thread and two: the n smallest float32 scores."""
    monkeypatch.setattr(gemm_module, "REFERENCE_TILE", 40)
    monkeypatch.setattr(gemm_module, "QUERY_BLOCK", 16)
    X = RNG.normal(size=(500, 8)).astype(np.float32)
    ref = Scored(X, np.einsum("ij,ij->i", X, X))
    Q = X[:100] * np.float32(-2)
    expected = np.sort(Q.astype(np.float64) @ X.T.astype(np.float64) + ref.rows[:, -1], axis=1)[:, :n]
    results = []
    for threads in (1, 2):
        with threadpool_limits(threads, user_api="blas"):
            scores, positions = top_scores(Q, ref, n)
        np.testing.assert_allclose(scores, expected, rtol=0, atol=1e-4)
        assert (np.diff(scores, axis=1) >= 0).all()
        # each position's own score is the one returned
        own = np.einsum("ij,ij->i", np.repeat(Q, n, axis=0), X[positions.ravel()]) + ref.rows[positions.ravel(), -1]
        np.testing.assert_allclose(scores.ravel(), own, rtol=0, atol=1e-4)
        results.append((scores, positions))
    np.testing.assert_array_equal(results[0][1], results[1][1])


def test_gemm_backend_brute_force_with_ties_equals_numpy(monkeypatch):
    """Integer grid data (exact ties everywhere) through the backend and the exact re-rank, small tiles."""
    monkeypatch.setattr(gemm_module, "REFERENCE_TILE", 64)
    monkeypatch.setattr(gemm_module, "QUERY_BLOCK", 32)
    X = RNG.integers(0, 3, size=(700, 4)).astype(np.float32)
    backend = GemmBackend()
    backend.build(X, "euclidean")
    assert not backend.clustered  # far below MIN_ROWS
    for k in (1, 5, 30):
        positions, distances = search(backend, X, X[:200], k)
        expected_positions, expected_distances = brute_force(X[:200], X, k)
        np.testing.assert_array_equal(positions, expected_positions)
        np.testing.assert_array_equal(distances, expected_distances)


@pytest.mark.parametrize("rows", [slice(0, 700), slice(150, 530), slice(690, 700)])
def test_self_search_scores_each_pair_once_and_equals_brute_force(monkeypatch, rows):
    """Own rows as queries (whole, middle, a last sliver), small tiles and groups (rounds of pairs of groups), one
    thread and two, ties everywhere."""
    monkeypatch.setattr(gemm_module, "REFERENCE_TILE", 40)
    monkeypatch.setattr(gemm_module, "QUERY_BLOCK", 16)
    monkeypatch.setattr(gemm_module, "PAIR_TILE", 24)
    monkeypatch.setattr(gemm_module, "OWN_GROUP", 56)
    X = RNG.integers(-2, 3, size=(700, 5)).astype(np.float32)  # small integers: float32 scores are exact
    ref = Scored(X, np.einsum("ij,ij->i", X, X))
    exact = (-2 * X[rows].astype(np.float64)) @ X.T.astype(np.float64) + ref.bias
    for n in (1, 9, 60):
        for threads in (1, 2):
            with threadpool_limits(threads, user_api="blas"):
                scores, positions = gemm_module.own_scores(ref, rows, n, -2.0)
            np.testing.assert_array_equal(scores, np.sort(exact, axis=1)[:, :n])
            np.testing.assert_array_equal(np.take_along_axis(exact, positions, axis=1), scores)  # each its own score
            assert all(len(set(found)) == n for found in positions)  # no row twice
    backend = GemmBackend(clustered=False)
    backend.build(X, "euclidean")
    for k in (1, 5, 30):
        positions, distances = exact_top_k(backend, X, np.arange(len(X)), rows, k, "euclidean")
        expected_positions, expected_distances = brute_force(X[rows], X, k)
        np.testing.assert_array_equal(positions, expected_positions)
        np.testing.assert_array_equal(distances, expected_distances)


@pytest.mark.parametrize("metric", ["cosine", "inner_product"])
def test_self_search_of_other_metrics_equals_searching_the_rows(monkeypatch, metric):
    """Cosine and inner product score own rows as queries alike (scale -1, no bias)."""
    monkeypatch.setattr(gemm_module, "REFERENCE_TILE", 40)
    monkeypatch.setattr(gemm_module, "QUERY_BLOCK", 16)
    monkeypatch.setattr(gemm_module, "PAIR_TILE", 24)
    monkeypatch.setattr(gemm_module, "OWN_GROUP", 40)
    X = RNG.normal(size=(400, 6)).astype(np.float32)
    backend = GemmBackend(clustered=False)
    backend.build(X, metric)
    keys = np.arange(len(X))
    own = exact_top_k(backend, X, keys, slice(100, 300), 7, metric)
    searched = exact_top_k(backend, X, keys, X[100:300], 7, metric)
    np.testing.assert_array_equal(own[0], searched[0])
    np.testing.assert_array_equal(own[1], searched[1])


@pytest.mark.parametrize("k", [1, 10])
def test_clustered_search_skips_work_and_equals_brute_force(monkeypatch, k):
    """A mixture of 30 clusters: chosen automatically, scores far fewer pairs than brute force, same answer (ties)."""
    monkeypatch.setattr(gemm_module, "QUERY_BLOCK", 128)
    monkeypatch.setattr(clustered_module, "MIN_ROWS", 1000)
    X = mixture(3000, 16, 30)
    backend = GemmBackend()
    backend.build(X, "euclidean")
    assert backend.clustered
    # the candidate search the re-rank asks for first: most pairs skipped (brute force scores all n^2)
    backend.search(X, k + EXACT_MARGIN)
    assert backend.pairs_scored < 0.2 * len(X) ** 2
    positions, distances = search(backend, X, X, k)
    expected_positions, expected_distances = brute_force(X, X, k)
    np.testing.assert_array_equal(positions, expected_positions)
    np.testing.assert_array_equal(distances, expected_distances)
    # queries that are not reference rows (between clusters too), two threads
    Q = np.concatenate([mixture(300, 16, 30, seed=1), (X[:100] + X[1000:1100]) / 2])
    with threadpool_limits(2, user_api="blas"):
        positions, distances = search(backend, X, Q, k)
    expected_positions, expected_distances = brute_force(Q, X, k)
    np.testing.assert_array_equal(positions, expected_positions)
    np.testing.assert_allclose(distances, expected_distances, rtol=1e-12)


def test_uniform_data_stays_brute_force_and_equals_numpy(monkeypatch):
    """Uniform random data cannot be pruned: build() tries, falls back, and the answer is brute force's."""
    monkeypatch.setattr(clustered_module, "MIN_ROWS", 1000)
    X = RNG.random((3000, 32), dtype=np.float32)
    backend = GemmBackend()
    backend.build(X, "euclidean")
    assert not backend.clustered
    positions, distances = search(backend, X, X[:300], 10)
    assert backend.pairs_scored >= 300 * len(X)
    expected_positions, expected_distances = brute_force(X[:300], X, 10)
    np.testing.assert_array_equal(positions, expected_positions)
    np.testing.assert_allclose(distances, expected_distances, rtol=1e-12)


def test_clustered_bounds_hold_far_from_the_origin(monkeypatch):
    """Clusters far from the origin (large norms, large float32 rounding): still exact."""
    monkeypatch.setattr(clustered_module, "MIN_ROWS", 1000)
    X = mixture(3000, 8, 20, spread=3) + np.float32(20000)
    backend = GemmBackend()
    backend.build(X, "euclidean")
    assert backend.clustered
    positions, distances = search(backend, X, X[:400], 5)
    expected_positions, expected_distances = brute_force(X[:400], X, 5)
    np.testing.assert_array_equal(positions, expected_positions)
    np.testing.assert_array_equal(distances, expected_distances)


@pytest.mark.slow  # about 5 s on a quiet machine, 30 s on a loaded one
def test_kernel_benchmark_quick(tmp_path):
    """``benchmarks/kernel.py --quick`` runs end to end and writes its tables (timings are never asserted)."""
    script = Path(__file__).resolve().parent.parent / "benchmarks" / "kernel.py"
    out = tmp_path / "kernel.md"
    proc = subprocess.run(
        [sys.executable, str(script), "--quick", "--out", str(out)], capture_output=True, text=True, timeout=300
    )
    assert proc.returncode == 0, proc.stderr[-4000:]
    text = out.read_text()
    for heading in ("## numpy SGEMM", "## All pairs, top k", "## Clustered exact search against brute force"):
        assert heading in text
    assert "DIFFERENT" not in text  # the clustered and brute-force searches found the same neighbours


def test_pickled_backend_ships_the_rows_once_and_searches_alike():
    """The broadcast pickles the reference with the backend: the bias-augmented copy is not in the pickle."""
    X = RNG.random((2000, 16), dtype=np.float32)
    backend = GemmBackend()
    backend.build(X, "euclidean")
    before = backend.search(X[:50], 5)
    payload = pickle.dumps((X, backend))
    assert len(payload) < 1.2 * X.nbytes  # X once (shared with the backend), no (n, d + 1) copy
    _, loaded = pickle.loads(payload)
    after = loaded.search(X[:50], 5)
    np.testing.assert_array_equal(before[1], after[1])
    np.testing.assert_array_equal(before[0], after[0])


def _collect(result) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    table = result.toArrow()
    table = table.take(np.argsort(table.column("id").to_numpy(), kind="stable"))
    return tuple(np.array(table.column(name).to_pylist()) for name in ("id", "neighbor_ids", "distances"))


def test_all_neighbors_with_the_clustered_search_in_both_modes_equals_brute_force(spark):
    """Spark, broadcast (built on the driver, shipped) and sharded (built per shard in the tasks): exact, ties too."""
    X = mixture(1500, 8, 20)
    n, width = X.shape
    features = pa.ListArray.from_arrays(pa.array(np.arange(n + 1) * width, type=pa.int32()), pa.array(X.ravel()))
    df = spark.createDataFrame(pa.table({"id": pa.array(np.arange(n) * 3 + 1), "features": features})).repartition(3)
    expected = _collect(all_neighbors(df, 6, backend="sklearn"))
    assert (expected[2][:, 0] == 0).sum() >= 10  # the duplicates: ties at distance 0
    for shards in (None, 2):
        got = _collect(all_neighbors(df, 6, backend=GemmBackend(clustered=True), shards=shards))
        for a, b in zip(got, expected):
            np.testing.assert_array_equal(a, b)


@pytest.mark.parametrize("teams", [1, 2, 5, 8])
def test_round_robin_plays_every_pair_once_and_nobody_twice_a_round(teams):
    rounds = gemm_module._rounds(teams)
    played = [match for matches in rounds for match in matches]
    assert sorted(played) == [(i, j) for i in range(teams) for j in range(i + 1, teams)]
    assert all(len({t for match in matches for t in match}) == 2 * len(matches) for matches in rounds)


@pytest.mark.parametrize("n", [1, 3, 17])
def test_keep_smallest_merges_tiles_by_score_then_position(n):
    """The compiled selection against a sort: tied integer scores, tiles narrower than ``n``, a subset of
    queries per tile, NaN scores never kept, empty slots ``inf`` / ``-1``."""
    rng = np.random.default_rng(n)
    scores = rng.integers(0, 6, size=(30, 400)).astype(np.float32)
    scores[3, ::7] = np.nan
    V = np.full((30, n), np.inf, dtype=np.float32)
    P = np.full((30, n), -1, dtype=np.int64)
    seen = np.zeros(scores.shape, dtype=bool)
    offset = 0
    for width in [2, 70, 1, 200, 127]:
        rows = np.flatnonzero(rng.random(30) < 0.7).astype(np.int64)
        tile = np.zeros((rows.size, width + 5), dtype=np.float32)  # wider than read: extra columns ignored
        tile[:, :width] = scores[rows, offset : offset + width]
        tile[:, width:] = -1
        select_module.keep_smallest(tile, width, offset, rows, V, P)
        seen[rows, offset : offset + width] = True
        offset += width
    for row in range(30):
        position = np.flatnonzero(seen[row] & ~np.isnan(scores[row]))
        order = position[np.lexsort((position, scores[row, position]))][:n]
        expected = np.full(n, -1)
        expected[: order.size] = order
        np.testing.assert_array_equal(P[row], expected)
        np.testing.assert_array_equal(V[row], np.where(expected >= 0, scores[row, np.maximum(expected, 0)], np.inf))


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_compiled_ranking_equals_numpy_bit_for_bit(dtype):
    """The compiled euclidean re-rank against numpy's pair-by-pair distances (ordered sums) and ``lexsort``: the
    same bits and the same order, ties by distance (duplicated rows, small integers) broken by the larger-first
    keys given here, repeated candidates kept in place (a stable sort)."""
    rng = np.random.default_rng(3)
    R = rng.integers(0, 3, size=(300, 9)).astype(dtype)
    R[100:120] = R[0]
    R[200] = rng.random(9) * 1e-3  # not small integers: rounding matters
    Q = np.concatenate([np.repeat(R[:1], 40, axis=0), rng.random((40, 9)).astype(dtype)])
    keys = np.arange(300, dtype=np.int64)[::-1].copy()
    candidates = rng.integers(0, 300, size=(80, 24))
    candidates[:, :3] = [0, 100, 101]
    got = rerank_module._ranked(Q, R, keys, candidates, "euclidean", 10)
    exact = rerank_module.paired_distances(Q, R, candidates, "euclidean")
    order = np.lexsort((keys[candidates], exact), axis=-1)[:, :10]
    np.testing.assert_array_equal(got[0], np.take_along_axis(candidates, order, axis=1))
    np.testing.assert_array_equal(got[1], np.take_along_axis(exact, order, axis=1))
    assert (got[1][:40, :3] == 0).all() and (got[0][:40, 0] > 100).all()  # ties at 0: a later row, larger key, first
