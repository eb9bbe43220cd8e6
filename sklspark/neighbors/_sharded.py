"""Sharded exact mode: the reference is split into shards that never leave the executors.

Plan
----
1. Every reference row gets its global position ``monotonically_increasing_id()`` (partition index,
   then row within the partition, the partition sorted by :func:`~sklspark.neighbors._plan.stable_order`:
   the order in which broadcast mode reads the reference too). Every query row gets a key of its own the
   same way and block ``key mod B``. The sort matters when Spark retries a task (a lost executor): a
   retried task may read its shuffled input in another order, and positions taken in arrival order
   would then differ between attempts, mixing up queries and shards.
2. Shards: of nearby rows where :func:`~sklspark.neighbors._shard_route.plan_routing` finds it pays (dense
   euclidean rows with clusters): a reference row goes to the shard of its nearest k-means cell, a query
   only to the shards that can hold one of its ``n`` nearest. Else by position: shard ``position mod S``,
   every query to every shard. Queries are replicated once per shard they search and reference rows once
   per query block, and both are co-grouped on ``(block, shard)``: shuffle volume at most
   ``S x |queries| + B x |reference|``. No row of the reference is gathered on the driver. In a self-join
   (``all_neighbors``) the rows are both sides: they are read and routed once, as one frame, a row is sent
   once to each group it is in with its roles there (reference row, query, or both), and grouped by one
   shuffle; in shards of nearby rows on clustered data that is about ``B x |reference|`` rows.
3. Each of the ``B x S`` groups (one task at a time per group) builds the backend on its shard and
   computes the exact top ``n`` of every query of its block within the shard
   (:func:`~sklspark.neighbors._rerank.exact_top_k`), as candidates ``(distance, position, id)``.
4. The partial lists of a query (one per shard it searched) are merged by a second shuffle on the query
   key (at most ``S x n`` candidates per query): sorted by ``(distance, position)`` and cut to ``n``, which
   is exactly the top ``n`` over the whole reference under the tie rule
   (:mod:`~sklspark.neighbors._shard_merge`: many queries per Python call, one sort of all their candidates).
   In shards of nearby rows, the queries that search one shard alone skip it (:func:`_alone_skip_merge`).

Memory bound
------------
``S`` is chosen so that a shard's features take at most :data:`SHARD_MAX_BYTES`, and ``B`` so that a
query block's take at most :data:`QUERY_BLOCK_MAX_BYTES` (raised if needed so that ``B x S`` reaches
the default parallelism). A task holds one block and one shard, each as an Arrow table and as a
matrix, plus the backend's index (about one more shard for flat indexes) and per-chunk scratch of
``chunk_size`` rows: about ``2 x (QUERY_BLOCK_MAX_BYTES + SHARD_MAX_BYTES) + index`` in all.
``SparseVector`` features count their stored entries (12 bytes each, as CSR), not their columns, and
stay CSR for backends that take it (``gemm``, ``sklearn``), so the bound holds for 2^18-column vectors too.
"""

from __future__ import annotations

import dataclasses
import functools
import logging
import math
from collections.abc import Callable
from typing import Any, NamedTuple

import numpy as np
import pyarrow as pa
import scipy.sparse as sp
from pyspark.sql import Column, DataFrame
from pyspark.sql import functions as F
from pyspark.sql.pandas.types import to_arrow_schema
from pyspark.sql.types import (
    LongType,
    StringType,
    StructField,
    StructType,
)

from .._features import FeatureSpec
from .._inputs import batch_to_matrix, iter_batch_chunks
from .._partitions import spread_tasks
from .._runner import apply_chunks
from .._session import default_parallelism
from ._checks import check_unique_ids, non_finite_message, non_finite_rows
from ._names import ALONE, AS_QUERY, AS_REFERENCE, BLOCK, NEIGHBOR_IDS, POSITION, ROLE, SHARD
from ._plan import JoinPlan, SearchSpec, stable_order
from ._rerank import exact_top_k
from ._shard_index import LoadedShard, ShardFiles, load_shard
from ._shard_merge import QUERY, merge_groups, merged, partial_schema
from ._shard_route import Router, plan_routing, roles_schema, routed_schema, with_home, with_roles, with_targets
from ._shard_trial import shard_engine

_log = logging.getLogger("sklspark")

#: Most bytes of reference features in one shard (when ``shards`` is not given).
SHARD_MAX_BYTES = 128 << 20

#: Most bytes of query features in one query block.
QUERY_BLOCK_MAX_BYTES = 64 << 20

#: The partial top lists of a join's queries, from ``tops(alone)``: of those that search one shard alone (``True``),
#: the others (``False``), or all (``None``), as :func:`_asked` picks them.
Tops = Callable[[bool | None], DataFrame]


def count_blocks(n_rows: int, row_bytes: int, max_bytes: int) -> int:
    """Fewest blocks of at most ``max_bytes`` (at least 1, at most one per row)."""
    return max(1, min(max(n_rows, 1), math.ceil(n_rows * row_bytes / max_bytes)))


def _width_and_bytes(spec: FeatureSpec) -> tuple[Column, Column]:
    """Per row: its number of features, and the bytes of its stored features (a sparse row's stored entries only).

    A vector's size and stored values are read from its JSON form (Spark SQL has no vector functions,
    and ``vector_to_array`` would make a 2^18-column sparse vector a 2 MiB array); a sparse entry is
    counted as a float64 value and an int32 column index, as in a CSR matrix.
    """
    itemsize = spec.dtype.itemsize
    if spec.layout == "columns":
        return F.lit(len(spec.columns)), F.lit(len(spec.columns) * itemsize)
    column = F.col(spec.columns[0])
    if spec.layout != "vector":
        return F.size(column), F.size(column) * itemsize
    as_json = F.to_json(F.struct(column.alias("v")))
    stored = F.json_array_length(F.get_json_object(as_json, "$.v.values"))
    sparse = F.get_json_object(as_json, "$.v.type") == "0"
    width = F.coalesce(F.get_json_object(as_json, "$.v.size").cast("int"), stored)  # dense vectors have no size
    return width, stored * F.when(sparse, itemsize + 4).otherwise(itemsize)


def _shape_stats(spec: FeatureSpec) -> list[Column]:
    """Smallest and largest row width, and average stored bytes per row (one aggregate pass)."""
    width, stored = _width_and_bytes(spec)
    return [F.min(width), F.max(width), F.coalesce(F.avg(stored), F.lit(0.0))]


class ShardLayout(NamedTuple):
    """How a sharded join is split: reference shards, query blocks, both sides' row counts and the features a row
    (to size the routing's sample and the merge)."""

    shards: int
    blocks: int
    n_queries: int
    n_reference: int
    n_features: int


def shard_layout(plan: JoinPlan) -> ShardLayout | None:
    """Check the reference's IDs and both sides' widths with one aggregate job each (one in all for a self-join), and
    size the join:
    a :class:`ShardLayout`, or ``None`` when ``k`` does not fit the reference but there are no queries.
    """
    search, reference = plan.search, plan.reference
    assert isinstance(reference, DataFrame) and search.r_spec is not None  # sharded: a DataFrame reference
    id_col = search.id_col
    stats = reference.agg(F.count(F.lit(1)), F.count(id_col), F.count_distinct(id_col), *_shape_stats(search.r_spec))
    first = stats.first()
    assert first is not None  # an aggregate without grouping has one row
    n_ref, n_ids, n_distinct, width, max_width, row_bytes = first
    check_unique_ids(
        n_ref,
        n_ids,
        n_distinct,
        lambda: [r[0] for r in reference.groupBy(id_col).count().where("count > 1").limit(5).collect()],
    )
    if plan.self_join:  # all_neighbors: the same rows, no second job
        n_queries, q_width, q_max_width, q_row_bytes = n_ref, width, max_width, row_bytes
    else:
        q_first = plan.queries.agg(F.count(F.lit(1)), *_shape_stats(search.q_spec)).first()
        assert q_first is not None
        n_queries, q_width, q_max_width, q_row_bytes = q_first
    if not plan.has_work(n_ref, lambda: n_queries == 0):
        return None
    if width != max_width:
        raise ValueError(f"the reference's {search.r_spec.describe()} has rows of {width} and of {max_width} features")
    if n_queries and (q_width, q_max_width) != (width, width):
        raise ValueError(
            f"the queries' {search.q_spec.describe()} has rows of {q_width} to {q_max_width} features, but the "
            f"reference's has {width}"
        )
    shards = plan.shards or count_blocks(n_ref, row_bytes, SHARD_MAX_BYTES)  # by the bytes stored, not the width
    blocks = count_blocks(n_queries, q_row_bytes, QUERY_BLOCK_MAX_BYTES)
    # a few (block, shard) groups per core, whatever the inputs' partitioning: every core searches
    tasks = spread_tasks(plan.queries)
    spread = max(blocks, min(max(n_queries, 1), -(-tasks // shards)))
    _log.info(
        "%s: %d shard(s) (%s; %d reference rows of %.0f bytes, at most %d bytes a shard) x %d query block(s) "
        "(%d by size: %d queries of %.0f bytes, at most %d bytes a block; raised to reach %d tasks for %d cores)",
        plan.caller,
        shards,
        "shards= given" if plan.shards else "by size",
        n_ref,
        row_bytes,
        SHARD_MAX_BYTES,
        spread,
        blocks,
        n_queries,
        q_row_bytes,
        QUERY_BLOCK_MAX_BYTES,
        tasks,
        default_parallelism(plan.queries),
    )
    return ShardLayout(shards, spread, n_queries, n_ref, width)


def _checked_matrix(
    batch: pa.RecordBatch, spec: FeatureSpec, first_row: int, search: SearchSpec
) -> tuple[np.ndarray | sp.csr_matrix, np.ndarray]:
    """The batch's feature matrix (CSR if it has sparse vectors and the backend takes them) and its rows with
    NaN or infinite features; with ``on_error="raise"`` a ``ValueError`` naming the first such row and its ID.

    Every backend gets finite rows: scikit-learn refuses others without naming the row, FAISS and
    Annoy would return meaningless neighbours.
    """
    X = batch_to_matrix(batch, spec, first_row, accept_sparse=search.engine.sparse)
    bad = non_finite_rows(X)
    if bad.size and search.on_error == "raise":
        row = int(bad[0])
        raise ValueError(non_finite_message(first_row + row, search.id_col, batch.column(search.id_col)[row].as_py()))
    return X, bad


def _partial_top(search: SearchSpec, queries: pa.Table, shard: pa.Table, schema: pa.Schema) -> pa.Table:
    """One (query block, shard) group: every query's exact top ``n`` within the shard, indexed here."""
    if queries.num_rows == 0:
        return schema.empty_table()
    built = _build_shard(search, shard, queries.num_rows) if shard.num_rows else _no_rows(schema)
    return _search_block(search, queries, built, schema)


def _no_rows(schema: pa.Schema) -> LoadedShard:
    """A shard without rows (none sent there, or all left out with ``on_error="null"``): its queries get no
    candidates from it, and still their row, so that no query is missing from the merge."""
    id_type = schema.field(NEIGHBOR_IDS).type.value_type
    return LoadedShard(None, np.empty((0, 0)), np.empty(0, np.int64), pa.array([], id_type))


def _build_shard(search: SearchSpec, shard: pa.Table, n_queries: int = 0) -> LoadedShard:
    """The shard's rows indexed by a fresh backend (not built if no row is left), with their keys and IDs.

    The backend is the plan's, or for ``gemm`` searched by ``n_queries`` queries a k-means partition tried on
    the first of them (:func:`~sklspark.neighbors._shard_trial.shard_engine`).

    The build runs through the core's chunk runner (:func:`~sklspark._runner.apply_chunks`): threads
    capped, and a bad row raises a ``ChunkError`` naming the side, the shard, and the row's position and
    ID; with ``on_error="null"`` a bad reference row is left out.
    """
    reference = pa.concat_batches(shard.to_batches())
    backend = shard_engine(search.engine, search.metric, reference.num_rows, n_queries, search.reference_rows)
    name, where = type(search.engine).__name__, f"shard {shard.column(SHARD)[0].as_py()}"
    r_spec = search.r_spec
    assert r_spec is not None  # sharded: a DataFrame reference

    def shard_chunk() -> Any:  # one chunk, made lazily: the runner reports a bad reference row as a bad query row
        R, bad = _checked_matrix(reference, r_spec, 0, search)
        kept = np.setdiff1d(np.arange(R.shape[0]), bad)
        yield 0, kept, (R[kept] if bad.size else R)

    def build(R: Any) -> Any:
        if R.shape[0]:
            backend.build(R, search.metric)
        return R

    ((_, kept, R, _),) = apply_chunks(build, f"{name}.build on the reference's {where}", shard_chunk())
    keys = reference.column(POSITION).to_numpy()[kept]
    ids = reference.column(search.id_col).take(pa.array(kept, type=pa.int64()))
    return LoadedShard(backend if R.shape[0] else None, R, keys, ids)


def _search_block(search: SearchSpec, queries: pa.Table, shard: LoadedShard, schema: pa.Schema) -> pa.Table:
    """Every query's exact top ``n`` within a built shard (:func:`~sklspark.neighbors._rerank.exact_top_k`).

    The queries are searched through the chunk runner: a bad query row raises a ``ChunkError`` naming
    the block and the row's position and ID, or, with ``on_error="null"``, gets no candidates, flagged.
    """
    backend, R, keys, ids = shard
    n = min(search.n, R.shape[0])

    def top(Q: Any) -> tuple[np.ndarray, np.ndarray]:
        if n == 0 or Q.shape[0] == 0:
            return np.empty((Q.shape[0], 0), dtype=np.int64), np.empty((Q.shape[0], 0))
        assert backend is not None  # built: the shard has rows
        return exact_top_k(backend, R, keys, Q, n, search.metric)

    def query_chunks() -> Any:
        for start, batch in iter_batch_chunks(queries.to_batches(), search.chunk_size):
            Q, bad = _checked_matrix(batch, search.q_spec, start, search)
            yield start, batch, bad, (Q[np.setdiff1d(np.arange(Q.shape[0]), bad)] if bad.size else Q)

    where = f"block {queries.column(BLOCK)[0].as_py()} in shard {queries.column(SHARD)[0].as_py()}"
    label = f"{type(search.engine).__name__}.search of the queries' {where}"
    out = [
        _candidates(batch, bad, found, (keys, ids), schema)
        for _, batch, bad, _, found in apply_chunks(top, label, query_chunks())
    ]
    return pa.Table.from_batches(out, schema=schema)


def _write_shard(search: SearchSpec, files: ShardFiles, shard: pa.Table) -> pa.Table:
    """The build task of a prebuilt shard: index its rows once and write them (:meth:`ShardFiles.write`).

    Returns one row: the shard and the stem of its files (null if no row of the shard is left).
    """
    built = _build_shard(search, shard)
    stem = files.write(shard.column(SHARD)[0].as_py(), built) if built.backend is not None else None
    return pa.table(
        {SHARD: pa.array([shard.column(SHARD)[0].as_py()], pa.int64()), "stem": pa.array([stem], pa.string())}
    )


def _search_prebuilt(
    search: SearchSpec, files: ShardFiles, stems: dict[int, str | None], queries: pa.Table, schema: pa.Schema
) -> pa.Table:
    """One (shard, query block) group of a prebuilt join: the shard loaded from its files (once per process)."""
    if queries.num_rows == 0:
        return schema.empty_table()
    stem = stems.get(queries.column(SHARD)[0].as_py())  # None: no row sent to the shard, or every one left out
    loaded = _no_rows(schema) if stem is None else load_shard(files, stem)
    return _search_block(search, queries, loaded, schema)


def _candidates(
    batch: pa.RecordBatch, bad: np.ndarray, found: tuple[np.ndarray, np.ndarray], shard: tuple, schema: pa.Schema
) -> pa.RecordBatch:
    """One chunk's output rows (:func:`~sklspark.neighbors._shard_merge.partial_schema`): each query's candidates
    within the shard as lists of IDs, distances and positions (empty for a bad row), and its flag. ``found`` holds
    the good rows' positions and distances, ``shard`` the keys and IDs."""
    (positions, distances), (keys, ids) = found, shard
    flags = np.zeros(batch.num_rows, dtype=bool)
    flags[bad] = True
    counts = np.where(flags, 0, positions.shape[1])
    flat = positions.ravel()
    offsets = pa.array(np.concatenate([[0], np.cumsum(counts)]).astype(np.int32))
    return pa.RecordBatch.from_arrays(
        [
            batch.column(QUERY),
            batch.column(schema.names[1]),
            pa.ListArray.from_arrays(offsets, ids.take(pa.array(flat, type=pa.int64()))),
            pa.ListArray.from_arrays(offsets, pa.array(distances.ravel())),
            pa.ListArray.from_arrays(offsets, pa.array(keys[flat])),
            pa.array(flags),
        ],
        schema=schema,
    )


def sharded_join(plan: JoinPlan, layout: ShardLayout) -> DataFrame:
    """Exact top ``n`` of every query over a reference split as ``layout`` says, in shards of nearby rows when
    :func:`~sklspark.neighbors._shard_route.plan_routing` finds it pays, else by position.

    Returns
    -------
    DataFrame
        ``id_col``, ``neighbor_ids`` and ``distances`` (``n`` each), and the flag
        :data:`~sklspark.neighbors._names.BAD_ROW`, one row per query row.
    """
    # the shards' searches size their k-means partitions by the whole reference (_shard_trial.TrialPartition)
    plan = dataclasses.replace(plan, search=dataclasses.replace(plan.search, reference_rows=layout.n_reference))
    search = plan.search
    assert isinstance(plan.reference, DataFrame) and search.r_spec is not None
    router = plan_routing(plan, layout.shards, layout.n_reference, layout.n_features)
    schema = partial_schema(
        search.id_col, plan.queries.schema[search.id_col].dataType, plan.reference.schema[search.id_col].dataType
    )
    tops: Tops
    if plan.prebuilt_shards:
        tops = _prebuilt_tops(plan, _sides(plan, layout, router), schema)
    elif plan.self_join:
        tops = _own_rows_tops(plan, layout, router, schema)
    else:
        tops = functools.partial(_cogrouped_tops, plan, _sides(plan, layout, router), layout.blocks, schema)
    return _merged(plan, layout, tops(None)) if router is None else _alone_skip_merge(plan, layout, tops)


def _alone_skip_merge(plan: JoinPlan, layout: ShardLayout, tops: Tops) -> DataFrame:
    """The result of a join in shards of nearby rows from ``tops(alone)``, the partial lists of the queries that search
    one shard alone (``True``, final already: no merge) or several (``False``, merged).

    Both are searched over the same shuffled groups: Spark reuses the exchange, so the rows are routed and shuffled
    once, and each query is searched once. On clustered data nearly every query searches one shard, and the merge
    shuffle has nearly nothing left to move.
    """
    _log.info("%s: the queries that search one shard alone skip the merge", plan.caller)
    return merged(tops(True), plan.search.id_col, plan.search.n, 0).unionByName(_merged(plan, layout, tops(False)))


def _asked(group: pa.Table, alone: bool | None) -> pa.Table:
    """The queries of a group's rows (:data:`ROLE` has :data:`AS_QUERY`): those that search this shard alone
    (``alone``), the others, or all (``None``)."""
    role = group.column(ROLE).to_numpy()
    asked = (role & AS_QUERY) > 0
    if alone is not None:
        asked &= ((role & ALONE) > 0) == alone
    return group.filter(pa.array(asked))


def _merged(plan: JoinPlan, layout: ShardLayout, tops: DataFrame) -> DataFrame:
    """Every query's partial lists merged into its top ``n`` (:func:`~sklspark.neighbors._shard_merge.merged`); one
    shard's lists are final already (sorted the same way by exact_top_k): no merge shuffle then."""
    search = plan.search
    groups = merge_groups(layout.n_queries, layout.shards, search.n, plan.queries) if layout.shards > 1 else 0
    _log.info("%s: the partial lists of %d shard(s) merged in %d group(s)", plan.caller, layout.shards, groups)
    return merged(tops, search.id_col, search.n, groups)


def _positioned(frame: DataFrame, search: SearchSpec, spec: FeatureSpec, key: str) -> DataFrame:
    """``frame``'s ID and features in :func:`~sklspark.neighbors._plan.stable_order`, after its global position ``key``.

    The features get fresh attributes (aliases): in a self-join both sides would otherwise carry the same ones, and
    Spark's column pruning then dropped the reference's features from the co-group (no merge after it).
    """
    ordered = stable_order(frame, search.id_col, spec.columns)
    fresh = [F.col(c).alias(c) for c in (search.id_col, *spec.columns)]
    return ordered.select(F.monotonically_increasing_id().alias(key), *fresh)


def _sides(plan: JoinPlan, layout: ShardLayout, router: Router | None) -> tuple[DataFrame, DataFrame]:
    """The reference with its :data:`SHARD`, and the queries with their :data:`BLOCK`, once per :data:`SHARD` they
    search, with their :data:`ROLE` there.

    Both sides' group keys must have the same types (long): rows are hashed to partitions by them, and an int 1 and
    a long 1 hash differently, so mixed types would send a group's halves apart.
    """
    search = plan.search
    assert isinstance(plan.reference, DataFrame) and search.r_spec is not None
    ref = _positioned(plan.reference, search, search.r_spec, POSITION)
    qry = _in_blocks(_positioned(plan.queries, search, search.q_spec, QUERY), QUERY, layout)
    if router is None:  # every query to every shard, never alone there
        qry = qry.withColumn(SHARD, F.explode(_upto(layout.shards))).withColumn(ROLE, F.lit(AS_QUERY).cast("byte"))
        return ref.withColumn(SHARD, _shard_by_position(layout)), qry
    ref = ref.mapInArrow(functools.partial(with_home, router, search.r_spec), routed_schema(ref.schema))
    return ref, qry.mapInArrow(functools.partial(with_targets, router, search.q_spec), roles_schema(qry.schema))


def _in_blocks(queries: DataFrame, key: str, layout: ShardLayout) -> DataFrame:
    """``queries`` with their :data:`BLOCK`: ``key mod B``, in both layouts."""
    return queries.withColumn(BLOCK, F.pmod(key, F.lit(layout.blocks)))


def _shard_by_position(layout: ShardLayout) -> Column:
    """A reference row's :data:`SHARD` in shards by position: ``position mod S``."""
    return F.pmod(POSITION, F.lit(layout.shards))


def _upto(count: int) -> Column:
    """``[0, 1, ..., count - 1]`` as an array of longs."""
    return F.sequence(F.lit(0), F.lit(count - 1)).cast("array<bigint>")


def _cogrouped_tops(
    plan: JoinPlan, sides: tuple[DataFrame, DataFrame], blocks: int, schema: StructType, alone: bool | None
) -> DataFrame:
    """The partial top lists of the queries and the reference (``sides``) co-grouped on ``(block, shard)``: the
    reference replicated once per query block, each group's shard indexed in its task; of the queries :func:`_asked`
    (``alone``)."""
    search, arrow_schema = plan.search, to_arrow_schema(schema)
    ref, qry = sides
    ref = ref.withColumn(BLOCK, F.explode(_upto(blocks)))

    def partial(left: pa.Table, right: pa.Table) -> pa.Table:
        return _partial_top(search, _asked(left, alone), right, arrow_schema)

    return qry.groupBy(BLOCK, SHARD).cogroup(ref.groupBy(BLOCK, SHARD)).applyInArrow(partial, schema)


def _own_rows_tops(plan: JoinPlan, layout: ShardLayout, router: Router | None, schema: StructType) -> Tops:
    """The partial top lists of a self-join, as ``tops(alone)`` (:data:`Tops`), whose rows are both sides: one
    frame, read and routed once, each row sent once to each ``(block, shard)`` group it is in, with its roles there
    (:data:`ROLE`), and grouped by one shuffle (both passes of :func:`_alone_skip_merge` read it).

    Shards of nearby rows: :func:`~sklspark.neighbors._shard_route.with_roles`. By position: a row is a reference row
    of shard ``position mod S`` in every block, and a query of every shard in block ``position mod B``. Either way a
    row is sent ``B`` times as a reference row (once a query there too) and once more per other shard it searches:
    ``B + S - 1`` rows at most, never ``B x S``.

    In shards of nearby rows, the queries that search their home shard alone (:data:`ALONE`; nearly all of them on
    clustered data) skip the merge (:func:`_alone_skip_merge`).
    """
    search, arrow_schema = plan.search, to_arrow_schema(schema)
    assert isinstance(plan.reference, DataFrame) and search.r_spec is not None
    rows = _in_blocks(_positioned(plan.reference, search, search.r_spec, POSITION), POSITION, layout)
    if router is None:
        placed = _placed_by_position(rows, layout)
    else:
        placed = rows.mapInArrow(
            functools.partial(with_roles, router, search.r_spec, layout.blocks), roles_schema(rows.schema)
        )

    def tops(alone: bool | None) -> DataFrame:
        def partial(group: pa.Table) -> pa.Table:
            queries = _asked(group, alone)
            queries = queries.rename_columns([QUERY if name == POSITION else name for name in queries.column_names])
            reference = group.filter(pa.array(group.column(ROLE).to_numpy() & AS_REFERENCE > 0))
            return _partial_top(search, queries, reference, arrow_schema)

        return placed.groupBy(BLOCK, SHARD).applyInArrow(partial, schema)

    return tops


def _placed_by_position(rows: DataFrame, layout: ShardLayout) -> DataFrame:
    """A self-join's ``rows`` (with their :data:`BLOCK`) placed in shards by position, as
    :func:`~sklspark.neighbors._shard_route.with_roles` places them in shards of nearby rows, in SQL: one row per block
    as a reference row of shard ``position mod S`` (a query there too in its own block), one per other shard as a
    query."""
    home, own_block = _shard_by_position(layout), F.col(BLOCK)
    as_reference = F.transform(
        _upto(layout.blocks),
        lambda block: F.struct(
            block.alias(BLOCK),
            home.alias(SHARD),
            F.when(block == own_block, AS_REFERENCE | AS_QUERY).otherwise(AS_REFERENCE).cast("byte").alias(ROLE),
        ),
    )
    as_query = F.transform(
        F.filter(_upto(layout.shards), lambda shard: shard != home),
        lambda shard: F.struct(own_block.alias(BLOCK), shard.alias(SHARD), F.lit(AS_QUERY).cast("byte").alias(ROLE)),
    )
    placed = rows.select(*rows.columns, F.explode(F.concat(as_reference, as_query)).alias("group"))
    return placed.select(*[c for c in rows.columns if c != BLOCK], "group.*")


def _prebuilt_tops(plan: JoinPlan, sides: tuple[DataFrame, DataFrame], schema: StructType) -> Tops:
    """The partial top lists of a backend whose index is built once per shard (:mod:`._shard_index`), as
    ``tops(alone)`` (:data:`Tops`).

    A first job, run here, groups the reference by shard: one task per shard builds the backend and writes the
    shard's files, and returns their stem to the driver (a few bytes a shard). The queries, replicated
    once per shard, are then grouped by ``(shard, block)``, sorted so that a task meets a shard's
    blocks one after the other, and every group searches its shard loaded from the files (once per
    worker process; not at all by a group without a query asked). The reference is not replicated per query
    block: shuffle volume at most ``S x |queries| + |reference|``.
    """
    search, (ref, qry) = plan.search, sides
    files = ShardFiles.create(plan.index_dir, search.engine, search.metric)

    def write(shard: pa.Table) -> pa.Table:
        return _write_shard(search, files, shard)

    built = ref.groupBy(SHARD).applyInArrow(
        write, StructType([StructField(SHARD, LongType()), StructField("stem", StringType())])
    )
    stems: dict[int, str | None] = {row[0]: row[1] for row in built.collect()}
    missing = files.missing([stem for stem in stems.values() if stem is not None])
    if missing:
        raise ValueError(
            f"{plan.caller}: the {search.engine.name} indexes of the shards were written where the driver cannot read "
            f"them (e.g. {missing[0]}): the executors do not share the driver's file system; pass index_dir= a "
            "directory of a file system that the driver and every executor can read"
        )
    _log.info("%s: %d shard index(es) built once each, under %s", plan.caller, len(stems), files.directory)
    arrow_schema = to_arrow_schema(schema)

    def tops(alone: bool | None) -> DataFrame:
        def partial(queries: pa.Table) -> pa.Table:
            return _search_prebuilt(search, files, stems, _asked(queries, alone), arrow_schema)

        return qry.groupBy(SHARD, BLOCK).applyInArrow(partial, schema)

    return tops
