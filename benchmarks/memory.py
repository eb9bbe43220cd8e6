"""Peak memory of a Python worker running distribute(), against chunk_size and against rows.

python benchmarks/memory.py [--quick] [--memory-rows N] [--name memory]
"""

from __future__ import annotations

import resource
import sys
from pathlib import Path

import numpy as np
from _common import Row, Targets, session, write_features
from sklearn.neighbors import NearestNeighbors

import sklspark

NAME = "memory"
DEFAULT = True


def add_arguments(parser) -> None:
    parser.add_argument("--memory-rows", type=int, default=100_000)


def quick(args) -> None:
    args.memory_rows = 5_000


def bench(args, tmp: Path, rows: list[Row]) -> None:
    """Peak RSS of a Python worker running distribute() (RDD path), fresh worker per task."""
    spark = session("local[2]", **{"spark.python.worker.reuse": "false"})
    rng = np.random.default_rng(2)
    ref = rng.normal(size=(2_000, 32)).astype(np.float32)
    nn = NearestNeighbors(n_neighbors=5, algorithm="brute").fit(ref)

    def peak_mb(n_rows: int, chunk_size: int) -> float:
        X = rng.normal(size=(n_rows, 32)).astype(np.float32)
        path = tmp / f"mem-{n_rows}.parquet"
        if not path.exists():
            write_features(path, X, partitions=1)
        rdd = spark.read.parquet(str(path)).coalesce(1).rdd.map(lambda r: np.asarray(r.features, dtype=np.float32))
        out = sklspark.distribute(nn, "kneighbors", rdd, chunk_size=chunk_size)

        def drain(items):
            count = sum(1 for _ in items)
            yield count, resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024

        return max(mb for _, mb in out.mapPartitions(drain).collect())

    group = "Python worker peak memory (RSS, MB) vs chunk_size, one partition"
    n_rows = args.memory_rows
    for chunk_size in (256, 4096) if args.quick else (256, 1024, 4096, 16384, 65536):
        rows.append(
            Row(group, f"chunk_size={chunk_size:,}, {n_rows:,} rows", 0.0, extra={"mb": peak_mb(n_rows, chunk_size)})
        )
    group = "Python worker peak memory (RSS, MB) vs rows, chunk_size=4,096, one partition"
    for factor in (1, 10):
        rows.append(Row(group, f"{n_rows * factor:,} rows", 0.0, extra={"mb": peak_mb(n_rows * factor, 4096)}))


def targets(rows: list[Row]) -> list[tuple[str, str, bool]]:
    t = Targets(rows)
    mem = [r for r in rows if r.group.startswith("Python worker peak memory (RSS, MB) vs rows")]
    if len(mem) == 2:
        t.add(
            "worker peak memory at 10x rows / at 1x rows <= 1.10",
            mem[1].extra["mb"] / mem[0].extra["mb"],
            lambda v: v <= 1.10,
        )
    return t.lines


if __name__ == "__main__":
    from _common import main

    main([sys.modules[__name__]], sys.argv[1:], default_name=NAME)
