"""Sharded mode's routing: shards of nearby reference rows, each query sent only to the shards that can hold one of
its ``n`` nearest (dense rows, euclidean metric).

Without routing, reference row ``i`` goes to shard ``i mod S``: every shard holds every region of the data, so every
query must search all ``S`` shards (``S x |queries|`` rows shuffled and searched). With it
(``benchmarks/shard_routing.py`` measured the design before it was built):

1. The driver takes a sample of at most :data:`SAMPLE_ROWS` reference rows and fits k-means cells on it. The cells,
   in the order of their centres along the sample's first principal axis, are cut into ``S`` runs of about equal
   row counts: a shard is a run of nearby cells, and a reference row goes to the shard of its nearest centre.
2. A query ``q`` whose nearest centre is ``h`` is sent to the shards of the cells ``c`` with
   ``bound(q, c) <= r(q)``:

   * ``bound(q, c) = (|q - c|^2 - |q - h|^2) / (2 |c - h|)``: a row nearer ``c`` than ``h`` lies on ``c``'s side of
     their bisector, at least that far from ``q``;
   * ``r(q)``, the ``n``-th distance from ``q`` to the sampled rows of its cell ``h`` (of the whole sample if the
     cell has fewer than ``n``): they are reference rows, so ``q``'s ``n`` nearest in the whole reference are no
     farther (nor is a row tied with the ``n``-th), and with ``max_distance`` no neighbour is farther than it
     either.

   A shard left out holds no row within ``r(q)``, so it holds none of the query's neighbours: the search and the
   merge are unchanged, and so are the results, ties included. Its home shard is always searched.
3. Rounding: the distances are computed by the expansion ``|x|^2 - 2 x . y + |y|^2`` (float32 for the sample,
   float64 for the centres), whose error is below ``4 (d + 4) eps (|x|^2 + |y|^2)`` for ``d`` features (that
   covers a cast of float64 features to float32 too). The radius is raised by that error, the bound lowered by
   the error of its two distances and by the error with which a reference row within ``r(q)`` of ``q`` (so of
   norm at most ``|q| + r(q)``) may have been given a cell that is not its nearest, and the centres' separation
   raised by a relative ``1e-9``.

Rows that cannot be read (a missing or non-finite feature) keep today's behaviour: a reference row goes to shard 0, a
query to every shard, where the search reports or flags it as before.

On data without clusters (uniform points) a query's ball reaches every shard. The driver routes the sample's own rows
first: if they would search more than :data:`MAX_SHARE` of the shards on average, routing cannot pay and shards stay
by position.
"""

from __future__ import annotations

import logging
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

import numpy as np
import pyarrow as pa
import scipy.sparse as sp
from pyspark.sql import DataFrame
from pyspark.sql.types import ByteType, LongType, StructField, StructType
from sklearn.cluster import KMeans

from .._features import FeatureSpec
from .._inputs import batch_to_matrix, null_feature_rows
from ._checks import non_finite_rows
from ._names import ALONE, AS_QUERY, AS_REFERENCE, BLOCK, EUCLIDEAN, ROLE, SHARD
from ._plan import JoinPlan

_log = logging.getLogger("sklspark")

#: Most reference rows the driver samples for the cells and the radii.
SAMPLE_ROWS = 4096

#: Most bytes of the sample (float32), for wide rows.
SAMPLE_MAX_BYTES = 16 << 20

#: Cells per shard (at least :data:`MIN_CELLS`, at most one per :data:`SAMPLE_PER_CELL` sample rows).
CELLS_PER_SHARD = 16
MIN_CELLS = 64
SAMPLE_PER_CELL = 8

#: Largest share of the shards the sample's rows may search on average for routing to be used.
MAX_SHARE = 0.75

#: Queries whose radius is computed at once (float32 distances to at most ``SAMPLE_ROWS`` rows: 16 MiB).
QUERY_BLOCK = 1024

_RELATIVE = 1e-9


def _expansion_error(n_features: int, dtype: type) -> float:
    """The factor of ``|x|^2 + |y|^2`` bounding the error of ``|x|^2 - 2 x . y + |y|^2`` computed in ``dtype``."""
    return 4 * (n_features + 4) * float(np.finfo(dtype).eps)


@dataclass(frozen=True)
class Router:
    """Cells of the reference grouped into shards, and the sample that bounds each query's radius (picklable).

    Attributes
    ----------
    centres : ndarray of float64 of shape (n_cells, n_features)
    cell_shard : ndarray of int64 of shape (n_cells,)
    apart : ndarray of float64 of shape (n_cells, n_cells)
        The centres' pairwise distances, raised by a relative ``1e-9``.
    sample : ndarray of float32 of shape (n_sample, n_features)
        Reference rows.
    members : list of ndarray of int64
        The sample rows of each cell (their k-means labels: any subset of the sample bounds the radius).
    n : int
        Neighbours searched per query.
    shards : int
    cap : float
        ``max_distance`` (``inf`` without it): no neighbour is farther.
    """

    centres: np.ndarray
    cell_shard: np.ndarray
    apart: np.ndarray
    sample: np.ndarray
    members: list[np.ndarray]
    n: int
    shards: int
    cap: float

    def home(self, X: np.ndarray) -> np.ndarray:
        """The shard of each row's nearest centre."""
        return self.cell_shard[self._cells(X)[0].argmin(axis=1)]

    def targets(self, X: np.ndarray) -> np.ndarray:
        """``(rows, shards)``: whether each row's ``n`` nearest reference rows may lie in each shard."""
        return self.route(X)[1]

    def route(self, X: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """Each row's home shard (:meth:`home`), and :meth:`targets`: the shards it searches (its home among them)."""
        D, error, norms = self._cells(X)
        home = D.argmin(axis=1)
        radius = self._radii(X, home)
        rows = np.arange(len(X))
        # a reference row within the radius has a norm of at most |q| + r: its cell may be off by this much
        centre_norms = np.einsum("ij,ij->i", self.centres, self.centres)
        assigned = _expansion_error(X.shape[1], np.float64) * ((np.sqrt(norms) + radius) ** 2 + centre_norms.max())
        slack = 2 * error + 2 * assigned
        with np.errstate(divide="ignore", invalid="ignore"):
            bound = (D - D[rows, home][:, None] - slack[:, None]) / (2 * self.apart[home])
        bound[~(bound > 0)] = 0.0  # twin centres (0 apart), NaN and negative bounds exclude nothing
        bound[rows, home] = 0.0
        reached = bound <= radius[:, None]  # an infinite radius reaches every cell
        searched = np.zeros((len(X), self.shards), dtype=bool)
        for shard in range(self.shards):
            searched[:, shard] = reached[:, self.cell_shard == shard].any(axis=1)
        return self.cell_shard[home], searched

    def _cells(self, X: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """Squared distances to the centres (float64), each row's bound on their error, and its squared norm."""
        X64 = np.asarray(X, dtype=np.float64)
        norms = np.einsum("ij,ij->i", X64, X64)
        centre_norms = np.einsum("ij,ij->i", self.centres, self.centres)
        D = norms[:, None] - 2 * (X64 @ self.centres.T) + centre_norms[None]
        error = _expansion_error(X64.shape[1], np.float64) * (norms + centre_norms.max())
        return D, error, norms

    def _radii(self, X: np.ndarray, home: np.ndarray) -> np.ndarray:
        """Each row's ``n``-th distance to the sample rows of its nearest centre's cell (to the whole sample if the
        cell has fewer than ``n``), the rounding error added, capped by ``max_distance``.

        Any ``n`` reference rows bound the ``n``-th distance from above; those of the home cell are about as near as
        the whole sample's nearest, for a fraction of the work.
        """
        X32 = np.asarray(X, dtype=np.float32)
        radius = np.full(len(X), self.cap)
        if self.n > len(self.sample):
            return radius
        everywhere = np.arange(len(self.sample))
        for cell in np.unique(home):
            queries = np.flatnonzero(home == cell)
            rows = self.members[cell] if len(self.members[cell]) >= self.n else everywhere
            for start in range(0, len(queries), QUERY_BLOCK):
                block = queries[start : start + QUERY_BLOCK]
                radius[block] = np.minimum(self._nth_distance(X32[block], self.sample[rows]), self.cap)
        return radius

    def _nth_distance(self, Q: np.ndarray, S: np.ndarray) -> np.ndarray:
        """The ``n``-th distance from each row of ``Q`` to the rows of ``S`` (float32), raised by its rounding error."""
        norms = np.einsum("ij,ij->i", Q, Q)
        s_norms = np.einsum("ij,ij->i", S, S)
        D = norms[:, None] - 2 * (Q @ S.T) + s_norms[None]
        nth = np.partition(D, self.n - 1, axis=1)[:, self.n - 1].astype(np.float64)
        error = _expansion_error(Q.shape[1], np.float32) * (norms.astype(np.float64) + float(s_norms.max()))
        return np.sqrt(np.maximum(nth + error, 0.0)) * (1 + _RELATIVE)


def plan_routing(plan: JoinPlan, shards: int, n_reference: int, n_features: int) -> Router | None:
    """The router of a sharded join of dense euclidean rows (``n_reference`` of ``n_features`` features) into
    ``shards`` shards, or ``None`` when routing does not apply or cannot pay (module docstring): then shards stay
    by position. One Spark job (the sample)."""
    search = plan.search
    assert search.r_spec is not None and isinstance(plan.reference, DataFrame)  # sharded: a DataFrame reference
    if search.metric != EUCLIDEAN or shards < 2:
        return None
    sample = sample_rows(plan.reference, search.r_spec, n_reference, n_features)
    if sample is None:
        return None
    cap = np.inf if plan.max_distance is None else plan.max_distance * (1 + _RELATIVE)
    router = fit_router(sample, shards, search.n, cap)
    share = float(router.targets(router.sample).mean()) if router is not None else 1.0
    routed = router is not None and share <= MAX_SHARE
    _log.info(
        "%s: %s (%s)",
        plan.caller,
        "shards of nearby rows" if routed else "shards by position",
        f"{len(router.centres)} cells fitted on {len(router.sample)} sampled reference rows, whose rows would search "
        f"{share * shards:.2f} of {shards} shards each"
        if router is not None
        else f"too few distinct sampled reference rows for {shards} shards of cells",
    )
    return router if routed else None


def fit_router(sample: np.ndarray, shards: int, n: int, cap: float) -> Router | None:
    """A router over k-means cells of ``sample`` (finite reference rows), or ``None`` if there are too few distinct
    rows for at least two cells a shard."""
    sample = np.ascontiguousarray(sample, dtype=np.float32)
    cells = min(max(MIN_CELLS, CELLS_PER_SHARD * shards), len(sample) // SAMPLE_PER_CELL)
    if cells < 2 * shards or len(np.unique(sample, axis=0)) < cells:
        return None
    # fitted in float32 (any points serve as centres: the bounds are computed from them as given, in float64)
    kmeans = KMeans(cells, n_init=1, max_iter=20, random_state=0).fit(sample)
    centres = kmeans.cluster_centers_.astype(np.float64)
    apart = np.sqrt(((centres[:, None] - centres[None]) ** 2).sum(axis=-1)) * (1 + _RELATIVE)
    cell_shard = _shards_of_cells(sample, kmeans.labels_, centres, shards)
    members = [np.flatnonzero(kmeans.labels_ == cell) for cell in range(cells)]
    return Router(centres, cell_shard, apart, sample, members, n, shards, cap)


def _shards_of_cells(sample: np.ndarray, labels: np.ndarray, centres: np.ndarray, shards: int) -> np.ndarray:
    """Each cell's shard: the cells along the sample's first principal axis, cut into runs of equal row counts."""
    counts = np.bincount(labels, minlength=len(centres))
    mean = sample.mean(axis=0, dtype=np.float64)
    axis = np.linalg.svd(sample - mean, full_matrices=False)[2][0]
    order = np.argsort((centres - mean) @ axis, kind="stable")
    middle = (np.cumsum(counts[order]) - counts[order] / 2) / counts.sum()  # each cell's middle row, as a share
    shard = np.empty(len(centres), dtype=np.int64)
    shard[order] = np.minimum(middle * shards, shards - 1).astype(np.int64)
    return shard


def sample_rows(reference: DataFrame, spec: FeatureSpec, n_reference: int, n_features: int) -> np.ndarray | None:
    """At most :data:`SAMPLE_ROWS` readable reference rows of ``n_features`` features, and at most
    :data:`SAMPLE_MAX_BYTES` of them as float32 (the job collects no more), as a dense matrix, taken by one Spark
    job; ``None`` if there are none or their features are sparse vectors (routing is for dense rows)."""
    limit = min(SAMPLE_ROWS, SAMPLE_MAX_BYTES // (4 * max(n_features, 1)))
    fraction = min(1.0, 1.5 * limit / max(n_reference, 1))
    table = reference.select(*spec.columns).sample(fraction=fraction, seed=0).limit(limit).toArrow()
    if table.num_rows == 0 or n_features == 0:
        return None
    X, _ = _routable(pa.concat_batches(table.to_batches()), spec)
    return None if sp.issparse(X) else np.asarray(X)


def _routable(batch: pa.RecordBatch, spec: FeatureSpec) -> tuple[Any, np.ndarray]:
    """The batch's rows without a missing or non-finite feature, as a matrix (CSR for sparse vectors), and their
    indexes in the batch."""
    missing = null_feature_rows(batch, spec)
    rows = np.arange(batch.num_rows) if missing is None else np.flatnonzero(~missing)
    X = batch_to_matrix(batch if missing is None else batch.take(pa.array(rows)), spec, 0, accept_sparse=True)
    bad = non_finite_rows(X)
    if bad.size:
        kept = np.setdiff1d(np.arange(X.shape[0]), bad)
        X, rows = X[kept], rows[kept]
    return X, rows


def _dense(X: Any) -> np.ndarray:
    return X.toarray() if sp.issparse(X) else np.asarray(X)


def with_home(router: Router, spec: FeatureSpec, batches: Iterator[pa.RecordBatch]) -> Iterator[pa.RecordBatch]:
    """``mapInArrow`` over the reference: every row with its :data:`SHARD` (:meth:`Router.home`; 0 if it cannot be
    read)."""
    for batch in batches:
        shard = np.zeros(batch.num_rows, dtype=np.int64)
        X, rows = _routable(batch, spec)
        if len(rows):
            shard[rows] = router.home(_dense(X))
        yield batch.append_column(SHARD, pa.array(shard))


def with_targets(router: Router, spec: FeatureSpec, batches: Iterator[pa.RecordBatch]) -> Iterator[pa.RecordBatch]:
    """``mapInArrow`` over the queries: every row once per :data:`SHARD` it searches (every shard if it cannot be
    read), with its :data:`ROLE` there: :data:`AS_QUERY`, and :data:`ALONE` if that is the one shard it searches."""
    for batch in batches:
        searched = np.ones((batch.num_rows, router.shards), dtype=bool)
        X, rows = _routable(batch, spec)
        if len(rows):
            searched[rows] = router.targets(_dense(X))
        row, shard = np.nonzero(searched)
        yield _placed(batch, row, {SHARD: shard, ROLE: (AS_QUERY | _alone(searched))[row]})


def with_roles(
    router: Router, spec: FeatureSpec, blocks: int, batches: Iterator[pa.RecordBatch]
) -> Iterator[pa.RecordBatch]:
    """``mapInArrow`` over the rows of a self-join, which are both its reference and its queries (each with its query
    :data:`BLOCK`, of ``blocks``): every row once per (:data:`BLOCK`, :data:`SHARD`) group it belongs to, with its
    :data:`ROLE` there.

    As a reference row, a row belongs to its home shard (shard 0 if it cannot be read) in every query block; as a
    query, to the shards it searches (every shard if it cannot be read) in its own block, :data:`ALONE` if that is its
    home shard only. One pass routes both sides, and a row that is both in a group is sent there once: ``blocks``
    rows for the reference, and one more for each other shard it searches.
    """
    for batch in batches:
        n_rows = batch.num_rows
        home = np.zeros(n_rows, dtype=np.int64)
        searched = np.ones((n_rows, router.shards), dtype=bool)
        X, rows = _routable(batch, spec)
        if len(rows):
            home[rows], searched[rows] = router.route(_dense(X))
        own_block = batch.column(BLOCK).to_numpy()
        # as a reference row, in every block (and a query there too in its own block, if it searches its home)
        referenced = np.repeat(np.arange(n_rows), blocks)
        block = np.tile(np.arange(blocks, dtype=np.int64), n_rows)
        queried = (block == own_block[referenced]) & searched[referenced, home[referenced]]
        role = np.where(queried, AS_REFERENCE | AS_QUERY | _alone(searched)[referenced], AS_REFERENCE)
        # as a query only: the other shards it searches, in its own block
        searched[np.arange(n_rows), home] = False
        visitor, shard = np.nonzero(searched)
        yield _placed(
            batch,
            np.concatenate([referenced, visitor]),
            {
                BLOCK: np.concatenate([block, own_block[visitor]]),
                SHARD: np.concatenate([home[referenced], shard]),
                ROLE: np.concatenate([role, np.full(len(visitor), AS_QUERY)]),
            },
        )


def _alone(searched: np.ndarray) -> np.ndarray:
    """:data:`ALONE` for each row of ``searched`` (rows x shards) that searches one shard only, whose list there is
    final; else 0."""
    return np.where(searched.sum(axis=1) == 1, ALONE, 0)


def _placed(batch: pa.RecordBatch, row: np.ndarray, placement: dict[str, np.ndarray]) -> pa.RecordBatch:
    """The rows ``row`` of ``batch`` (repeated as often as they appear) with the ``placement`` columns set or added
    (:data:`BLOCK` and :data:`SHARD` as longs, :data:`ROLE` as bytes)."""
    columns = dict(zip(batch.schema.names, batch.take(pa.array(row)).columns))
    for name, values in placement.items():
        columns[name] = pa.array(values.astype(np.int8 if name == ROLE else np.int64))
    return pa.RecordBatch.from_arrays(list(columns.values()), names=list(columns))


def routed_schema(schema: StructType) -> StructType:
    """The reference's schema with its :data:`SHARD` (``long``) added (:func:`with_home`)."""
    return StructType([*schema.fields, StructField(SHARD, LongType())])


def roles_schema(schema: StructType) -> StructType:
    """A schema with its rows' :data:`SHARD` (``long``) and :data:`ROLE` (``byte``) added (:func:`with_targets`,
    :func:`with_roles`)."""
    return StructType([*schema.fields, StructField(SHARD, LongType()), StructField(ROLE, ByteType())])
