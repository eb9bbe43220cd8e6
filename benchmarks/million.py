"""Exact all_neighbors of 1,000,000 x 64 float32 (k=10) from ONE Parquet file on local[2] (issue 20, item 1).

    python benchmarks/million.py                 # in-process slice: 10,000 queries x 1,000,000, extrapolated
    python benchmarks/million.py --spark         # the full run end to end on local[2] (tens of minutes)
    python benchmarks/million.py --data mixture  # a Gaussian mixture of 1,000 clusters instead of uniform data

Not part of the test suite. The slice runs the in-process exact search as a Spark task runs it (the
``gemm`` backend and the exact float64 re-rank on chunks of 4,096 queries, two Python threads of one BLAS
thread each, one per core) on ``--slice`` query rows against the whole reference, and scales the time to
every row: the search is linear in the queries. ``--spark`` runs ``all_neighbors`` from one Parquet file
end to end (writing its result to Parquet) and checks ``--verify`` sampled rows against the in-process
exact search (the gemm kernel with the exact re-rank, itself checked against numpy brute force, ties
included, in ``tests/test_kernel.py``). Writes ``benchmarks/results/million-<data>.md``.
"""

from __future__ import annotations

import argparse
import datetime
import os
import tempfile
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
from _common import cpu_name
from threadpoolctl import threadpool_limits

from sklspark.neighbors import GemmBackend
from sklspark.neighbors._rerank import exact_top_k

RESULTS = Path(__file__).resolve().parent / "results"
CHUNK = 4096


def make_data(n: int, d: int, kind: str, clusters: int) -> np.ndarray:
    rng = np.random.default_rng(7)
    if kind == "uniform":
        return rng.random((n, d), dtype=np.float32)
    centres = rng.normal(scale=10.0, size=(clusters, d)).astype(np.float32)
    X = centres[rng.integers(0, clusters, n)]
    X += rng.standard_normal((n, d), dtype=np.float32)
    return X


def in_process(X: np.ndarray, queries: np.ndarray, k: int, clustered: bool | str) -> tuple[float, float, GemmBackend]:
    """(build s, search s, backend): ``k + 1`` nearest (the query itself among them) of ``X[queries]``, as tasks do."""
    backend = GemmBackend(clustered=clustered)
    start = time.perf_counter()
    backend.build(X, "euclidean")
    build = time.perf_counter() - start
    keys = np.arange(len(X))
    chunks = [queries[i : i + CHUNK] for i in range(0, len(queries), CHUNK)]
    start = time.perf_counter()
    with threadpool_limits(1), ThreadPoolExecutor(os.cpu_count() or 1) as pool:
        list(pool.map(lambda q: exact_top_k(backend, X, keys, X[q], k + 1, "euclidean"), chunks))
    return build, time.perf_counter() - start, backend


def spark_run(X: np.ndarray, k: int, verify: int, tmp: Path) -> tuple[float, str]:
    """``all_neighbors`` from one Parquet file on local[2], end to end; the check of ``verify`` sampled rows."""
    import sklspark
    from sklspark.neighbors import all_neighbors

    path = tmp / "points.parquet"
    width = X.shape[1]
    values = pa.ListArray.from_arrays(pa.array(np.arange(len(X) + 1) * width, type=pa.int32()), pa.array(X.ravel()))
    pq.write_table(pa.table({"id": pa.array(np.arange(len(X))), "features": values}), path)
    spark = sklspark.spark_session(
        "local[2]", conf={"spark.ui.enabled": "false", "spark.driver.memory": "8g"}, app_name="sklspark-million"
    )
    out = str(tmp / "neighbors.parquet")
    start = time.perf_counter()
    all_neighbors(spark.read.parquet(str(path)), k).write.parquet(out)
    seconds = time.perf_counter() - start
    got = pq.read_table(out).to_pandas().set_index("id").sort_index()
    sample = np.sort(np.random.default_rng(9).choice(len(X), min(verify, len(X)), replace=False))
    backend = GemmBackend(clustered=False)
    backend.build(X, "euclidean")
    positions, _ = exact_top_k(backend, X, np.arange(len(X)), X[sample], k + 1, "euclidean")
    expected = [p[p != q][:k] for p, q in zip(positions, sample)]  # exclude_self: the query's own row only
    found = got.loc[sample, "neighbor_ids"]
    same = all(np.array_equal(np.asarray(f), e) for f, e in zip(found, expected))
    spark.stop()
    return seconds, f"{len(sample):,} sampled rows {'identical to' if same else 'DIFFER from'} the in-process search"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--rows", type=int, default=1_000_000)
    parser.add_argument("--dim", type=int, default=64)
    parser.add_argument("--k", type=int, default=10)
    parser.add_argument("--data", choices=["uniform", "mixture"], default="uniform")
    parser.add_argument("--clusters", type=int, default=1000)
    parser.add_argument("--slice", type=int, default=10_000, help="query rows of the in-process slice")
    parser.add_argument("--spark", action="store_true", help="also the full run end to end on local[2]")
    parser.add_argument("--verify", type=int, default=10_000, help="rows checked after the full run")
    parser.add_argument("--skip-brute", action="store_true", help="only the automatic choice in-process")
    args = parser.parse_args()
    n, d, k = args.rows, args.dim, args.k
    X = make_data(n, d, args.data, args.clusters)
    label = "uniform [0, 1)" if args.data == "uniform" else f"Gaussian mixture of {args.clusters:,} clusters"
    lines = [
        f"# Exact all_neighbors of {n:,} x {d} float32 ({label}), k={k}",
        "",
        f"Run {datetime.datetime.now(datetime.timezone.utc):%Y-%m-%d %H:%M} UTC, {cpu_name()}, {os.cpu_count()} cores; "
        f"load average before: {os.getloadavg()[0]:.2f} (a shared machine: times are noisy).",
        "",
        "| variant | build s | search s | rows searched | extrapolated to every row | pairs scored / all |",
        "| --- | ---: | ---: | ---: | ---: | ---: |",
    ]
    queries = np.sort(np.random.default_rng(8).choice(n, min(args.slice, n), replace=False))
    variants = [("gemm, brute force", False), ("gemm, automatic (clustered when it pays)", "auto")]
    for name, clustered in variants[1:] if args.skip_brute else variants:
        build, search, backend = in_process(X, queries, k, clustered)
        total = build + search * n / len(queries)
        mode = "clustered" if backend.clustered else "brute force"
        lines.append(
            f"| in-process {name} ({mode}) | {build:.1f} | {search:.1f} | {len(queries):,} | "
            f"{total:.0f} s ({total / 60:.1f} min) | {backend.pairs_scored / (len(queries) * n):.3f} |"
        )
        print(lines[-1], flush=True)
    useful = 2.0 * n * n * d
    lines += ["", f"Useful work of brute force all pairs: {useful / 1e12:.1f} TFLOP.", ""]
    if args.spark:
        with tempfile.TemporaryDirectory() as tmp:
            seconds, check = spark_run(X, k, args.verify, Path(tmp))
        lines += [
            "| variant | seconds | note |",
            "| --- | ---: | --- |",
            f"| all_neighbors from ONE Parquet file, local[2] | {seconds:.0f} ({seconds / 60:.1f} min) | {check} |",
            "",
        ]
        print(lines[-2], flush=True)
    else:
        lines += [
            "The end-to-end Spark run was not made (`--spark`); the figures above are the in-process search on a",
            "slice of the queries, scaled to every row.",
            "",
        ]
    lines.append(f"Load average after: {os.getloadavg()[0]:.2f}.")
    out = RESULTS / f"million-{args.data}.md"
    out.write_text("\n".join(lines) + "\n")
    print(f"wrote {out}")


if __name__ == "__main__":
    main()
