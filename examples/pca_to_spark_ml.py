"""Distributed PCA.transform feeding a Spark ML stage (KMeans) on the reduced vectors.

Run as ``python examples/pca_to_spark_ml.py`` (``--n-rows 1000`` for a quick try). scikit-learn fits the
PCA on a sample on the driver; sklspark projects every row; Spark ML clusters the projections.
"""

from __future__ import annotations

import argparse

import numpy as np
import pyarrow as pa
from pyspark.ml.clustering import KMeans
from pyspark.ml.functions import array_to_vector
from sklearn.decomposition import PCA

import sklspark


def main(argv=None, spark=None) -> None:
    """Run the example; ``spark``: a running session to use and leave running (the tests pass theirs)."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--n-rows", type=int, default=200_000)
    parser.add_argument("--n-features", type=int, default=100)
    parser.add_argument("--master", default="local[*]")
    args = parser.parse_args(argv)

    rng = np.random.default_rng(0)
    latent = rng.normal(size=(args.n_rows, 5)) + rng.integers(0, 4, (args.n_rows, 1)) * 4.0
    X = latent @ rng.normal(size=(5, args.n_features)) + 0.1 * rng.normal(size=(args.n_rows, args.n_features))
    pca = PCA(n_components=5, random_state=0).fit(X[:20_000])

    own_session = spark is None
    if own_session:
        spark = sklspark.spark_session(args.master, app_name="sklspark-pca")
    df = spark.createDataFrame(pa.table({"id": np.arange(args.n_rows), "features": list(X.astype(np.float32))}))

    reduced = sklspark.distribute(pca, "transform", df, output_cols="pca")  # array<float> column
    stage_input = reduced.select("id", array_to_vector("pca").alias("pca_vector"))
    clusters = KMeans(k=4, seed=1, featuresCol="pca_vector", predictionCol="cluster").fit(stage_input)
    counts = clusters.transform(stage_input).groupBy("cluster").count().orderBy("cluster").toPandas()

    sample = reduced.orderBy("id").limit(1000).toArrow()
    projected = np.stack(sample.column("pca").to_numpy(zero_copy_only=False))
    same = np.allclose(projected, pca.transform(X[:1000].astype(np.float32)), atol=1e-4)
    print(counts.to_string(index=False))
    print(
        f"\nprojected {args.n_rows:,} rows from {args.n_features} to 5 dimensions; Spark ML KMeans found "
        f"{len(counts)} clusters"
    )
    print(f"PCA.transform equals in-process scikit-learn (first 1,000 rows): {same}")
    if own_session:
        spark.stop()
    if not same:
        raise SystemExit(1)


if __name__ == "__main__":
    main()
