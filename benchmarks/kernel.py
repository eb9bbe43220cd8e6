"""The in-process exact kNN kernel against the machine and its peers, in one run (issue 20, items 2 and 4).

    python benchmarks/kernel.py            # 100,000 x 64 float32, k=10 (a few minutes on 2 cores)
    python benchmarks/kernel.py --quick    # 4,000 x 64 (smoke test, seconds)

Reports, in one process and one run:

* numpy SGEMM GFLOP/s at the square shape (4096^3) and at the kernel's tile shape (256 x 1024 x 65), the
  tile once as one multi-threaded BLAS call per tile and once as the kernel runs it (one single-threaded
  call per core, from Python threads), and the BLAS kernel each library runs (``threadpoolctl``);
* the *floor*: the useful ``2 n^2 d`` flops of all-pairs at the best of those rates;
* the built-in ``gemm`` kernel alone (``GemmBackend.search``, k + 4 candidates) and with the exact float64
  re-rank (``exact_top_k``), on a slice of the queries, then on all rows searched as the reference's own
  (``GemmBackend.search_own``: each pair of rows multiplied once, as all-pairs allows), scikit-learn brute
  force (float32) and faiss ``IndexFlatL2`` (if importable),
  each with its useful GFLOP/s and its ratio to the floor;
* the clustered exact search on a Gaussian mixture against forced brute force, and the automatic choice on
  uniform data (which must fall back) against forced brute force, each with its build time and the pairs
  scored.

numpy's OpenBLAS reads ``OPENBLAS_CORETYPE`` and ``OPENBLAS_L2_SIZE`` when it loads: if either is set, the
script runs itself again without them (this run only), so that numpy runs the kernel OpenBLAS picks for
this CPU. Writes ``benchmarks/results/kernel.md`` (``--quick``: ``kernel-quick.md``, or ``--out``).
"""

from __future__ import annotations

import argparse
import datetime
import os
import platform
import sys
import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

_OPENBLAS_VARIABLES = ("OPENBLAS_CORETYPE", "OPENBLAS_L2_SIZE")
if __name__ == "__main__" and any(v in os.environ for v in _OPENBLAS_VARIABLES):
    unset = {v: os.environ[v] for v in _OPENBLAS_VARIABLES if v in os.environ}
    env = {k: v for k, v in os.environ.items() if k not in _OPENBLAS_VARIABLES}
    env["SKLSPARK_KERNEL_UNSET"] = ", ".join(f"{k}={v}" for k, v in unset.items())
    os.execve(sys.executable, [sys.executable, *sys.argv], env)

import numpy as np  # noqa: E402  (after the re-exec: OpenBLAS reads its variables when numpy loads it)
from _common import cpu_name  # noqa: E402
from sklearn.neighbors import NearestNeighbors  # noqa: E402
from threadpoolctl import threadpool_info, threadpool_limits  # noqa: E402

import sklspark.neighbors._clustered as clustered_module  # noqa: E402
from sklspark.neighbors import GemmBackend  # noqa: E402
from sklspark.neighbors._gemm import REFERENCE_TILE  # noqa: E402
from sklspark.neighbors._rerank import EXACT_MARGIN, exact_top_k  # noqa: E402

RESULTS = Path(__file__).resolve().parent / "results"


def best_time(fn: Callable[[], object], repeat: int = 1) -> float:
    best = np.inf
    for _ in range(repeat):
        start = time.perf_counter()
        fn()
        best = min(best, time.perf_counter() - start)
    return float(best)


def sgemm_rate(shape: tuple[int, int, int], work: float, per_core: bool = False) -> float:
    """GFLOP/s of ``A @ B.T`` (float32) at shape ``m x n x k``, best of 3 runs of about ``work`` flops each.

    ``per_core``: one product per core at once, each single-threaded (how the kernel runs its tiles).
    """
    m, n, k = shape
    rng = np.random.default_rng(0)
    A, B = rng.random((m, k), dtype=np.float32), rng.random((n, k), dtype=np.float32)
    cores = os.cpu_count() or 1
    outs = [np.empty((m, n), dtype=np.float32) for _ in range(cores)]
    flops = 2.0 * m * n * k
    reps = max(2, int(work / flops))
    if per_core:
        per = max(1, reps // cores)
        with threadpool_limits(1, user_api="blas"), ThreadPoolExecutor(cores) as pool:
            seconds = best_time(
                lambda: list(pool.map(lambda o: [np.matmul(A, B.T, out=o) for _ in range(per)], outs)), 3
            )
        return flops * per * cores / seconds / 1e9
    np.matmul(A, B.T, out=outs[0])
    seconds = best_time(lambda: [np.matmul(A, B.T, out=outs[0]) for _ in range(reps)], 3)
    return flops * reps / seconds / 1e9


def blas_kernels() -> str:
    """Each loaded BLAS library's kernel (architecture) and threads, by the package that brought it."""
    parts = []
    for info in threadpool_info():
        if info["user_api"] != "blas":
            continue
        owner = Path(info["filepath"]).parent.name.replace(".libs", "").replace("_", "-")
        parts.append(
            f"{owner}: {info['internal_api']} {info.get('version')} {info.get('architecture')}, "
            f"{info['num_threads']} threads"
        )
    return "; ".join(parts)


def mixture(n: int, d: int, clusters: int, seed: int = 0) -> np.ndarray:
    """A Gaussian mixture: centres N(0, 10^2), unit spread around them."""
    rng = np.random.default_rng(seed)
    centres = rng.normal(scale=10.0, size=(clusters, d))
    return (centres[rng.integers(0, clusters, n)] + rng.normal(size=(n, d))).astype(np.float32)


def exact_search(X: np.ndarray, k: int, clustered: bool | str) -> tuple[float, float, GemmBackend, np.ndarray]:
    """(build seconds, search + re-rank seconds, backend, positions) of all-pairs top ``k`` with the gemm backend."""
    backend = GemmBackend(clustered=clustered)
    build = best_time(lambda: backend.build(X, "euclidean"))
    found = {}
    search = best_time(lambda: found.setdefault("p", exact_top_k(backend, X, np.arange(len(X)), X, k, "euclidean")))
    return build, search, backend, found["p"][0]


def main(argv: list[str] | None = None) -> Path:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--quick", action="store_true", help="tiny sizes (smoke test)")
    parser.add_argument("--rows", type=int, default=None, help="rows of the all-pairs runs (default 100,000)")
    parser.add_argument("--dim", type=int, default=64)
    parser.add_argument("--k", type=int, default=10)
    parser.add_argument("--clusters", type=int, default=None, help="mixture components (default sqrt(rows))")
    parser.add_argument("--slice", type=int, default=None, help="query rows per variant (default rows / 5)")
    parser.add_argument("--repeat", type=int, default=3, help="repetitions per variant (best kept)")
    parser.add_argument("--out", type=Path, default=None, help="markdown file to write")
    args = parser.parse_args(argv)
    n = args.rows or (4000 if args.quick else 100_000)
    d, k = args.dim, args.k
    out = args.out or RESULTS / ("kernel-quick.md" if args.quick else "kernel.md")
    useful = 2.0 * n * n * d
    rng = np.random.default_rng(1)
    X = rng.random((n, d), dtype=np.float32)
    lines: list[str] = []

    def row(label: str, seconds: float, now: float, note: str = "") -> None:
        rate = useful / seconds / 1e9
        lines.append(f"| {label} | {seconds:.2f} | {rate:.0f} | {seconds / floor:.2f} | {now:.2f} | {note} |")
        print(lines[-1], flush=True)

    load_before = os.getloadavg()
    n_slice = min(n, args.slice or (n if args.quick else n // 5))
    square = 1024 if args.quick else 4096
    work = 2e9 if args.quick else 5e10
    threads = max(i["num_threads"] for i in threadpool_info() if i["user_api"] == "blas")
    tile = (256, REFERENCE_TILE, d + 1)
    rates = {
        f"square {square}^3, one BLAS call ({threads} threads)": sgemm_rate((square,) * 3, work),
        f"tile {tile[0]} x {tile[1]} x {tile[2]}, one BLAS call per tile": sgemm_rate(tile, work),
        f"tile {tile[0]} x {tile[1]} x {tile[2]}, one single-threaded call per core (as the kernel)": sgemm_rate(
            tile, work, per_core=True
        ),
        f"tile 256 x {REFERENCE_TILE} x {d}, one single-threaded call per core": sgemm_rate(
            (256, REFERENCE_TILE, d), work, per_core=True
        ),
    }
    best = max(rates.values())
    floor = useful / (best * 1e9)
    lines += [
        f"# Exact kNN kernel: {n:,} x {d} float32, all pairs, k={k}",
        "",
        f"Run {datetime.datetime.now(datetime.timezone.utc):%Y-%m-%d %H:%M} UTC on {platform.machine()} "
        f"({cpu_name()}), {os.cpu_count()} cores, Python {platform.python_version()}, numpy {np.__version__}. "
        f"Load average before: {load_before[0]:.2f}; the machine is shared, so times are noisy.",
        "",
        f"OpenBLAS variables unset for this run: {os.environ.get('SKLSPARK_KERNEL_UNSET', 'none were set')}.",
        "",
        "## numpy SGEMM",
        "",
        "| shape | GFLOP/s |",
        "| --- | ---: |",
        *[f"| {label} | {rate:.0f} |" for label, rate in rates.items()],
        "",
        f"Floor: 2·n²·d = {useful / 1e12:.2f} TFLOP at the best rate ({best:.0f} GFLOP/s) = **{floor:.2f} s**.",
        "",
        "## All pairs, top k",
        "",
        f"Each variant searches {n_slice:,} query rows against all {n:,} (times scaled to all {n:,}; the own-rows "
        f"variants search all {n:,} rows, unscaled), best of "
        f"{args.repeat}; *x floor now*: against the square SGEMM rate measured right before the same repetition.",
        "",
        "| variant | seconds | useful GFLOP/s | x floor | x floor now | note |",
        "| --- | ---: | ---: | ---: | ---: | --- |",
    ]
    print("\n".join(lines), flush=True)

    # each variant on a slice of the queries (the search is linear in them), best of --repeat, the square SGEMM
    # measured again right before each repetition: "x floor now" compares the two under the same load
    Q = X[:n_slice]
    scale = n / len(Q)

    def measure(label: str, fn: Callable[[], object], note: str = "", every_row: bool = False) -> None:
        seconds, now = np.inf, np.inf
        for _ in range(args.repeat):
            rate = sgemm_rate((square,) * 3, work / 5)
            t = best_time(fn) * (1.0 if every_row else scale)
            seconds, now = min(seconds, t), min(now, t / (useful / (rate * 1e9)))
        row(label, seconds, now, note)

    backend = GemmBackend(clustered=False)
    backend.build(X, "euclidean")
    measure(
        "sklspark gemm kernel alone (GemmBackend.search, k + 4 candidates)", lambda: backend.search(Q, k + EXACT_MARGIN)
    )
    keys = np.arange(n)
    measure(
        "sklspark gemm kernel + exact float64 re-rank (exact_top_k)",
        lambda: exact_top_k(backend, X, keys, Q, k, "euclidean"),
        "what a task runs",
    )
    everything = slice(0, n)
    measure(
        f"sklspark gemm kernel alone, all {n:,} rows as its own queries (GemmBackend.search_own)",
        lambda: backend.search_own(X, everything, k + EXACT_MARGIN),
        "each pair multiplied once",
        every_row=True,
    )
    measure(
        f"sklspark gemm kernel + exact float64 re-rank, all {n:,} rows as its own queries",
        lambda: exact_top_k(backend, X, keys, everything, k, "euclidean"),
        "all pairs in one process",
        every_row=True,
    )
    nn = NearestNeighbors(n_neighbors=k, algorithm="brute").fit(X)
    measure("scikit-learn brute force (float32)", lambda: nn.kneighbors(Q))
    try:
        from sklspark.neighbors._backends import import_faiss

        faiss = import_faiss()
    except ImportError:
        lines.append("| faiss IndexFlatL2 | - | - | - | - | not installed |")
    else:
        index = faiss.IndexFlatL2(d)
        index.add(X)
        measure("faiss IndexFlatL2", lambda: index.search(Q, k), f"faiss {faiss.__version__}")
    lines += ["", f"BLAS kernels (threadpoolctl): {blas_kernels()}.", ""]

    clusters = args.clusters or int(np.sqrt(n))
    if args.quick:  # let the small quick run try the clustered search too
        clustered_module.MIN_ROWS = min(clustered_module.MIN_ROWS, n // 2)
    M = mixture(n, d, clusters)
    lines += [
        "## Clustered exact search against brute force",
        "",
        "Gaussian mixture: centres N(0, 10²), unit spread. Uniform: the rows above. Times include build().",
        "",
        "| data | search | build s | search + re-rank s | total s | pairs scored / n² | total / brute |",
        "| --- | --- | ---: | ---: | ---: | ---: | ---: |",
    ]
    for label, data in ((f"mixture of {clusters:,} clusters", M), ("uniform", X)):
        b0, s0, brute, p0 = exact_search(data, k, False)
        b1, s1, auto, p1 = exact_search(data, k, "auto")
        same = "identical" if np.array_equal(p0, p1) else "DIFFERENT"
        for name, b, s, be in (
            ("brute force", b0, s0, brute),
            (f"auto ({'clustered' if auto.clustered else 'brute'})", b1, s1, auto),
        ):
            lines.append(
                f"| {label} | {name} | {b:.2f} | {s:.2f} | {b + s:.2f} | {be.pairs_scored / n / n:.3f} | "
                f"{(b + s) / (b0 + s0):.2f} |"
            )
            print(lines[-1], flush=True)
        lines.append(f"| {label} | positions | | | | | {same} |")
    load_after = os.getloadavg()
    lines += ["", f"Load average after: {load_after[0]:.2f}.", ""]
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text("\n".join(lines) + "\n")
    print(f"wrote {out}")
    return out


if __name__ == "__main__":
    main()
