"""Tabular pipeline: a churn model on string, numeric and boolean columns with missing values, over Parquet.

Run as ``python examples/tabular_pipeline.py`` (``--n-rows 2000`` for a quick try). The model is a
``ColumnTransformer`` pipeline fitted on a pandas DataFrame, as most production models are: one-hot
and ordinal encoding of strings, imputation of missing values, a gradient-boosted classifier. Spark
reads the customers from Parquet (columns in another order, extra columns), and ``distribute()``
takes the fitted columns by name, with the dtypes pandas gives them, so the scores equal the
in-process ones.
"""

from __future__ import annotations

import argparse
import tempfile
from pathlib import Path

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq
from sklearn.compose import ColumnTransformer
from sklearn.ensemble import HistGradientBoostingClassifier
from sklearn.impute import SimpleImputer
from sklearn.pipeline import make_pipeline
from sklearn.preprocessing import OneHotEncoder, OrdinalEncoder

import sklspark


def make_customers(n_rows: int, seed: int = 0) -> pd.DataFrame:
    """Customers as ``pd.read_parquet`` gives them: strings with NaN, an int column with gaps as float64."""
    rng = np.random.default_rng(seed)
    customers = pd.DataFrame(
        {
            "customer_id": [f"c{i:07d}" for i in range(n_rows)],
            "plan": rng.choice(["basic", "plus", "pro"], n_rows, p=[0.5, 0.3, 0.2]).astype(object),
            "region": rng.choice(["north", "south", "east", "west"], n_rows).astype(object),
            "contract": rng.choice(["monthly", "yearly", "two-year"], n_rows).astype(object),
            "tenure_months": rng.integers(0, 72, n_rows).astype(np.float64),
            "monthly_charge": rng.gamma(4.0, 15.0, n_rows),
            "support_calls": rng.poisson(1.2, n_rows),
            "autopay": rng.random(n_rows) < 0.6,
        }
    )
    for column in ("plan", "region", "tenure_months", "monthly_charge"):
        customers.loc[rng.random(n_rows) < 0.05, column] = np.nan
    risk = (
        0.8 * customers["support_calls"]
        - customers["tenure_months"].fillna(24) / 24
        + (customers["contract"] == "monthly") * 1.5
        - customers["autopay"] * 0.7
        + rng.normal(size=n_rows)
    )
    customers["churned"] = np.where(risk > 1.0, "yes", "no")
    return customers


def make_model() -> object:
    strings = make_pipeline(SimpleImputer(strategy="most_frequent"), OneHotEncoder(handle_unknown="ignore"))
    return make_pipeline(
        ColumnTransformer(
            [
                ("onehot", strings, ["plan", "region"]),
                ("contract", OrdinalEncoder(categories=[["monthly", "yearly", "two-year"]]), ["contract"]),
                ("numbers", SimpleImputer(strategy="median"), ["tenure_months", "monthly_charge", "support_calls"]),
                ("flags", "passthrough", ["autopay"]),
            ]
        ),
        HistGradientBoostingClassifier(max_iter=60, random_state=0),
    )


def main(argv=None, spark=None) -> None:
    """Run the example; ``spark``: a running session to use and leave running (the tests pass theirs)."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--n-rows", type=int, default=200_000)
    parser.add_argument("--master", default="local[*]")
    args = parser.parse_args(argv)

    customers = make_customers(args.n_rows)
    train = customers.iloc[: min(20_000, len(customers))]
    model = make_model().fit(train.drop(columns=["customer_id", "churned"]), train["churned"])

    own_session = spark is None
    if own_session:
        spark = sklspark.spark_session(args.master, app_name="sklspark-tabular-pipeline")
        spark.sparkContext.setLogLevel("ERROR")
    with tempfile.TemporaryDirectory() as tmp:
        # Written as a warehouse export would be: columns in another order, integer columns with nulls as longs.
        table = pa.Table.from_pandas(customers[customers.columns[::-1]], preserve_index=False)
        table = table.set_column(
            table.schema.get_field_index("tenure_months"), "tenure_months", table["tenure_months"].cast(pa.int64())
        )
        pq.write_table(table, Path(tmp, "customers.parquet"))

        df = spark.read.parquet(str(Path(tmp, "customers.parquet")))
        scored = sklspark.distribute(model, "predict_proba", df, output_cols="churn_proba")
        scored = sklspark.distribute(model, "predict", scored, output_cols="churn")
        scored.select("customer_id", "churn", "churn_proba").write.parquet(str(Path(tmp, "scores.parquet")))

        result = pd.read_parquet(Path(tmp, "scores.parquet")).sort_values("customer_id", ignore_index=True)
        features = customers.drop(columns=["customer_id", "churned"])
        same = np.allclose(np.stack(result["churn_proba"]), model.predict_proba(features)) and bool(
            (result["churn"].to_numpy() == model.predict(features)).all()
        )
        print(result.head().to_string(index=False))
        print(f"\nscored {len(result):,} customers; {(result['churn'] == 'yes').sum():,} predicted to churn")
        print(f"equals in-process scikit-learn on the pandas frame: {same}")
    if own_session:
        spark.stop()
    if not same:
        raise SystemExit(1)


if __name__ == "__main__":
    main()
