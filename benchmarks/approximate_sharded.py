"""Approximate kNN past one executor: hnsw sharded on 2N points against hnsw broadcast on N points, in one run.

    python benchmarks/approximate_sharded.py            # 1,000,000 broadcast + 2,000,000 sharded (tens of minutes)
    python benchmarks/approximate_sharded.py --quick    # 20,000 + 40,000: a smoke test
    python benchmarks/approximate_sharded.py --sharded-rows 200000 --sharded-sample 1000   # a medium run

Not in ``run.py``'s groups (it is long and one-off; issue 20, item 6). Both variants read ONE Parquet
file of clustered float32 points and write their result to Parquet, end to end on ``local[2]``:

* broadcast: ``all_neighbors(N points, backend=hnsw)``, the graph built once on the driver and shipped
  as a file (the ``approximate`` group's variant);
* sharded: ``all_neighbors(2N points, backend=hnsw, shards=S)``, each shard's graph built once by one
  task and written to a file, every query block of a shard searching it (``sklspark.neighbors._shard_index``).

Recall@k of each is measured on ``--sharded-sample`` rows against the exact top ``k`` (the in-process
gemm kernel with the exact re-rank). Targets: sharded recall@10 >= 0.95, and the sharded time at most
twice the broadcast time. ``--shard-ef-search`` is the sharded graphs' ``ef_search``. On these clustered
points the shards hold nearby rows and a query searches only the graphs of the shards that can hold its
neighbours (one, here: ``sklspark.neighbors._shard_route``), so it needs the ``ef_search`` of a single
graph; in shards by position a query searches every shard's graph and the lists are merged, and a smaller
``ef_search`` per shard could keep the recall of one graph.
"""

from __future__ import annotations

import sys
from pathlib import Path

import numpy as np
import pyarrow.parquet as pq
from _common import Row, Targets, clustered, session, timed, write_features

from sklspark.neighbors import HnswBackend, all_neighbors

NAME = "approximate_sharded"
DEFAULT = False
GROUP = "Approximate kNN past one executor (hnsw, float32, k={k}, Euclidean): {n:,} sharded vs {half:,} broadcast"


def add_arguments(parser) -> None:
    parser.add_argument("--sharded-rows", type=int, default=2_000_000, help="rows of the sharded run (half broadcast)")
    parser.add_argument("--sharded-shards", type=int, default=2, help="shards= of the sharded run")
    parser.add_argument("--sharded-sample", type=int, default=2_000, help="rows whose recall is measured")
    parser.add_argument("--sharded-m", type=int, default=32)
    parser.add_argument("--sharded-ef-construction", type=int, default=40)
    parser.add_argument("--broadcast-ef-search", type=int, default=128)
    parser.add_argument("--shard-ef-search", type=int, default=64)


def quick(args) -> None:
    args.sharded_rows, args.sharded_sample = 40_000, 500


def _exact_sample(X: np.ndarray, sample: np.ndarray, k: int) -> list[list[int]]:
    """The exact ``k`` nearest other rows of ``X[sample]`` (in-process gemm kernel + exact re-rank)."""
    from sklspark.neighbors import GemmBackend
    from sklspark.neighbors._rerank import exact_top_k

    backend = GemmBackend(clustered=False)
    backend.build(X, "euclidean")
    positions, _ = exact_top_k(backend, X, np.arange(len(X)), X[sample], k + 1, "euclidean")
    return [[p for p in row if p != i][:k] for i, row in zip(sample.tolist(), positions)]


def _run(spark, path: Path, backend: HnswBackend, shards: int | None, k: int) -> tuple[float, dict]:
    """Seconds of ``all_neighbors`` from the Parquet file ``path`` to a Parquet result, and the result by ID."""
    out = path.with_suffix(".neighbours.parquet")
    df = spark.read.parquet(str(path))
    t = timed(lambda: all_neighbors(df, k, backend=backend, shards=shards).write.mode("overwrite").parquet(str(out)))
    table = pq.read_table(out, columns=["id", "neighbor_ids"])
    return t, dict(zip(table.column("id").to_pylist(), table.column("neighbor_ids").to_pylist()))


def bench(args, tmp: Path, rows: list[Row]) -> None:
    """Broadcast on ``N`` then sharded on ``2N`` points, each from one Parquet file, with its recall on a sample."""
    n, k, shards = args.sharded_rows, args.k, args.sharded_shards
    group = GROUP.format(k=k, n=n, half=n // 2)
    spark = session("local[2]")
    build = {"M": args.sharded_m, "ef_construction": args.sharded_ef_construction}
    variants = [
        ("broadcast", n // 2, None, HnswBackend(**build, ef_search=args.broadcast_ef_search)),
        ("sharded", n, shards, HnswBackend(**build, ef_search=args.shard_ef_search)),
    ]
    for mode, size, shards_given, backend in variants:
        X = clustered(size, args.knn_dim)
        path = tmp / f"approximate-{mode}.parquet"
        write_features(path, X, partitions=1)
        sample = np.sort(np.random.default_rng(5).choice(size, min(size, args.sharded_sample), replace=False))
        expected = _exact_sample(X, sample, k)
        del X
        t, got = _run(spark, path, backend, shards_given, k)
        recall = float(np.mean([len(set(got[i]) & set(e)) / k for i, e in zip(sample.tolist(), expected)]))
        params = f"M={backend.M}, ef_construction={backend.ef_construction}, ef_search={backend.ef_search}"
        layout = f"{shards} shards, each graph built once by one task" if shards_given else "graph built on the driver"
        rows.append(
            Row(
                group,
                f"all_neighbors {size:,} x {args.knn_dim}, hnsw, {mode} mode, ONE Parquet file to Parquet",
                t,
                f"end to end; {layout}; recall@{k} = {recall:.4f} on {len(sample):,} rows; {params}",
                extra={"recall": recall, "mode": mode},
            )
        )


def targets(rows: list[Row]) -> list[tuple[str, str, bool]]:
    t = Targets(rows)
    broadcast = next((r for r in rows if r.group.startswith("Approximate kNN past") and "broadcast" in r.variant), None)
    sharded = next((r for r in rows if r.group.startswith("Approximate kNN past") and "sharded" in r.variant), None)
    if sharded is not None:
        t.add("sharded hnsw (2N points) recall@10 >= 0.95", sharded.extra["recall"], lambda v: v >= 0.95, ".4f")
    t.add(
        "sharded hnsw on 2N points / broadcast hnsw on N points, time <= 2.0",
        t.ratio(sharded, broadcast),
        lambda v: v <= 2.0,
    )
    return t.lines


if __name__ == "__main__":
    from _common import main

    main([sys.modules[__name__]], sys.argv[1:], default_name=NAME)
