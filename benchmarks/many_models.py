"""Many models keyed by a column: sklspark against the hand-written ``groupBy(key).applyInPandas`` pattern.

One Parquet file of ``--rows`` rows with a key column of ``--keys`` values and ``--width`` float64 feature
columns; one ``Ridge`` per key. Side by side in one run, best of ``--repeat``, each writing to Spark's
``noop`` sink (the whole job runs, nothing is stored):

* sklspark: ``distribute(models, "predict", df, key="key")`` (grouping inside each chunk, no shuffle);
* hand-written: ``df.groupBy("key").applyInPandas(...)`` with the models broadcast as a dict (a shuffle
  of every row, a hand-declared schema);
* one model: ``distribute(model, "predict", df)`` over the same rows (the cost of one model per key).

Targets (issue 19): sklspark >= 2x the hand-written throughput, and >= 0.5x one model's.
Run: ``python benchmarks/many_models.py`` (``--rows 100000 --keys 100`` for a quick try).
"""

from __future__ import annotations

import argparse
import os
import platform
import tempfile
from pathlib import Path

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq
from _common import best_of
from sklearn.linear_model import Ridge

import sklspark


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rows", type=int, default=2_000_000)
    parser.add_argument("--keys", type=int, default=1_000)
    parser.add_argument("--width", type=int, default=8)
    parser.add_argument("--repeat", type=int, default=3)
    parser.add_argument("--master", default="local[2]")
    parser.add_argument("--out", default=str(Path(__file__).parent / "results" / "many_models.md"))
    args = parser.parse_args(argv)

    rng = np.random.default_rng(0)
    names = [f"x{j}" for j in range(args.width)]
    X = rng.normal(size=(args.rows, args.width))
    keys = rng.integers(0, args.keys, args.rows)
    history = rng.normal(size=(50, args.width))
    models = {k: Ridge(alpha=1.0).fit(history, history @ rng.normal(size=args.width)) for k in range(args.keys)}

    spark = sklspark.spark_session(args.master, app_name="sklspark-bench-many-models")
    with tempfile.TemporaryDirectory() as tmp:
        path = str(Path(tmp, "rows.parquet"))
        pq.write_table(pa.table({"key": keys, **{n: X[:, j] for j, n in enumerate(names)}}), path)
        df = spark.read.parquet(path)
        broadcast = spark.sparkContext.broadcast(models)

        def hand_written(frame: pd.DataFrame) -> pd.DataFrame:
            model = broadcast.value[int(frame["key"].iloc[0])]
            return frame[["key"]].assign(prediction=model.predict(frame[names].to_numpy()))

        variants = {
            "sklspark distribute(models, key=...)": lambda: sklspark.distribute(
                models, "predict", df, key="key", features=names
            ),
            "hand-written groupBy(key).applyInPandas": lambda: df.groupBy("key").applyInPandas(
                hand_written, "key long, prediction double"
            ),
            "sklspark distribute(one model)": lambda: sklspark.distribute(models[0], "predict", df, features=names),
        }
        for make in variants.values():  # warm-up: file cache, Python workers, JIT-free but imports
            make().limit(1000).write.format("noop").mode("overwrite").save()
        seconds = {
            name: best_of(args.repeat, lambda make=make: make().write.format("noop").mode("overwrite").save())
            for name, make in variants.items()
        }
    spark.stop()

    fleet, hand, one = seconds.values()
    lines = [
        "# Many models keyed by a column",
        "",
        f"`python benchmarks/many_models.py --rows {args.rows} --keys {args.keys} --width {args.width} "
        f"--repeat {args.repeat} --master {args.master}`: one Parquet file, {args.rows:,} rows, {args.keys:,} keys, "
        f"one `Ridge` per key, {args.width} float64 features; best of {args.repeat}, `noop` sink.",
        f"Machine: {platform.machine()}, {os.cpu_count()} cores, load average {os.getloadavg()[0]:.1f} at the end "
        "(a shared machine: ratios within the run are what count).",
        "",
        "| variant | time (s) | rows/s |",
        "| --- | ---: | ---: |",
        *(f"| {name} | {t:.2f} | {args.rows / t:,.0f} |" for name, t in seconds.items()),
        "",
        "| target | measured | met |",
        "| --- | ---: | :---: |",
        f"| sklspark / hand-written applyInPandas throughput >= 2 | {hand / fleet:.2f} | "
        f"{'yes' if hand / fleet >= 2 else '**no**'} |",
        f"| sklspark / one model's distribute() throughput >= 0.5 | {one / fleet:.2f} | "
        f"{'yes' if one / fleet >= 0.5 else '**no**'} |",
        "",
    ]
    Path(args.out).write_text("\n".join(lines))
    print("\n".join(lines))


if __name__ == "__main__":
    main()
