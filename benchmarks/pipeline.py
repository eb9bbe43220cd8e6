"""A ColumnTransformer pipeline over named, mixed-type columns: distribute() against a hand-written mapInPandas loop.

    python benchmarks/pipeline.py              # 1,000,000 rows
    python benchmarks/pipeline.py --quick      # tiny size: proves the script works (CI smoke test)

Both variants read the same Parquet file, score ``predict_proba`` of the same fitted pipeline (one-hot and
ordinal encoding of strings, imputation, logistic regression) and end with ``write.format("noop")``, so
both compute every row. The hand-written loop does the conversion ``distribute()`` does for named
columns: the fitted columns, in the fitted order, ``None`` made ``np.nan`` in string columns, and a
``array<double>`` result column. Each variant runs ``--repeats`` times after a warm-up; the best time
counts. Prints a Markdown table and the throughput ratio, and writes it to
``benchmarks/results/<name>.md``.
"""

from __future__ import annotations

import argparse
import tempfile
from pathlib import Path

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq
from _common import best_of
from sklearn.compose import ColumnTransformer
from sklearn.impute import SimpleImputer
from sklearn.linear_model import LogisticRegression
from sklearn.pipeline import make_pipeline
from sklearn.preprocessing import OneHotEncoder, OrdinalEncoder

import sklspark

RESULTS = Path(__file__).resolve().parent / "results"
STRINGS = ["plan", "region", "channel"]
NUMBERS = ["tenure", "monthly", "calls"]


def make_frame(n_rows: int, seed: int = 0) -> pd.DataFrame:
    rng = np.random.default_rng(seed)
    frame = pd.DataFrame(
        {
            "plan": rng.choice(["basic", "plus", "pro", "team"], n_rows).astype(object),
            "region": rng.choice([f"r{i}" for i in range(20)], n_rows).astype(object),
            "channel": rng.choice(["web", "store", "phone"], n_rows).astype(object),
            "tenure": rng.integers(0, 72, n_rows).astype(np.float64),
            "monthly": rng.gamma(4.0, 15.0, n_rows),
            "calls": rng.poisson(1.2, n_rows).astype(np.int64),
        }
    )
    for column in ("plan", "region", "tenure", "monthly"):
        frame.loc[rng.random(n_rows) < 0.05, column] = np.nan
    return frame


def make_model(train: pd.DataFrame):
    y = (train["calls"] + (train["plan"] == "basic") - train["tenure"].fillna(30) / 30 > 0.5).to_numpy()
    return make_pipeline(
        ColumnTransformer(
            [
                (
                    "onehot",
                    make_pipeline(SimpleImputer(strategy="most_frequent"), OneHotEncoder(handle_unknown="ignore")),
                    ["plan", "region"],
                ),
                ("ordinal", OrdinalEncoder(handle_unknown="use_encoded_value", unknown_value=-1), ["channel"]),
                ("numbers", SimpleImputer(), NUMBERS),
            ]
        ),
        LogisticRegression(max_iter=500),
    ).fit(train, y)


def hand_written(model, df, chunk_size: int):
    """The mapInPandas loop a user would write for the same conversion and output."""
    from pyspark.sql.types import ArrayType, DoubleType, StructField, StructType

    names = list(model.feature_names_in_)
    strings = [c for c in names if dict(df.dtypes)[c] == "string"]
    schema = StructType([*df.schema.fields, StructField("probability", ArrayType(DoubleType()))])

    def score(frames):
        for pdf in frames:
            X = pdf[names]
            for c in strings:  # Spark gives None for a null string; scikit-learn's missing marker is np.nan
                X[c] = X[c].where(X[c].notna(), np.nan)
            pdf["probability"] = list(model.predict_proba(X))
            yield pdf

    df.sparkSession.conf.set("spark.sql.execution.arrow.maxRecordsPerBatch", str(chunk_size))
    return df.mapInPandas(score, schema)


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rows", type=int, default=1_000_000)
    parser.add_argument("--quick", action="store_true", help="20,000 rows, one repeat")
    parser.add_argument("--repeats", type=int, default=2)
    parser.add_argument("--chunk-size", type=int, default=4096)
    parser.add_argument("--master", default="local[2]")
    parser.add_argument("--name", default=None, help="results file name (default: pipeline or pipeline-quick)")
    args = parser.parse_args(argv)
    if args.quick:
        args.rows, args.repeats = 20_000, 1
    name = args.name or ("pipeline-quick" if args.quick else "pipeline")

    frame = make_frame(args.rows)
    model = make_model(frame.iloc[: min(50_000, args.rows)])
    spark = sklspark.spark_session(args.master, app_name="sklspark-bench-pipeline", conf={"spark.ui.enabled": "false"})
    spark.sparkContext.setLogLevel("ERROR")
    with tempfile.TemporaryDirectory() as tmp:
        table = pa.Table.from_pandas(frame[frame.columns[::-1]], preserve_index=False)
        pq.write_table(table, Path(tmp, "customers.parquet"), row_group_size=50_000)
        df = spark.read.parquet(str(Path(tmp, "customers.parquet")))

        def noop(result):
            return lambda: result.write.format("noop").mode("overwrite").save()

        ours = best_of(
            args.repeats,
            noop(sklspark.distribute(model, "predict_proba", df, chunk_size=args.chunk_size)),
            warm_up=True,
        )
        theirs = best_of(args.repeats, noop(hand_written(model, df, args.chunk_size)), warm_up=True)
        check = sklspark.distribute(model, "predict_proba", df.limit(1000)).toPandas()
        features = check[list(model.feature_names_in_)]
        expected = model.predict_proba(features.where(features.notna(), np.nan))  # toPandas() gives None
        same = np.allclose(np.stack(check["probability"]), expected)
    spark.stop()

    ratio = theirs / ours
    text = "\n".join(
        [
            f"# ColumnTransformer pipeline over named columns "
            f"({args.rows:,} rows, {args.master}, best of {args.repeats})",
            "",
            "| variant | seconds | rows/s |",
            "|---|---:|---:|",
            f"| sklspark.distribute(model, 'predict_proba', df) | {ours:.2f} | {args.rows / ours:,.0f} |",
            f"| hand-written mapInPandas, same conversion | {theirs:.2f} | {args.rows / theirs:,.0f} |",
            "",
            f"Throughput of distribute() / hand-written: **{ratio:.2f}x** (target >= 0.9x).",
            f"Results equal in-process scikit-learn: {same}.",
            "",
        ]
    )
    RESULTS.mkdir(exist_ok=True)
    (RESULTS / f"{name}.md").write_text(text)
    print(text)
    if not same:
        raise SystemExit(1)


if __name__ == "__main__":
    main()
