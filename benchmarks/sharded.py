"""Exact sharded mode against broadcast mode, and shards of nearby rows against shards by position, in one run.

    python benchmarks/sharded.py                 # 100,000 x 64, 4 shards, 3 interleaved rounds (about 4 minutes)
    python benchmarks/sharded.py --quick         # 10,000 rows, one round: a smoke test

Not in ``run.py``'s default groups (issue 20, item 5). ``all_neighbors(df, 10, exclude_self=False)`` with the default
``gemm`` backend, from Parquet (8 files) to Spark's ``noop`` sink, on ``local[2]``, warm (each variant once before
the rounds), in rounds that each start one variant further on; the median of the rounds counts:

* broadcast mode (the reference collected, indexed once and broadcast);
* sharded mode, ``shards=4``, the layout chosen automatically: shards of nearby rows, each query sent only to the
  shards that can hold one of its neighbours (``sklspark.neighbors._shard_route``), where the driver's sample shows
  that it pays (the clustered data), else shards by position (the uniform data);
* sharded mode, ``shards=4``, shards by position (``position mod 4``, every query to every shard), forced: the
  layout before routing, and the one data without clusters keep.

On clustered data (50 clusters, the ``knn`` group's) and on uniform data, where routing cannot pay: there the
driver's sample and k-means are the whole cost of trying it. Target: sharded time / broadcast time <= 1.2 on the
clustered data.
"""

from __future__ import annotations

import statistics
import sys
from pathlib import Path

import numpy as np
from _common import Row, Targets, clustered, noop, session, timed, write_features

import sklspark.neighbors._shard_route as route
from sklspark.neighbors import all_neighbors

NAME = "sharded"
DEFAULT = False
GROUP = "Exact sharded mode ({n:,} x {d} float32, {data}, k={k}, gemm backend, from 8 Parquet files)"

VARIANTS = ("broadcast", "sharded, layout chosen automatically", "sharded, shards by position (forced)")


def add_arguments(parser) -> None:
    parser.add_argument("--sharded-rows", type=int, default=100_000)
    parser.add_argument("--sharded-rounds", type=int, default=3, help="interleaved rounds; the median counts")


def quick(args) -> None:
    args.sharded_rows, args.sharded_rounds = 10_000, 1


def _run(spark, path: Path, variant: str, k: int) -> float:
    df = spark.read.parquet(str(path))
    if variant == "broadcast":
        return timed(lambda: noop(all_neighbors(df, k, exclude_self=False)))
    by_position = variant.endswith("(forced)")
    default = route.MAX_SHARE
    route.MAX_SHARE = -1.0 if by_position else default  # no share is at most -1: routing never pays
    try:
        return timed(lambda: noop(all_neighbors(df, k, shards=4, exclude_self=False)))
    finally:
        route.MAX_SHARE = default


def bench(args, tmp: Path, rows: list[Row]) -> None:
    n, k, d = args.sharded_rows, args.k, args.knn_dim
    spark = session("local[2]")
    data = {"50 clusters": clustered(n, d), "uniform": np.random.default_rng(0).random((n, d), dtype=np.float32)}
    for label, X in data.items():
        path = tmp / f"sharded-{label.replace(' ', '-')}"
        write_features(path, X, partitions=8)
        for variant in VARIANTS:  # warm: Python workers, numba's machine code, the JVM's
            _run(spark, path, variant, k)
        times: dict[str, list[float]] = {v: [] for v in VARIANTS}
        for r in range(args.sharded_rounds):
            for variant in VARIANTS[r % 3 :] + VARIANTS[: r % 3]:
                times[variant].append(_run(spark, path, variant, k))
        group = GROUP.format(n=n, d=d, data=label, k=k)
        for variant in VARIANTS:
            runs = ", ".join(f"{t:.2f}" for t in times[variant])
            rows.append(
                Row(
                    group,
                    f"all_neighbors, {variant}",
                    statistics.median(times[variant]),
                    f"median of {args.sharded_rounds} interleaved rounds ({runs} s)",
                )
            )


def targets(rows: list[Row]) -> list[tuple[str, str, bool]]:
    """Item 5's target, on the clustered data (where the layout chosen is shards of nearby rows)."""
    t = Targets([r for r in rows if "50 clusters" in r.group])
    broadcast, chosen = (t.find("Exact sharded mode", f"all_neighbors, {v}") for v in VARIANTS[:2])
    ratio = t.ratio(chosen, broadcast)
    t.add("sharded (layout chosen) / broadcast time, 50 clusters <= 1.2", ratio, lambda v: v <= 1.2)
    return t.lines


if __name__ == "__main__":
    from _common import main

    main([sys.modules[__name__]], sys.argv[1:], default_name=NAME)
