"""Sharded mode's routing (no Spark): a query is sent to every shard that holds one of its exact neighbours, ties and
rows at ``max_distance`` included, and to few shards on clustered data."""

from __future__ import annotations

import numpy as np
import pyarrow as pa
import pytest

from sklspark._features import FeatureSpec
from sklspark.neighbors._names import ALONE, AS_QUERY, AS_REFERENCE, BLOCK, POSITION, ROLE, SHARD
from sklspark.neighbors._shard_route import MAX_SHARE, fit_router, with_roles, with_targets


def _clustered(n, d, clusters, scale, offset=0.0, seed=0):
    rng = np.random.default_rng(seed)
    centres = rng.normal(scale=scale, size=(clusters, d)) + offset
    return (centres[rng.integers(0, clusters, size=n)] + rng.normal(size=(n, d))).astype(np.float32)


def _grid(n, seed=1):
    """Integer coordinates: exact duplicates (distance 0) and many equal distances."""
    return np.random.default_rng(seed).integers(0, 5, size=(n, 3)).astype(np.float64)


DATA = {
    "clusters": lambda: _clustered(2000, 16, 20, 10.0),
    # far from the origin: |x|^2 is about 10^8 times the squared distances, the expansion's rounding is large
    "clusters far from the origin": lambda: _clustered(2000, 8, 12, 5.0, offset=3e3),
    "grid with duplicates and ties": lambda: _grid(600),
}


def _missed(R, Q, router, n, cap=np.inf):
    """Queries of ``Q`` with a reference row of ``R`` within their ``n``-th distance (or ``cap``) in a shard they do
    not search, by exact float64 distances."""
    R64, Q64 = R.astype(np.float64), Q.astype(np.float64)
    D = np.concatenate([np.sqrt(((q[:, None, :] - R64[None]) ** 2).sum(axis=-1)) for q in np.array_split(Q64, 20)])
    radius = np.minimum(np.sort(D, axis=1)[:, n - 1], cap)
    home = router.home(R)
    searched = router.targets(Q)
    needed = np.zeros_like(searched)
    for shard in range(router.shards):
        needed[:, shard] = (D[:, home == shard] <= radius[:, None]).any(axis=1)
    return np.flatnonzero((needed & ~searched).any(axis=1))


@pytest.mark.parametrize("data", DATA)
@pytest.mark.parametrize("shards", [2, 5])
@pytest.mark.parametrize("sample_size", [200, None])  # a sample of some rows, and of every row (radius = n-th distance)
def test_every_shard_holding_a_neighbour_is_searched(data, shards, sample_size):
    R = DATA[data]()
    sample = R if sample_size is None else R[np.random.default_rng(2).choice(len(R), sample_size, replace=False)]
    n = 11
    router = fit_router(sample, shards, n, np.inf)
    assert router is not None
    assert set(np.unique(router.home(R))) == set(range(shards))  # every shard has rows
    assert _missed(R, R, router, n).size == 0  # all neighbours: the reference's own rows as queries
    queries = R[:300] + np.random.default_rng(3).normal(scale=0.5, size=(300, R.shape[1]))
    assert _missed(R, queries, router, n).size == 0  # other points
    assert router.targets(queries)[np.arange(300), router.home(queries)].all()  # the home shard always


@pytest.mark.parametrize("cap", [0.0, 1.0])
def test_max_distance_caps_the_radius_and_keeps_rows_at_it(cap):
    """With max_distance, a shard is searched if it holds a row within min(n-th distance, max_distance): rows at
    exactly the cap (duplicates at 0, grid points at 1) are in searched shards."""
    R = _grid(600)
    router = fit_router(R, 4, 11, cap)
    assert router is not None
    assert _missed(R, R, router, 11, cap).size == 0
    uncapped = fit_router(R, 4, 11, np.inf)
    assert uncapped is not None
    if cap == 0.0:  # only duplicates are neighbours: fewer shards than the 11 nearest need (grid points at 1)
        assert router.targets(R).mean() < uncapped.targets(R).mean()


def test_clustered_data_searches_few_shards_and_uniform_data_all():
    clustered = _clustered(4000, 16, 40, 10.0)
    router = fit_router(clustered[:2000], 4, 11, np.inf)
    assert router is not None and router.targets(clustered).sum(axis=1).mean() < 1.3
    uniform = np.random.default_rng(0).random((4000, 32))
    router = fit_router(uniform[:2000], 4, 11, np.inf)
    assert router is not None and router.targets(uniform).mean() > MAX_SHARE  # plan_routing then keeps positions


def test_too_few_distinct_rows_for_the_cells():
    assert fit_router(np.ones((500, 4)), 2, 3, np.inf) is None  # one distinct row
    assert fit_router(_grid(20), 4, 3, np.inf) is None  # 20 rows: 2 cells, fewer than two a shard


@pytest.mark.parametrize("blocks", [1, 3])
def test_with_roles_sends_each_row_to_its_groups_once(blocks):
    """A self-join's one routing pass: each row is a reference row of its home shard in every block, a query of the
    shards it searches in its own block, both roles in one row where they meet, marked ALONE where it searches its
    home shard only; an unreadable row is a reference row of shard 0 and searches every shard."""
    X = _clustered(400, 8, 10, 10.0)
    X[7] = np.nan
    router = fit_router(X[8:], 3, 5, np.inf)
    assert router is not None
    positions = np.arange(len(X)) * 5 + 2  # not contiguous, as monotonically_increasing_id's
    own_block = positions % blocks
    features = pa.array(list(X), pa.list_(pa.float32()))
    batch = pa.RecordBatch.from_pydict({POSITION: positions, "f": features, BLOCK: own_block})
    (out,) = with_roles(router, FeatureSpec("array", ("f",), np.dtype(np.float32)), blocks, iter([batch]))
    assert out.schema.names == [POSITION, "f", BLOCK, SHARD, ROLE]
    row = np.searchsorted(positions, out.column(POSITION).to_numpy())
    block, shard, role = (out.column(c).to_numpy() for c in (BLOCK, SHARD, ROLE))
    assert len(set(zip(row, block, shard))) == out.num_rows  # each (row, group) once
    home, searched = np.zeros(len(X), dtype=np.int64), np.ones((len(X), 3), dtype=bool)
    readable = np.arange(len(X)) != 7
    home[readable], searched[readable] = router.route(X[readable])
    as_reference, as_query = (role & AS_REFERENCE) > 0, (role & AS_QUERY) > 0
    assert ((role & ~(AS_REFERENCE | AS_QUERY | ALONE)) == 0).all() and (role > 0).all()
    alone = (role & ALONE) > 0  # a query searching its home shard only: as a query nowhere else
    assert (as_query[alone] & as_reference[alone]).all()
    assert np.array_equal(np.sort(row[alone]), np.flatnonzero(searched.sum(axis=1) == 1))
    assert 0 < alone.sum() < len(X)  # queries of one shard and of several
    assert (shard[as_reference] == home[row[as_reference]]).all()
    assert (np.bincount(row[as_reference], minlength=len(X)) == blocks).all()  # once per block
    assert (block[as_query] == own_block[row[as_query]]).all()
    queried = np.zeros_like(searched)
    queried[row[as_query], shard[as_query]] = True
    assert (queried == searched).all() and searched[7].all() and home[7] == 0
    assert out.num_rows == blocks * len(X) + searched.sum() - len(X)  # the home shard's query is a reference row
    assert np.array_equal(router.home(X[readable]), home[readable])  # route() agrees with home()


def test_with_targets_marks_the_queries_of_one_shard():
    """The queries of a join: once per shard searched, ALONE where that shard is the only one (their lists skip the
    merge); an unreadable query searches every shard."""
    X = _clustered(300, 8, 10, 10.0)
    router = fit_router(X, 3, 5, np.inf)
    assert router is not None
    Q = X + np.random.default_rng(4).normal(scale=0.5, size=X.shape).astype(np.float32)
    Q[3] = np.nan
    batch = pa.RecordBatch.from_pydict({"key": np.arange(len(Q)), "f": pa.array(list(Q), pa.list_(pa.float32()))})
    (out,) = with_targets(router, FeatureSpec("array", ("f",), np.dtype(np.float32)), iter([batch]))
    assert out.schema.names == ["key", "f", SHARD, ROLE]
    searched = np.ones((len(Q), 3), dtype=bool)
    readable = np.arange(len(Q)) != 3
    searched[readable] = router.targets(Q[readable])
    key, shard, role = (out.column(c).to_numpy() for c in ("key", SHARD, ROLE))
    assert sorted(zip(key, shard)) == [tuple(pair) for pair in np.argwhere(searched)]
    assert ((role & AS_QUERY) > 0).all()
    assert np.array_equal((role & ALONE) > 0, searched.sum(axis=1)[key] == 1)
    assert 0 < ((role & ALONE) > 0).sum() < len(out)  # queries of one shard and of several
