"""Exact all_neighbors from ONE Parquet file against in-process scikit-learn, uniform data (issue 20, item 3).

    python benchmarks/end_to_end.py                     # 50,000 and 100,000 x 64 (a few minutes)
    python benchmarks/end_to_end.py --e2e-rows 50000    # one size

Uniform random float32 rows are the worst case of the exact search (the clustered search cannot skip
anything), so the figures hold for any data. Each size: scikit-learn's ``NearestNeighbors(algorithm="brute")``
fitted and queried in-process (2 BLAS threads) and ``all_neighbors(k)`` on ``local[2]`` from one Parquet file
to a no-op write, best of ``--e2e-repeat`` each, interleaved, after one untimed call (the JVM and the Python
workers warm, numba's machine code loaded from its cache). The first call of a fresh session is reported
too. Targets: <= 0.7x scikit-learn at 50,000 rows and <= 0.6x at 100,000.
"""

from __future__ import annotations

import sys
from pathlib import Path

import numpy as np
from _common import Row, Targets, noop, session, timed, write_features
from sklearn.neighbors import NearestNeighbors

from sklspark.neighbors import all_neighbors

NAME = "end_to_end"
DEFAULT = False
TARGETS = {50_000: 0.7, 100_000: 0.6}


def add_arguments(parser) -> None:
    parser.add_argument("--e2e-rows", type=int, action="append", help="sizes (default 50,000 and 100,000)")
    parser.add_argument("--e2e-repeat", type=int, default=2, help="time each variant best of N")


def quick(args) -> None:
    args.e2e_rows = [3_000]
    args.e2e_repeat = 1


def bench(args, tmp: Path, rows: list[Row]) -> None:
    spark = session("local[2]")
    sizes = args.e2e_rows or sorted(TARGETS)
    for n in sizes:
        group = f"All neighbours end to end ({n:,} x {args.knn_dim} uniform float32, k={args.k}, Euclidean)"
        X = np.random.default_rng(n).random((n, args.knn_dim), dtype=np.float32)
        path = tmp / f"uniform-{n}.parquet"
        write_features(path, X, partitions=1)
        nn = NearestNeighbors(n_neighbors=args.k + 1, algorithm="brute")
        spark_run = lambda: noop(all_neighbors(spark.read.parquet(str(path)), args.k))  # noqa: E731
        warm_up = timed(spark_run)
        in_process, distributed = [], []
        for _ in range(max(1, args.e2e_repeat)):
            in_process.append(timed(lambda: nn.fit(X).kneighbors(X)))
            distributed.append(timed(spark_run))
        note = f"best of {len(distributed)} after a warm-up call"
        if n == sizes[0]:
            note += f"; the warm-up, the first call of the session, took {warm_up:.1f} s"
        rows.append(Row(group, "in-process scikit-learn kneighbors (2 BLAS threads)", min(in_process), "baseline"))
        rows.append(Row(group, "sklspark all_neighbors from ONE Parquet file, gemm, local[2]", min(distributed), note))


def targets(rows: list[Row]) -> list[tuple[str, str, bool]]:
    t = Targets(rows)
    for n, bound in TARGETS.items():
        group = f"All neighbours end to end ({n:,} "
        t.add(
            f"all_neighbors at {n:,} rows / in-process scikit-learn <= {bound}",
            t.ratio(t.find(group, "sklspark all_neighbors"), t.find(group, "in-process scikit-learn")),
            lambda v, bound=bound: v <= bound,
        )
    return t.lines


if __name__ == "__main__":
    from _common import main

    main([sys.modules[__name__]], sys.argv[1:], default_name=NAME)
