"""Sharded exact mode: the reference is split into shards that never leave the executors.

Plan
----
1. Every reference row gets its global position ``monotonically_increasing_id()`` (partition index,
   then row within the partition, the partition sorted by :func:`stable_order`: the order in which
   broadcast mode reads the reference too) and shard ``position mod S``. Every query row gets a key of
   its own the same way and block ``key mod B``. The sort matters when Spark retries a task (a lost
   executor): a retried task may read its shuffled input in another order, and positions taken in
   arrival order would then differ between attempts, mixing up queries and shards.
2. Queries are replicated once per shard and reference rows once per query block, and both are
   co-grouped on ``(block, shard)``: shuffle volume ``S x |queries| + B x |reference|``. No row of
   the reference is gathered on the driver.
3. Each of the ``B x S`` groups (one task at a time per group) builds the backend on its shard and
   computes the exact top ``n`` of every query of its block within the shard
   (:func:`~sklspark.neighbors._rerank.exact_top_k`), as candidates ``(distance, position, id)``.
4. The ``S`` partial lists of a query are merged by a second shuffle on the query key (``S x n``
   candidates per query): sorted by ``(distance, position)`` in Spark SQL and cut to ``n``, which is
   exactly the top ``n`` over the whole reference under the tie rule.

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

import math
from collections.abc import Sequence

import numpy as np
import pyarrow as pa
import scipy.sparse as sp
from pyspark.sql import DataFrame
from pyspark.sql import functions as F
from pyspark.sql.pandas.types import to_arrow_schema
from pyspark.sql.types import ArrayType, DataType, DoubleType, LongType, StructField, StructType

from .._features import FeatureSpec
from .._inputs import batch_to_matrix, iter_batch_chunks
from .._runner import apply_chunks
from ._backends import Backend
from ._broadcast import DISTANCES, NEIGHBOR_IDS
from ._rerank import exact_top_k

#: Most bytes of reference features in one shard (when ``shards`` is not given).
SHARD_MAX_BYTES = 128 << 20

#: Most bytes of query features in one query block.
QUERY_BLOCK_MAX_BYTES = 64 << 20

_POSITION = "__sklspark_position"
_QUERY = "__sklspark_query"
_BLOCK = "__sklspark_block"
_SHARD = "__sklspark_shard"
_CANDIDATES = "__sklspark_candidates"


def stable_order(df: DataFrame, id_col: str, feature_cols: Sequence[str]) -> DataFrame:
    """``df`` sorted within each partition by ID, then by a hash of the features (no shuffle).

    Whichever order a (retried) task reads its partition in, the rows come out in the same order, so
    ``monotonically_increasing_id()`` taken after it gives every row the same value in every attempt
    (rows equal in ID and hash are equal, up to a 64-bit hash collision, so their order does not matter).
    """
    return df.sortWithinPartitions(id_col, F.xxhash64(*feature_cols))


def count_blocks(n_rows: int, row_bytes: int, max_bytes: int) -> int:
    """Fewest blocks of at most ``max_bytes`` (at least 1, at most one per row)."""
    return max(1, min(max(n_rows, 1), math.ceil(n_rows * row_bytes / max_bytes)))


def _partial_top(
    queries: pa.Table,
    shard: pa.Table,
    *,
    n: int,
    id_col: str,
    q_spec: FeatureSpec,
    r_spec: FeatureSpec,
    backend: Backend,
    metric: str,
    chunk_size: int,
    schema: pa.Schema,
) -> pa.Table:
    """One (query block, shard) group: every query's exact top ``n`` within the shard.

    The shard is indexed and the queries are searched through the core's chunk runner
    (:func:`~sklspark._runner.apply_chunks`): threads capped, and a bad row raises a ``ChunkError``
    naming the side (queries or reference), the block or shard, and the row's position and ID.
    """
    if queries.num_rows == 0 or shard.num_rows == 0:
        return schema.empty_table()
    reference = pa.concat_batches(shard.to_batches())
    keys = reference.column(_POSITION).to_numpy()
    ids = reference.column(id_col)
    name, where = type(backend).__name__, f"shard {shard.column(_SHARD)[0].as_py()}"

    def build(R: np.ndarray) -> np.ndarray:
        backend.build(R, metric)
        return R

    # one chunk, made lazily: the runner reports a bad reference row as it reports a bad query row
    sparse = backend.sparse  # SparseVector rows stay CSR for backends that take it, as in broadcast mode
    shard_matrix = ((0, _finite_matrix(reference, r_spec, 0, id_col, sparse)) for _ in range(1))
    ((_, R, _),) = apply_chunks(build, f"{name}.build on the reference's {where}", shard_matrix)
    n = min(n, R.shape[0])
    query_chunks = (
        (start, batch, _finite_matrix(batch, q_spec, start, id_col, sparse))
        for start, batch in iter_batch_chunks(queries.to_batches(), chunk_size)
    )
    label = f"{name}.search of the queries' block {queries.column(_BLOCK)[0].as_py()} in {where}"
    out = []
    for _, batch, Q, (positions, distances) in apply_chunks(
        lambda Q: exact_top_k(backend, R, keys, Q, n, metric), label, query_chunks
    ):
        flat = positions.ravel()
        candidates = pa.StructArray.from_arrays(
            [pa.array(distances.ravel()), pa.array(keys[flat]), ids.take(flat)],
            fields=list(schema.field(_CANDIDATES).type.value_type),
        )
        offsets = pa.array(np.arange(Q.shape[0] + 1, dtype=np.int32) * n)
        out.append(
            pa.RecordBatch.from_arrays(
                [batch.column(_QUERY), batch.column(id_col), pa.ListArray.from_arrays(offsets, candidates)],
                schema=schema,
            )
        )
    return pa.Table.from_batches(out, schema=schema)


def _finite_matrix(
    batch: pa.RecordBatch, spec: FeatureSpec, first_row: int, id_col: str, accept_sparse: bool
) -> np.ndarray | sp.csr_matrix:
    """The batch's feature matrix (CSR if it has sparse vectors and ``accept_sparse``); ``ValueError``
    naming the first row (and its ID) with NaN or infinity.

    Every backend gets finite rows: scikit-learn refuses others without naming the row, FAISS and
    Annoy would return meaningless neighbours.
    """
    X = batch_to_matrix(batch, spec, first_row, accept_sparse=accept_sparse)
    if sp.issparse(X):  # only the stored entries can be NaN or infinite
        bad = np.unique(np.repeat(np.arange(X.shape[0]), np.diff(X.indptr))[~np.isfinite(X.data)])
    else:
        bad = np.flatnonzero(~np.isfinite(X).all(axis=1))
    if bad.size:
        row = int(bad[0])
        raise ValueError(
            f"row {first_row + row} ({id_col} {batch.column(id_col)[row].as_py()!r}) has NaN or infinite features"
        )
    return X


def sharded_join(
    queries: DataFrame,
    reference: DataFrame,
    n: int,
    *,
    id_col: str,
    q_spec: FeatureSpec,
    r_spec: FeatureSpec,
    backend: Backend,
    metric: str,
    shards: int,
    blocks: int,
    chunk_size: int,
) -> DataFrame:
    """Exact top ``n`` of every query over a reference split into ``shards`` shards.

    Returns
    -------
    DataFrame
        ``id_col``, ``neighbor_ids`` and ``distances`` (``n`` each), one row per query row.
    """
    ref = stable_order(reference, id_col, r_spec.columns)
    ref = ref.select(F.monotonically_increasing_id().alias(_POSITION), id_col, *r_spec.columns)
    # Both sides' group keys must have the same types (long): rows are hashed to partitions by them, and
    # an int 1 and a long 1 hash differently, so mixed types would send a group's halves apart.
    ref = ref.withColumn(_SHARD, F.pmod(_POSITION, F.lit(shards))).withColumn(
        _BLOCK, F.explode(F.sequence(F.lit(0), F.lit(blocks - 1)).cast("array<bigint>"))
    )
    qry = stable_order(queries, id_col, q_spec.columns)
    qry = qry.select(F.monotonically_increasing_id().alias(_QUERY), id_col, *q_spec.columns)
    qry = qry.withColumn(_BLOCK, F.pmod(_QUERY, F.lit(blocks))).withColumn(
        _SHARD, F.explode(F.sequence(F.lit(0), F.lit(shards - 1)).cast("array<bigint>"))
    )
    ref_id_type: DataType = reference.schema[id_col].dataType
    candidate = StructType(
        [StructField("distance", DoubleType()), StructField("position", LongType()), StructField("id", ref_id_type)]
    )
    schema = StructType(
        [
            StructField(_QUERY, LongType()),
            StructField(id_col, queries.schema[id_col].dataType),
            StructField(_CANDIDATES, ArrayType(candidate)),
        ]
    )
    arrow_schema = to_arrow_schema(schema)

    def partial(left: pa.Table, right: pa.Table) -> pa.Table:
        return _partial_top(
            left,
            right,
            n=n,
            id_col=id_col,
            q_spec=q_spec,
            r_spec=r_spec,
            backend=backend.fresh(),
            metric=metric,
            chunk_size=chunk_size,
            schema=arrow_schema,
        )

    tops = qry.groupBy(_BLOCK, _SHARD).cogroup(ref.groupBy(_BLOCK, _SHARD)).applyInArrow(partial, schema)
    merged = tops.groupBy(_QUERY).agg(
        F.first(id_col).alias(id_col),
        F.slice(F.array_sort(F.flatten(F.collect_list(_CANDIDATES))), 1, n).alias(_CANDIDATES),
    )
    return merged.select(
        id_col,
        F.transform(_CANDIDATES, lambda c: c["id"]).alias(NEIGHBOR_IDS),
        F.transform(_CANDIDATES, lambda c: c["distance"]).alias(DISTANCES),
    )
