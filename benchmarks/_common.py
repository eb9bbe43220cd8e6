"""What every benchmark group shares: rows and timing, the Spark session, Parquet writers, the report and the CLI.

A group is a module with ``NAME`` (its ``--only`` name), ``DEFAULT`` (whether a plain ``run.py`` runs it),
``bench(args, tmp, rows)`` (appends its :class:`Row` objects), ``targets(rows)`` (its targets, as
:class:`Targets` lines) and ``add_arguments(parser)`` (its sizes and their ``--quick`` values). ``run.py``
runs every group; each group module runs alone with the same options (``python benchmarks/knn.py --quick``).
"""

from __future__ import annotations

import argparse
import datetime
import os
import platform
import sys
import tempfile
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from types import ModuleType

import cloudpickle
import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
from pyspark import cloudpickle as pyspark_cloudpickle
from pyspark.sql import SparkSession

import sklspark

RESULTS = Path(__file__).resolve().parent / "results"


@dataclass
class Row:
    group: str
    variant: str
    seconds: float
    note: str = ""
    extra: dict = field(default_factory=dict)


def timed(fn: Callable[[], object]) -> float:
    start = time.perf_counter()
    fn()
    return time.perf_counter() - start


def best_of(repeat: int, fn: Callable[[], object], warm_up: bool = False) -> float:
    """The shortest of ``repeat`` timed runs of ``fn`` (the machine is shared: the minimum is the least noisy).

    ``warm_up``: run ``fn`` once, untimed, first (Python workers started, models loaded, files cached).
    """
    if warm_up:
        fn()
    return min(timed(fn) for _ in range(max(1, repeat)))


class Sessions:
    """One Spark session at a time: the running one while ``master`` and ``conf`` stay the same, else a new one."""

    def __init__(self) -> None:
        self._started: tuple | None = None

    def get(self, master: str, **conf: str) -> SparkSession:
        """A session on ``master`` with ``conf`` and its Python workers started."""
        active = SparkSession.getActiveSession()
        wanted = (master, sorted(conf.items()))
        if active is not None and self._started == wanted:
            return active
        if active is not None:
            active.stop()
        spark = sklspark.spark_session(
            master,
            app_name="sklspark-benchmarks",
            conf={
                "spark.ui.enabled": "false",
                "spark.ui.showConsoleProgress": "false",
                "spark.driver.memory": "6g",
                **conf,
            },
        )
        spark.sparkContext.setLogLevel("FATAL")
        spark.range(100, numPartitions=4).rdd.map(lambda r: r).count()  # start the Python workers
        self._started = wanted
        return spark


#: The benchmarks' one session cache: groups on the same master and conf share a session.
session = Sessions().get


def write_features(path: Path, X: np.ndarray, partitions: int, row_group_rows: int | None = None) -> None:
    """A Parquet data set with ``id`` and an ``array<float>`` column ``features``, in ``partitions`` files.

    ``row_group_rows`` caps a row group (Spark splits one file into tasks by row groups); by default a
    file is one row group of up to 1,048,576 rows.
    """
    path.mkdir(parents=True, exist_ok=True)
    for i, part in enumerate(np.array_split(np.arange(len(X)), partitions)):
        width = X.shape[1]
        values = pa.array(X[part].ravel())
        column = pa.ListArray.from_arrays(pa.array(np.arange(len(part) + 1) * width, type=pa.int32()), values)
        table = pa.table({"id": pa.array(part), "features": column})
        pq.write_table(table, path / f"part-{i:03d}.parquet", row_group_size=row_group_rows)


def noop(df) -> None:
    df.write.format("noop").mode("overwrite").save()


def add_string_columns(path: Path, wide: Path, n_columns: int = 30, width: int = 30) -> None:
    """A copy of the Parquet data set at ``path`` with ``n_columns`` string columns of ``width`` bytes each."""
    wide.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(3)
    for file in sorted(path.glob("*.parquet")):
        parquet = pq.ParquetFile(file)
        table = parquet.read()
        for c in range(n_columns):  # 1,000 distinct values per column, like a label or a code
            values = pa.array([f"{c:02d}-{v:0{width - 3}d}" for v in range(1000)])
            table = table.append_column(f"s{c:02d}", values.take(pa.array(rng.integers(0, 1000, table.num_rows))))
        pq.write_table(table, wide / file.name, row_group_size=parquet.metadata.row_group(0).num_rows)


def clustered(n_rows: int, dim: int) -> np.ndarray:
    """``n_rows`` float32 points around 50 random centres (scale 4) with unit Gaussian noise."""
    rng = np.random.default_rng(0)
    centres = rng.normal(scale=4.0, size=(50, dim))
    return (centres[rng.integers(0, 50, n_rows)] + rng.normal(size=(n_rows, dim))).astype(np.float32)


# ------------------------------------------------------------------------------------- targets


def find(rows: list[Row], group_prefix: str, variant_prefix: str) -> Row | None:
    return next((r for r in rows if r.group.startswith(group_prefix) and r.variant.startswith(variant_prefix)), None)


class Targets:
    """A group's target lines ``(text, measured, met)``, from the rows it finds."""

    def __init__(self, rows: list[Row]) -> None:
        self.rows = rows
        self.lines: list[tuple[str, str, bool]] = []

    def find(self, group_prefix: str, variant_prefix: str) -> Row | None:
        return find(self.rows, group_prefix, variant_prefix)

    @staticmethod
    def ratio(a: Row | None, b: Row | None) -> float | None:
        return a.seconds / b.seconds if a and b and b.seconds else None

    def add(self, text: str, value: float | None, ok: Callable[[float], bool], fmt: str = ".2f") -> None:
        if value is not None:
            self.lines.append((text, f"{value:{fmt}}", ok(value)))


# ------------------------------------------------------------------------------------- reporting


def blas_pools() -> str:
    """The native thread pools loaded in this process: library, API, CPU kernel and threads, from threadpoolctl."""
    from threadpoolctl import threadpool_info

    return "; ".join(
        f"{Path(i['filepath']).name} ({i['internal_api']}, {i.get('architecture', '?')}, {i['num_threads']} threads)"
        for i in threadpool_info()
    )


def cpu_name() -> str:
    """The CPU's model name (``/proc/cpuinfo``; the machines benchmarks run on are not all the same)."""
    try:
        with open("/proc/cpuinfo") as cpuinfo:
            line = next((line for line in cpuinfo if line.startswith("model name")), "")
    except OSError:
        line = ""
    return line.split(":", 1)[1].strip() if ":" in line else platform.processor() or "unknown CPU"


def report(rows: list[Row], groups: Sequence[ModuleType], args, elapsed: float) -> str:
    lines = [
        f"# sklspark benchmarks ({'quick smoke run' if args.quick else 'default sizes'})",
        "",
        f"{datetime.date.today()}, {platform.machine()} ({cpu_name()}), {os.cpu_count()} cores, "
        f"Python {platform.python_version()}, "
        f"Spark local[2] unless noted; whole run {elapsed / 60:.1f} min; load average at the end "
        f"{', '.join(f'{v:.1f}' for v in os.getloadavg())} (a shared machine: times are noisy). "
        "Ratio = time / the group's baseline (lower is faster); speed-up = baseline time / time.",
        "",
        f"BLAS and OpenMP pools in the driver (threadpoolctl; the workers load the same libraries): {blas_pools()}.",
    ]
    for group in dict.fromkeys(r.group for r in rows):
        members = [r for r in rows if r.group == group]
        lines += ["", f"## {group}", ""]
        if "memory" in group:
            lines += ["| variant | peak RSS (MB) |", "| --- | ---: |"]
            lines += [f"| {r.variant} | {r.extra['mb']:.0f} |" for r in members]
            continue
        base = members[0].seconds
        lines += ["| variant | time (s) | ratio to baseline | note |", "| --- | ---: | ---: | --- |"]
        lines += [f"| {r.variant} | {r.seconds:.2f} | {r.seconds / base:.2f} | {r.note} |" for r in members]
    lines += ["", "## Targets", "", "| target | measured | met |", "| --- | ---: | :---: |"]
    for module in groups:
        lines += [f"| {text} | {value} | {'yes' if ok else '**no**'} |" for text, value, ok in module.targets(rows)]
    return "\n".join(lines) + "\n"


def plot(rows: list[Row], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    timed_rows = [r for r in rows if "memory" not in r.group]
    if not timed_rows:
        return
    groups = list(dict.fromkeys(r.group for r in timed_rows))
    fig, axes = plt.subplots(len(groups), 1, figsize=(11, 2.2 + 0.45 * len(timed_rows)), squeeze=False)
    for ax, group in zip(axes[:, 0], groups):
        members = [r for r in timed_rows if r.group == group]
        ratios = [r.seconds / members[0].seconds for r in members]
        ax.barh([r.variant for r in members][::-1], ratios[::-1], color="#4477aa")
        ax.set_xscale("log")
        ax.axvline(1.0, color="black", linewidth=0.8)
        ax.set_title(group, fontsize=9)
        ax.tick_params(labelsize=8)
        ax.set_xlabel("time / baseline (log scale, lower is faster)", fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=110)


# ------------------------------------------------------------------------------------- the CLI


def main(groups: Sequence[ModuleType], argv: list[str] | None = None, default_name: str = "default") -> None:
    """Run ``groups`` (all, or those named by ``--only``) with the shared options; write the report and chart."""
    parser = argparse.ArgumentParser(description="Side-by-side benchmarks of sklspark against its peers")
    parser.add_argument("--quick", action="store_true", help="tiny sizes, fewer variants: a smoke test")
    parser.add_argument("-k", type=int, default=10)
    parser.add_argument("--knn-dim", type=int, default=64, help="dimension of the dense kNN groups")
    parser.add_argument("--naive-sample", type=int, default=2_000)
    parser.add_argument("--name", default=None, help=f"results file name (default: {default_name} or quick)")
    names = [g.NAME for g in groups]
    parser.add_argument(
        "--only",
        choices=names,
        action="append",
        help="run only these groups (repeatable); approximate (1,000,000 rows, hnsw) runs only when named or --quick",
    )
    for group in groups:
        group.add_arguments(parser)
    args = parser.parse_args(argv)
    if args.quick:
        args.naive_sample = 200
        for group in groups:
            group.quick(args)
    name = args.name or ("quick" if args.quick else default_name)
    chosen = [g for g in groups if g.NAME in args.only] if args.only else groups
    if not args.only and not args.quick and len(groups) > 1:
        chosen = [g for g in groups if g.DEFAULT]

    for group in chosen:  # a group's classes (TimedHnsw) reach the workers by value: they cannot import it
        if group.__name__ != "__main__":
            pyspark_cloudpickle.register_pickle_by_value(group)
            cloudpickle.register_pickle_by_value(group)
    rows: list[Row] = []
    start = time.perf_counter()
    with tempfile.TemporaryDirectory(prefix="sklspark-bench-") as tmp:
        for group in chosen:
            group.bench(args, Path(tmp), rows)
            print(f"[bench] {group.NAME} done at {time.perf_counter() - start:.0f}s", file=sys.stderr)
    text = report(rows, chosen, args, time.perf_counter() - start)
    RESULTS.mkdir(exist_ok=True)
    (RESULTS / f"{name}.md").write_text(text)
    plot(rows, RESULTS / f"{name}.png")
    print(text)
