"""Sharded mode's merge of the partial lists (``_shard_merge.merge_lists``) against a plain sort per query.

In process, no Spark job: partial lists as the search tasks return them (each shard's list sorted by distance, then
position; shards of different sizes giving lists of different lengths; bad rows with empty lists), with many exact
ties between shards, merged and compared with each query's candidates sorted by (distance, position) in Python.
"""

from __future__ import annotations

import numpy as np
import pyarrow as pa
import pytest
from pyspark.sql.pandas.types import to_arrow_schema
from pyspark.sql.types import LongType, StringType, StructType

from sklspark.neighbors._names import BAD_ROW, DISTANCES, NEIGHBOR_IDS
from sklspark.neighbors._shard_merge import merge_lists, partial_schema


def partial_lists(rng, n_queries: int, shards: int, n: int, string_ids: bool):
    """Rows of partial lists in a shuffled order, and each query's candidates ``(distance, position, id)``."""
    rows, truth = [], {}
    bad = set(rng.choice(n_queries, 3, replace=False).tolist())
    for q in range(n_queries):
        for s in range(shards):
            length = 0 if q in bad else min(n, 2 + s)  # shard s holds 2 + s rows: short lists too
            positions = np.sort(rng.choice(np.arange(s, 400, shards), length, replace=False))
            distances = rng.integers(0, 4, length).astype(np.float64)  # few values: ties across shards
            order = np.lexsort((positions, distances))
            candidates = [(float(distances[i]), int(positions[i])) for i in order]
            ids = [f"r{p}" if string_ids else p + 1000 for _, p in candidates]
            truth.setdefault(q, []).extend((d, p, i) for (d, p), i in zip(candidates, ids))
            query_id = f"q{q}" if string_ids else q + 7
            rows.append((q, query_id, ids, [d for d, _ in candidates], [p for _, p in candidates], q in bad))
    return [rows[i] for i in rng.permutation(len(rows))], truth, bad


@pytest.mark.parametrize("string_ids", [False, True])
def test_merge_equals_a_sort_of_each_querys_candidates(string_ids):
    rng = np.random.default_rng(3)
    n, id_type = 5, StringType() if string_ids else LongType()
    rows, truth, bad = partial_lists(rng, 60, 3, n, string_ids)
    schema = to_arrow_schema(partial_schema("id", id_type, id_type))
    table = pa.Table.from_pylist([dict(zip(schema.names, row)) for row in rows], schema=schema)
    result = StructType(
        [partial_schema("id", id_type, id_type)[name] for name in ("id", NEIGHBOR_IDS, DISTANCES, BAD_ROW)]
    )
    out = merge_lists(table, "id", n, to_arrow_schema(result)).to_pylist()
    assert len(out) == 60
    for row in out:
        q = int(row["id"][1:]) if string_ids else row["id"] - 7
        expected = sorted(truth[q])[:n]
        assert row[NEIGHBOR_IDS] == [i for _, _, i in expected]
        assert row[DISTANCES] == [d for d, _, _ in expected]
        assert row[BAD_ROW] == (q in bad)
        assert (row[NEIGHBOR_IDS] == []) == (q in bad)
    assert merge_lists(table.slice(0, 0), "id", n, to_arrow_schema(result)).num_rows == 0
