"""Quickstart: score a generated data set with two fitted scikit-learn models on an embedded local Spark.

Run it as ``python examples/quickstart.py`` (add ``--n-rows 1000`` for a quick try). It needs no cluster:
``sklspark.spark_session()`` starts Spark inside this process (``local[*]``).
"""

from __future__ import annotations

import argparse
import time

import numpy as np
import pyarrow as pa
from sklearn.linear_model import LogisticRegression
from sklearn.neighbors import NearestNeighbors

import sklspark


def main(argv=None, spark=None) -> None:
    """Run the example; ``spark``: a running session to use and leave running (the tests pass theirs)."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--n-rows", type=int, default=200_000, help="rows to generate (default: 200,000)")
    parser.add_argument("--n-features", type=int, default=32)
    parser.add_argument("--master", default="local[*]", help="Spark master (default: local[*], no cluster needed)")
    args = parser.parse_args(argv)

    rng = np.random.default_rng(0)
    X = rng.normal(size=(args.n_rows, args.n_features)).astype(np.float32)
    y = (X[:, 0] + 0.5 * X[:, 1] > 0).astype(int)

    # Models are fitted on the driver, on a sample: fit() is cheap, scoring every row is the work.
    clf = LogisticRegression().fit(X[:10_000], y[:10_000])
    nn = NearestNeighbors(n_neighbors=5).fit(X[:20_000])

    # quiet=True (the default): Spark logs errors only; pass quiet=False to see its warnings too
    own_session = spark is None
    if own_session:
        spark = sklspark.spark_session(args.master, app_name="sklspark-quickstart")
    df = spark.createDataFrame(pa.table({"id": np.arange(len(X)), "features": list(X)}))

    start = time.perf_counter()
    scored = sklspark.distribute(clf, "predict_proba", df)
    scored = sklspark.distribute(nn, "kneighbors", scored, n_neighbors=5)
    table = scored.select("id", "probability", "indices", "distances").toArrow()
    elapsed = time.perf_counter() - start

    order = np.argsort(table.column("id").to_numpy())
    proba = np.stack(table.column("probability").to_numpy(zero_copy_only=False))[order]
    indices = np.stack(table.column("indices").to_numpy(zero_copy_only=False))[order]
    same_proba = np.allclose(proba, clf.predict_proba(X), atol=1e-6)
    same_nn = np.array_equal(indices[:1000], nn.kneighbors(X[:1000])[1])

    # The first rows of what was collected: scored.limit(5) would run both models again, and stop them mid-way.
    print(table.select(["id", "probability", "indices"]).take(order[:5]).to_pandas().to_string(index=False))
    print(
        f"\nscored {table.num_rows:,} rows x {args.n_features} features with predict_proba and kneighbors(k=5) "
        f"in {elapsed:.1f} s on {spark.sparkContext.master}"
    )
    print(f"predict_proba equals in-process scikit-learn: {same_proba}; kneighbors (first 1,000 rows): {same_nn}")
    if own_session:
        spark.stop()
    if not (same_proba and same_nn):
        raise SystemExit(1)


if __name__ == "__main__":
    main()
