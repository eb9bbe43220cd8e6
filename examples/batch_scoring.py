"""Batch scoring: a fitted classifier Pipeline's predict_proba over a Parquet data set, written to Parquet.

Run as ``python examples/batch_scoring.py`` (``--n-rows 1000`` for a quick try). The input has numeric
feature columns, as a feature table exported from a warehouse usually has.
"""

from __future__ import annotations

import argparse
import tempfile
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
from sklearn.ensemble import HistGradientBoostingClassifier
from sklearn.pipeline import make_pipeline
from sklearn.preprocessing import FunctionTransformer

import sklspark

FEATURES = ["age", "visits", "spend", "tenure"]


def make_events(n_rows: int, seed: int = 0) -> pa.Table:
    rng = np.random.default_rng(seed)
    columns = {
        "age": rng.integers(18, 80, n_rows).astype(np.float64),
        "visits": rng.poisson(5, n_rows).astype(np.float64),
        "spend": rng.gamma(2.0, 50.0, n_rows),
        "tenure": rng.uniform(0, 10, n_rows),
    }
    return pa.table({"customer_id": [f"c{i:07d}" for i in range(n_rows)], **columns})


def main(argv=None, spark=None) -> None:
    """Run the example; ``spark``: a running session to use and leave running (the tests pass theirs)."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--n-rows", type=int, default=500_000)
    parser.add_argument("--master", default="local[*]")
    args = parser.parse_args(argv)

    events = make_events(args.n_rows)
    X = np.column_stack([events.column(c).to_numpy() for c in FEATURES])
    churned = (X[:, 1] < 3) & (X[:, 3] < 2)
    # A pipeline with a lambda: it travels to the workers by value (cloudpickle).
    model = make_pipeline(
        FunctionTransformer(lambda Z: np.log1p(Z)), HistGradientBoostingClassifier(max_iter=50, random_state=0)
    ).fit(X[:50_000], churned[:50_000])

    own_session = spark is None
    if own_session:
        spark = sklspark.spark_session(args.master, app_name="sklspark-batch-scoring")
    with tempfile.TemporaryDirectory() as tmp:
        pq.write_table(events, Path(tmp, "events.parquet"))
        df = spark.read.parquet(str(Path(tmp, "events.parquet")))
        scored = sklspark.distribute(model, "predict_proba", df, features=FEATURES, output_cols="churn_proba")
        scored = sklspark.distribute(model, "predict", scored, features=FEATURES, output_cols="churn")
        scored.select("customer_id", "churn", "churn_proba").write.parquet(str(Path(tmp, "scores.parquet")))

        result = pq.read_table(Path(tmp, "scores.parquet")).sort_by("customer_id")
        proba = np.stack(result.column("churn_proba").to_numpy(zero_copy_only=False))
        same = np.allclose(proba, model.predict_proba(X)) and np.array_equal(
            result.column("churn").to_numpy(), model.predict(X)
        )
        print(result.slice(0, 5).to_pandas().to_string(index=False))
        churners = int(result.column("churn").to_numpy().sum())
        print(f"\nscored {result.num_rows:,} customers; {churners:,} predicted to churn")
        print(f"equals in-process scikit-learn: {same}")
    if own_session:
        spark.stop()
    if not same:
        raise SystemExit(1)


if __name__ == "__main__":
    main()
