"""Approximate kNN of every point at scale: the hnsw backend from ONE Parquet file, end to end, and its recall.

python benchmarks/approximate.py [--approx-rows N] [--name approximate]   # 1,000,000 points, about 10 minutes
"""

from __future__ import annotations

import sys
import time
from pathlib import Path

import numpy as np
import pyarrow.parquet as pq
from _common import Row, Targets, clustered, session, timed, write_features

from sklspark.neighbors import HnswBackend, all_neighbors

NAME = "approximate"
DEFAULT = False  # 1,000,000 points: only when named (or at --quick sizes)


def add_arguments(parser) -> None:
    parser.add_argument("--approx-rows", type=int, default=1_000_000, help="rows of the approximate group")
    parser.add_argument("--approx-sample", type=int, default=10_000, help="rows whose recall is measured")
    parser.add_argument("--hnsw-m", type=int, default=32)
    parser.add_argument("--hnsw-ef-construction", type=int, default=40)
    parser.add_argument("--hnsw-ef-search", type=int, default=128)


def quick(args) -> None:
    args.approx_rows, args.approx_sample = 20_000, 1_000


def bench(args, tmp: Path, rows: list[Row]) -> None:
    """``all_neighbors`` with the hnsw backend from ONE Parquet file, end to end, and its recall@k on a sample.

    Recall is measured against the exact top ``k`` (in-process gemm kernel + exact re-rank, the query
    itself left out as ``exclude_self`` does) of a random sample of rows, read back from the written result.
    """
    from sklspark.neighbors import GemmBackend, _join
    from sklspark.neighbors._rerank import exact_top_k

    n, k = args.approx_rows, args.k
    group = f"Approximate kNN all points ({n:,} x {args.knn_dim} float32, k={k}, Euclidean, hnsw)"
    X = clustered(n, args.knn_dim)
    one_file = tmp / "approximate-one-file.parquet"
    write_features(one_file, X, partitions=1)
    sample = np.sort(np.random.default_rng(5).choice(n, min(n, args.approx_sample), replace=False))

    exact = {}
    backend = GemmBackend()
    backend.build(X, "euclidean")
    t = timed(lambda: exact.setdefault("p", exact_top_k(backend, X, np.arange(n), X[sample], k + 1, "euclidean")[0]))
    rows.append(
        Row(
            group,
            f"exact search (in-process gemm kernel + exact re-rank), {len(sample):,} rows, extrapolated",
            t * n / len(sample),
            f"baseline: {t:.1f} s measured on {len(sample):,} query rows x {n:,}, scaled to every row",
        )
    )
    expected = [[p for p in row if p != i][:k] for i, row in zip(sample, exact["p"])]

    spark = session("local[2]")
    hnsw = TimedHnsw(M=args.hnsw_m, ef_construction=args.hnsw_ef_construction, ef_search=args.hnsw_ef_search)
    df = spark.read.parquet(str(one_file))
    size = _join._estimated_bytes(df)
    mode = "broadcast" if size is not None and size <= _join.REFERENCE_BROADCAST_MAX_BYTES else "sharded"
    mode = f"{mode} mode (Spark estimates the file at {(size or 0) / 2**20:.0f} MiB)"
    out = tmp / "approximate-neighbours.parquet"
    t = timed(lambda: all_neighbors(df, k, backend=hnsw).write.mode("overwrite").parquet(str(out)))
    table = pq.read_table(out, columns=["id", "neighbor_ids"])
    got = dict(zip(table.column("id").to_pylist(), table.column("neighbor_ids").to_pylist()))
    recall = float(np.mean([len(set(got[i]) & set(e)) / k for i, e in zip(sample.tolist(), expected)]))
    params = f"M={hnsw.M}, ef_construction={hnsw.ef_construction}, ef_search={hnsw.ef_search}"
    rows.append(
        Row(
            group,
            "sklspark all_neighbors from ONE Parquet file, hnsw backend, written to Parquet",
            t,
            f"end to end, {mode}; recall@{k} = {recall:.4f} on {len(sample):,} rows; {params}",
            extra={"recall": recall},
        )
    )
    if BUILD_SECONDS:  # the graph is built on the driver in broadcast mode
        build = BUILD_SECONDS[-1]
        rows.append(Row(group, "  of which: HNSW graph build on the driver (2 threads)", build))
        rows.append(Row(group, "  of which: everything else (read, collect, ship, search, re-rank, write)", t - build))


#: How long each build of a :class:`TimedHnsw` took (on the driver, in broadcast mode), in seconds.
BUILD_SECONDS: list[float] = []


class TimedHnsw(HnswBackend):
    """The hnsw backend, timing its builds: a backend through the plugin interface like any user's."""

    def build(self, X: np.ndarray, metric: str) -> None:
        start = time.perf_counter()
        super().build(X, metric)
        BUILD_SECONDS.append(time.perf_counter() - start)


def targets(rows: list[Row]) -> list[tuple[str, str, bool]]:
    t = Targets(rows)
    approximate = t.find("Approximate kNN", "sklspark all_neighbors")
    if approximate is not None:
        t.add(
            "approximate all_neighbors (hnsw) end to end, seconds <= 600",
            approximate.seconds,
            lambda v: v <= 600,
            ".0f",
        )
        recall = approximate.extra["recall"]
        t.add("approximate all_neighbors (hnsw) recall@10 >= 0.95", recall, lambda v: v >= 0.95, ".4f")
    return t.lines


if __name__ == "__main__":
    from _common import main

    main([sys.modules[__name__]], sys.argv[1:], default_name=NAME)
