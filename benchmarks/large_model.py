"""A model of several hundred MB through distribute(): serialisation time and peak memory, per shipping way.

    python benchmarks/large_model.py                 # NearestNeighbors over 2,000,000 x 64 float32 (~490 MiB)
    python benchmarks/large_model.py --rows 100000   # smaller (its smoke test, marked slow, uses 20,000)

Each shipping way runs in a fresh driver process on ``local[2]`` (peak RSS is a high-water mark, so
the ways must not share a process): ``broadcast`` (forced, whatever the size) and ``file`` (what
sklspark does above ``sklspark._shipping.BROADCAST_MAX_BYTES``). Reported: the pickled size, the
time to serialise and ship it, the job's time, and the peak resident memory of the driver's Python
process, of the JVM (in local mode the driver and the executor share it) and of each Python worker.
The results must equal the in-process ``kneighbors``. Writes ``benchmarks/results/large_model.md``.
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

RESULTS = Path(__file__).resolve().parent / "results"
WAYS = ("broadcast", "file")


def _peak_mb() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def _jvm_peak_mb(spark) -> float:
    pid = spark.sparkContext._jvm.ProcessHandle.current().pid()
    with open(f"/proc/{pid}/status") as status:
        line = next(line for line in status if line.startswith("VmHWM"))
    return int(line.split()[1]) / 1024


def measure(way: str, rows: int, queries: int, k: int) -> dict:
    """One shipping way, in this (fresh) process; returns the figures as a dict."""
    import cloudpickle
    from sklearn.neighbors import NearestNeighbors

    import sklspark
    import sklspark._shipping as shipping

    rng = np.random.default_rng(0)
    R = rng.standard_normal((rows, 64), dtype=np.float32)
    Q = rng.standard_normal((queries, 64), dtype=np.float32)
    nn = NearestNeighbors(n_neighbors=k, algorithm="brute").fit(R)
    spark = sklspark.spark_session(
        "local[2]", conf={"spark.ui.enabled": "false", "spark.ui.showConsoleProgress": "false"}
    )
    spark.sparkContext.setLogLevel("FATAL")
    before = _peak_mb()

    with tempfile.TemporaryDirectory() as tmp:  # as ShippedModel does it: pickled straight to a file
        start = time.perf_counter()
        with open(os.path.join(tmp, "model.pkl"), "wb") as f:
            cloudpickle.dump(nn, f)
        serialise = time.perf_counter() - start
        nbytes = os.path.getsize(f.name)
    shipping.BROADCAST_MAX_BYTES = nbytes if way == "broadcast" else 0

    def drain(items):
        items = list(items)
        yield os.getpid(), _peak_mb(), items

    rdd = spark.sparkContext.parallelize(list(Q), 4)
    start = time.perf_counter()
    out = sklspark.distribute(nn, "kneighbors", rdd, chunk_size=1024)  # validates, serialises and ships
    ship = time.perf_counter() - start
    start = time.perf_counter()
    parts = out.mapPartitions(drain).collect()
    job = time.perf_counter() - start
    indices = np.array([item[1] for _, _, items in parts for item in items])
    assert np.array_equal(indices, nn.kneighbors(Q)[1]), "results differ from in-process"
    per_worker: dict[int, float] = {}
    for pid, mb, _ in parts:
        per_worker[pid] = max(per_worker.get(pid, 0.0), mb)
    figures = {
        "way": way,
        "model_mib": nbytes / 2**20,
        "serialise_s": serialise,
        "ship_s": ship,
        "job_s": job,
        "driver_python_mb": _peak_mb(),
        "driver_python_before_mb": before,
        "jvm_mb": _jvm_peak_mb(spark),
        "worker_mb": sorted(per_worker.values()),
    }
    spark.stop()
    return figures


def report(results: list[dict], rows: int, queries: int, k: int) -> str:
    model = results[0]["model_mib"]
    lines = [
        f"# A large model through distribute(): NearestNeighbors over {rows:,} x 64 float32",
        "",
        f"Pickled size {model:.0f} MiB; {queries:,} queries, k={k}, `local[2]` (default 1 GiB driver memory), "
        f"{os.cpu_count()} cores. Peak resident memory (MB); in local mode the driver and the executor share one JVM. "
        '"driver Python before" is the driver\'s peak with the data and the fitted model, before sklspark runs.',
        "",
        "| shipping | serialise to disk (s) | distribute() call: check, serialise, ship (s) | job (s) "
        "| driver Python before | driver Python peak | JVM peak | Python worker peaks |",
        "| --- | ---: | ---: | ---: | ---: | ---: | ---: | --- |",
    ]
    for r in results:
        lines.append(
            f"| {r['way']} | {r['serialise_s']:.2f} | {r['ship_s']:.2f} | {r['job_s']:.1f} | "
            f"{r['driver_python_before_mb']:.0f} | {r['driver_python_mb']:.0f} | {r['jvm_mb']:.0f} | "
            f"{', '.join(f'{mb:.0f}' for mb in r['worker_mb'])} |"
        )
    return "\n".join(lines) + "\n"


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rows", type=int, default=2_000_000)
    parser.add_argument("--queries", type=int, default=4_000)
    parser.add_argument("-k", type=int, default=10)
    parser.add_argument("--way", choices=WAYS, help=argparse.SUPPRESS)  # internal: measure one way, print JSON
    parser.add_argument("--name", default=None, help="results file name (default: large_model)")
    args = parser.parse_args(argv)
    if args.way:
        print(json.dumps(measure(args.way, args.rows, args.queries, args.k)))
        return
    results = []
    for way in WAYS:
        proc = subprocess.run(
            [
                sys.executable,
                __file__,
                "--way",
                way,
                "--rows",
                str(args.rows),
                "--queries",
                str(args.queries),
                "-k",
                str(args.k),
            ],
            capture_output=True,
            text=True,
            check=False,
        )
        if proc.returncode:
            raise SystemExit(f"measuring {way} failed:\n{proc.stderr[-4000:]}")
        results.append(json.loads(proc.stdout.strip().splitlines()[-1]))
    text = report(results, args.rows, args.queries, args.k)
    name = args.name or "large_model"
    RESULTS.mkdir(exist_ok=True)
    (RESULTS / f"{name}.md").write_text(text)
    print(text)


if __name__ == "__main__":
    main()
