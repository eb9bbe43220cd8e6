"""The cost of ``on_error="null"``: clean data, and one bad (NaN) row per 10,000, against the default.

    python benchmarks/on_error.py               # 1,000,000 x 32 float32 rows in one Parquet file
    python benchmarks/on_error.py --rows 200000 # smaller, for a busy machine
    python benchmarks/on_error.py --quick       # tiny size: proves the script works

For ``LogisticRegression.predict_proba`` and ``StandardScaler.transform`` over one ``array<float>``
column, three variants read the same file and end with ``write.format("noop")`` (every row computed):
the default (``on_error="raise"``) on clean data, ``on_error="null"`` on the same clean data, and
``on_error="null"`` on a copy with one row of NaN per 10,000 (the default would fail there). Each runs
``--repeats`` times after a warm-up; the best time counts. Targets: clean ``null`` <= 1.05x the default,
dirty ``null`` <= 1.5x. Writes a Markdown table with the load average to ``benchmarks/results/<name>.md``.
"""

from __future__ import annotations

import argparse
import os
import tempfile
from collections.abc import Callable
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
from _common import best_of
from sklearn.linear_model import LogisticRegression
from sklearn.preprocessing import StandardScaler

import sklspark

RESULTS = Path(__file__).resolve().parent / "results"
WIDTH = 32
BAD_EVERY = 10_000


def write_file(path: Path, X: np.ndarray) -> None:
    """``X`` as one Parquet file of one ``array<float>`` column, ``features``."""
    n, width = X.shape
    column = pa.ListArray.from_arrays(pa.array(np.arange(n + 1, dtype=np.int32) * width), pa.array(X.ravel()))
    pq.write_table(pa.table({"features": column}), path)


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rows", type=int, default=1_000_000)
    parser.add_argument("--quick", action="store_true", help="20,000 rows, one repeat")
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--master", default="local[2]")
    parser.add_argument("--name", default=None, help="results file name (default: on_error or on_error-quick)")
    args = parser.parse_args(argv)
    rows, repeats = (20_000, 1) if args.quick else (args.rows, args.repeats)
    name = args.name or ("on_error-quick" if args.quick else "on_error")

    rng = np.random.default_rng(0)
    X = rng.normal(size=(rows, WIDTH)).astype(np.float32)
    y = X[:, 0] + X[:, 1] > 0
    models = {
        "LogisticRegression.predict_proba": (LogisticRegression().fit(X[:20_000], y[:20_000]), "predict_proba"),
        "StandardScaler.transform": (StandardScaler().fit(X[:20_000]), "transform"),
    }
    dirty = X.copy()
    dirty[np.arange(BAD_EVERY // 2, rows, BAD_EVERY)] = np.nan
    n_bad = int(np.isnan(dirty[:, 0]).sum())

    spark = sklspark.spark_session(args.master, app_name="sklspark-bench-on-error", conf={"spark.ui.enabled": "false"})
    spark.sparkContext.setLogLevel("ERROR")
    lines = []
    with tempfile.TemporaryDirectory() as tmp:
        write_file(Path(tmp) / "clean.parquet", X)
        write_file(Path(tmp) / "dirty.parquet", dirty)
        clean_df = spark.read.parquet(str(Path(tmp) / "clean.parquet"))
        dirty_df = spark.read.parquet(str(Path(tmp) / "dirty.parquet"))
        load_before = os.getloadavg()

        def noop(model: object, method: str, df: object, on_error: str) -> Callable[[], None]:
            scored = sklspark.distribute(model, method, df, on_error=on_error)
            return lambda: scored.write.format("noop").mode("overwrite").save()

        for label, (model, method) in models.items():
            default = best_of(repeats, noop(model, method, clean_df, "raise"), warm_up=True)
            clean = best_of(repeats, noop(model, method, clean_df, "null"), warm_up=True)
            bad = best_of(repeats, noop(model, method, dirty_df, "null"), warm_up=True)
            lines.append(
                f"| {label} | {default:.2f} | {clean:.2f} ({clean / default:.2f}x) | {bad:.2f} ({bad / default:.2f}x) |"
            )
            print(lines[-1], flush=True)
        load_after = os.getloadavg()
    spark.stop()
    text = "\n".join(
        [
            f"# on_error cost: {rows:,} x {WIDTH} float32 rows, one Parquet file, {args.master}",
            "",
            f"Best of {repeats} after a warm-up, seconds. Dirty: one NaN row per {BAD_EVERY:,} ({n_bad} rows), "
            f'scored with `on_error="null"` (the default fails there). Targets: clean null <= 1.05x, '
            f"dirty null <= 1.5x the default on clean data.",
            "",
            f"Load average (1, 5, 15 min) before: {', '.join(f'{v:.2f}' for v in load_before)}; after: "
            f"{', '.join(f'{v:.2f}' for v in load_after)} on {os.cpu_count()} cores.",
            "",
            "| model | default (raise), clean | null, clean | null, 1 bad row per 10,000 |",
            "|---|---|---|---|",
            *lines,
            "",
        ]
    )
    RESULTS.mkdir(exist_ok=True)
    (RESULTS / f"{name}.md").write_text(text)
    print(text)


if __name__ == "__main__":
    main()
