"""Sharded mode's partial lists and their merge: each query's top ``n`` within every shard, made one top ``n``.

A (query block, shard) group returns one row per query (:func:`partial_schema`): the query's key and ID, its
candidates within the shard as three parallel lists (reference IDs, exact distances, global reference
positions), nearest first, and its flag. The lists are primitive arrays rather than an array of structs:
Arrow moves them between Python and the JVM a column at a time.

With several shards, :func:`merged` shuffles the rows on the query key into :func:`merge_groups` groups
(``key mod groups``), each merged in one Python call (:func:`merge_lists`): a query's candidates are put
in one row of a matrix (padded), every row sorted by (distance, position) at once, and each query keeps its
first ``n``. That is exactly the
top ``n`` over the whole reference under the tie rule (positions are unique), as the sort of each query's
candidates in Spark SQL before it (``array_sort`` of structs, an interpreted comparison per pair, took
about a third of the JVM's time of a 4-shard join at 100,000 x 64).
"""

from __future__ import annotations

import math

import numpy as np
import pyarrow as pa
from pyspark.sql import DataFrame
from pyspark.sql import functions as F
from pyspark.sql.pandas.types import to_arrow_schema
from pyspark.sql.types import ArrayType, BooleanType, DataType, DoubleType, LongType, StructField, StructType

from .._partitions import spread_tasks
from ._names import BAD_ROW, DISTANCES, NEIGHBOR_IDS

#: The query key column of the partial lists.
QUERY = "__sklspark_query"

#: Each candidate's global reference position (the tie-break) in the partial lists.
POSITIONS = "__sklspark_positions"

#: Most bytes of candidates merged in one Python call (the merge sorts them together).
MERGE_GROUP_MAX_BYTES = 64 << 20

#: Bytes of one candidate in the merge: its lists' entries (ID, distance, position), matrix cells and sort index.
_CANDIDATE_BYTES = 64

_MERGE_GROUP = "__sklspark_merge_group"


def partial_schema(id_col: str, query_id_type: DataType, reference_id_type: DataType) -> StructType:
    """The rows of a group's partial lists (and, without :data:`QUERY` and :data:`POSITIONS`, of the result)."""
    return StructType(
        [
            StructField(QUERY, LongType()),
            StructField(id_col, query_id_type),
            StructField(NEIGHBOR_IDS, ArrayType(reference_id_type)),
            StructField(DISTANCES, ArrayType(DoubleType())),
            StructField(POSITIONS, ArrayType(LongType())),
            StructField(BAD_ROW, BooleanType()),
        ]
    )


def merge_groups(n_queries: int, shards: int, n: int, spark: DataFrame) -> int:
    """Groups of the merge: at most :data:`MERGE_GROUP_MAX_BYTES` of candidates each, and a few per core."""
    by_size = math.ceil(n_queries * shards * n * _CANDIDATE_BYTES / MERGE_GROUP_MAX_BYTES)
    return max(1, min(max(n_queries, 1), max(by_size, spread_tasks(spark))))


def merge_lists(table: pa.Table, id_col: str, n: int, schema: pa.Schema) -> pa.Table:
    """Each query's partial lists (one row per shard) merged into its ``n`` nearest by (distance, position).

    Returns one row per query: ``id_col``, ``neighbor_ids``, ``distances`` and the flag (set if any shard
    flagged the row), in ``schema``.
    """
    if table.num_rows == 0:
        return schema.empty_table()
    queries = table.column(QUERY).to_numpy()
    lists = {name: table.column(name).combine_chunks() for name in (NEIGHBOR_IDS, DISTANCES, POSITIONS)}
    unique, first_row, owner_row = np.unique(queries, return_index=True, return_inverse=True)
    candidates, owner, slot = _by_query(owner_row, lists[DISTANCES].offsets.to_numpy())
    per_query = np.bincount(owner, minlength=len(unique))
    # every query's candidates in one row of a matrix, padded with (inf, largest position): sorted after the rest
    width = int(per_query.max(initial=0))
    distances = np.full((len(unique), width), np.inf)
    positions = np.full((len(unique), width), np.iinfo(np.int64).max)
    index = np.zeros((len(unique), width), dtype=np.int64)
    distances[owner, slot] = lists[DISTANCES].flatten().to_numpy()[candidates]
    positions[owner, slot] = lists[POSITIONS].flatten().to_numpy()[candidates]
    index[owner, slot] = candidates
    order = np.lexsort((positions, distances), axis=-1)[:, :n]
    kept = np.arange(order.shape[1]) < np.minimum(per_query, n)[:, None]  # the real candidates, nearest first
    offsets = pa.array(np.concatenate([[0], np.cumsum(kept.sum(axis=1))]).astype(np.int32))
    bad = np.bincount(owner_row, weights=table.column(BAD_ROW).to_numpy(zero_copy_only=False), minlength=len(unique))
    ids = lists[NEIGHBOR_IDS].flatten().take(pa.array(np.take_along_axis(index, order, axis=1)[kept]))
    nearest = np.take_along_axis(distances, order, axis=1)[kept]
    return pa.table(
        [
            table.column(id_col).take(pa.array(first_row, type=pa.int64())),
            pa.ListArray.from_arrays(offsets, ids),
            pa.ListArray.from_arrays(offsets, pa.array(nearest)),
            pa.array(bad > 0),
        ],
        schema=schema,
    )


def _by_query(owner_row: np.ndarray, offsets: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """The candidates grouped by query: their indexes in the flattened lists, their query, and their slot among
    the query's candidates (0, 1, ...). ``owner_row`` is each row's query, ``offsets`` the lists' offsets."""
    by_row = np.argsort(owner_row, kind="stable")
    lengths = np.diff(offsets)[by_row]
    total = int(lengths.sum())
    group_start = np.cumsum(lengths) - lengths  # where each row's candidates start once grouped
    candidates = np.repeat(offsets[:-1][by_row] - group_start, lengths) + np.arange(total)
    owner = np.repeat(owner_row[by_row], lengths)
    per_query = np.bincount(owner, minlength=int(owner_row.max(initial=-1)) + 1)
    slot = np.arange(total) - (np.cumsum(per_query) - per_query)[owner]
    return candidates, owner, slot


def merged(tops: DataFrame, id_col: str, n: int, groups: int) -> DataFrame:
    """The partial lists of every query merged into its top ``n`` (``groups`` Python calls; ``groups=0``: one
    shard, whose lists are final already: no shuffle)."""
    result = [id_col, NEIGHBOR_IDS, DISTANCES, BAD_ROW]
    if groups == 0:
        return tops.select(*result)
    schema = StructType([tops.schema[name] for name in result])
    arrow_schema = to_arrow_schema(schema)

    def merge(table: pa.Table) -> pa.Table:
        return merge_lists(table, id_col, n, arrow_schema)

    keyed = tops.withColumn(_MERGE_GROUP, F.pmod(QUERY, F.lit(groups)))
    return keyed.groupBy(_MERGE_GROUP).applyInArrow(merge, schema)
