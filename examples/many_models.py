"""Many models: one demand model per store, every sale scored by its own store's model, in one call.

Run as ``python examples/many_models.py`` (``--n-rows 2000`` for a quick try). No ``groupBy``, no shuffle,
no hand-declared schema: ``sklspark.distribute(models, "predict", df, key="store")`` groups the rows of
each chunk by store and calls each store's model once per group.
"""

from __future__ import annotations

import argparse
import tempfile
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
from sklearn.linear_model import Ridge

import sklspark

FEATURES = ["price", "promo", "temperature", "weekday"]


def make_sales(n_rows: int, n_stores: int, seed: int = 0) -> pa.Table:
    rng = np.random.default_rng(seed)
    return pa.table(
        {
            "sale_id": np.arange(n_rows),
            "store": [f"store-{s:03d}" for s in rng.integers(0, n_stores, n_rows)],
            "price": rng.uniform(1, 20, n_rows),
            "promo": rng.integers(0, 2, n_rows).astype(np.float64),
            "temperature": rng.normal(15, 8, n_rows),
            "weekday": rng.integers(0, 7, n_rows).astype(np.float64),
        }
    )


def fit_store_models(sales: pa.Table) -> dict[str, Ridge]:
    """One Ridge per store, fitted on the driver on that store's history (here: the generated rows)."""
    frame = sales.to_pandas()
    rng = np.random.default_rng(1)
    models = {}
    for store, rows in frame.groupby("store"):
        X = rows[FEATURES].to_numpy()
        units = X @ rng.normal(size=len(FEATURES)) + rng.normal(size=len(X))
        models[store] = Ridge(alpha=1.0).fit(X, units)
    return models


def main(argv=None, spark=None) -> None:
    """Run the example; ``spark``: a running session to use and leave running (the tests pass theirs)."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--n-rows", type=int, default=500_000)
    parser.add_argument("--n-stores", type=int, default=200)
    parser.add_argument("--master", default="local[*]")
    args = parser.parse_args(argv)

    sales = make_sales(args.n_rows, args.n_stores)
    models = fit_store_models(sales)

    own_session = spark is None
    if own_session:
        spark = sklspark.spark_session(args.master, app_name="sklspark-many-models")
    with tempfile.TemporaryDirectory() as tmp:
        pq.write_table(sales, Path(tmp, "sales.parquet"))
        df = spark.read.parquet(str(Path(tmp, "sales.parquet")))
        forecast = sklspark.distribute(models, "predict", df, key="store", features=FEATURES, output_cols="units")
        forecast.select("sale_id", "store", "units").write.parquet(str(Path(tmp, "forecast.parquet")))

        result = pq.read_table(Path(tmp, "forecast.parquet")).sort_by("sale_id").to_pandas()
        frame = sales.to_pandas()
        expected = np.empty(len(frame))
        for store, rows in frame.groupby("store"):
            expected[rows.index] = models[store].predict(rows[FEATURES].to_numpy())
        same = np.allclose(result["units"].to_numpy(), expected, rtol=1e-12, atol=0)
        print(result.head().to_string(index=False))
        print(f"\nscored {len(result):,} sales with {len(models)} store models")
        print(f"equals in-process scikit-learn, each row by its store's model: {same}")
    if own_session:
        spark.stop()
    if not same:
        raise SystemExit(1)


if __name__ == "__main__":
    main()
