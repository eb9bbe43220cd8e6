"""Approximate k-nearest neighbours with an annoy index shipped to the workers as a file.

Run as ``python examples/approximate_knn.py`` (``--n-points 2000`` for a quick try). The annoy index is
built once on the driver, distributed with ``SparkContext.addFile`` and memory-mapped once per Python
worker; every candidate's distance is then recomputed exactly, so only recall can differ from exact
search. The script reports recall@k against the exact (scikit-learn) answer.
"""

from __future__ import annotations

import argparse
import time

import numpy as np
import pyarrow as pa

import sklspark
from sklspark.neighbors import AnnoyBackend, all_neighbors


def neighbour_ids(df, k: int, backend) -> tuple[np.ndarray, float]:
    start = time.perf_counter()
    table = all_neighbors(df, k, backend=backend).select("id", "neighbor_ids").toArrow().sort_by("id")
    return np.stack(table.column("neighbor_ids").to_numpy(zero_copy_only=False)), time.perf_counter() - start


def main(argv=None, spark=None) -> None:
    """Run the example; ``spark``: a running session to use and leave running (the tests pass theirs)."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--n-points", type=int, default=50_000)
    parser.add_argument("--dim", type=int, default=32)
    parser.add_argument("-k", type=int, default=10)
    parser.add_argument("--n-trees", type=int, default=50, help="annoy trees: more trees, better recall")
    parser.add_argument("--master", default="local[*]")
    args = parser.parse_args(argv)

    rng = np.random.default_rng(0)
    centres = rng.normal(scale=3.0, size=(max(2, args.n_points // 500), args.dim))
    X = centres[rng.integers(0, len(centres), args.n_points)] + rng.normal(size=(args.n_points, args.dim))
    own_session = spark is None
    if own_session:
        spark = sklspark.spark_session(args.master, app_name="sklspark-approximate-knn")
    df = spark.createDataFrame(pa.table({"id": np.arange(args.n_points), "features": list(X.astype(np.float32))}))

    approx, t_approx = neighbour_ids(df, args.k, AnnoyBackend(n_trees=args.n_trees))
    exact, t_exact = neighbour_ids(df, args.k, "sklearn")
    recall = np.mean([len(set(a) & set(e)) for a, e in zip(approx, exact)]) / args.k
    print(
        f"{args.n_points:,} points x {args.dim}: annoy ({args.n_trees} trees) {t_approx:.1f} s, exact {t_exact:.1f} s"
    )
    print(f"recall@{args.k} of annoy against exact search: {recall:.4f}")
    if own_session:
        spark.stop()


if __name__ == "__main__":
    main()
