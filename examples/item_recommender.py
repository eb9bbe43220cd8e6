"""Item recommender: the 10 most similar items of every item, by cosine distance between item embeddings.

Run it as ``python examples/item_recommender.py --n-items 500`` for a quick try (the default is 50,000
items). It needs no cluster: ``sklspark.spark_session()`` starts Spark inside this process. Without
``--input`` it generates clustered embeddings and writes them to Parquet in a temporary directory;
recommendations are written to ``--output`` (default: that temporary directory) as Parquet, one row
per (item, recommended item) with its rank.
"""

from __future__ import annotations

import argparse
import os
import tempfile
import time

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

import sklspark
from sklspark.neighbors import all_neighbors, to_edges


def write_embeddings(path: str, n_items: int, dim: int, seed: int = 0) -> None:
    """Clustered item embeddings (items of one "genre" point the same way) as Parquet: item_id, embedding."""
    rng = np.random.default_rng(seed)
    genres = rng.normal(size=(max(2, n_items // 100), dim))
    X = genres[rng.integers(0, len(genres), size=n_items)] + 0.3 * rng.normal(size=(n_items, dim))
    embedding = pa.FixedSizeListArray.from_arrays(pa.array(X.astype(np.float32).ravel()), dim)
    table = pa.table({"item_id": [f"item-{i:06d}" for i in range(n_items)], "embedding": embedding})
    pq.write_table(table.cast(pa.schema([("item_id", pa.string()), ("embedding", pa.list_(pa.float32()))])), path)


def main(argv=None, spark=None) -> None:
    """Run the example; ``spark``: a running session to use and leave running (the tests pass theirs)."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--n-items", type=int, default=50_000, help="items to generate (default: 50,000)")
    parser.add_argument("--dim", type=int, default=32, help="embedding size of generated items (default: 32)")
    parser.add_argument("--k", type=int, default=10, help="recommendations per item (default: 10)")
    parser.add_argument("--input", help="Parquet with columns item_id and embedding (array<float>); default: generate")
    parser.add_argument("--output", help="directory for the recommendations Parquet; default: a temporary directory")
    parser.add_argument("--backend", default="sklearn", choices=["sklearn", "annoy"])
    parser.add_argument("--master", default="local[*]", help="Spark master (default: local[*], no cluster needed)")
    args = parser.parse_args(argv)

    workdir = tempfile.mkdtemp(prefix="sklspark-recommender-")
    source = args.input or os.path.join(workdir, "items.parquet")
    if args.input is None:
        write_embeddings(source, args.n_items, args.dim)
    output = args.output or os.path.join(workdir, "recommendations")

    own_session = spark is None
    if own_session:
        spark = sklspark.spark_session(args.master, app_name="sklspark-item-recommender")
    items = spark.read.parquet(source)

    start = time.perf_counter()
    neighbors = all_neighbors(
        items, args.k, id_col="item_id", features_col="embedding", metric="cosine", backend=args.backend
    )
    edges = to_edges(neighbors, id_col="item_id").withColumnsRenamed(
        {"src": "item_id", "dst": "recommended_id", "distance": "cosine_distance"}
    )
    edges.write.mode("overwrite").parquet(output)
    elapsed = time.perf_counter() - start

    result = spark.read.parquet(output)
    print(result.orderBy("item_id", "rank").limit(2 * args.k).toPandas().to_string(index=False))
    print(f"\n{result.count():,} recommendations for {items.count():,} items in {elapsed:.1f} s, written to {output}")
    same = _check_first_items(source, result.orderBy("item_id", "rank").limit(100 * args.k).toArrow(), args.k)
    print(f"recommendations of the first 100 items equal in-process scikit-learn: {same}")
    if own_session:
        spark.stop()
    if args.backend == "sklearn" and not same:
        raise SystemExit(1)


def _check_first_items(source: str, edges: pa.Table, k: int) -> bool:
    """Compare the first 100 items' recommendations with scikit-learn's exact cosine neighbours."""
    from sklearn.neighbors import NearestNeighbors

    table = pq.read_table(source).sort_by("item_id")
    ids = np.asarray(table.column("item_id").to_pylist())
    X = np.stack(table.column("embedding").to_numpy(zero_copy_only=False)).astype(np.float64)
    nn = NearestNeighbors(metric="cosine", algorithm="brute").fit(X)
    expected = ids[nn.kneighbors(X[:100], k + 1, return_distance=False)[:, 1:]]
    got = np.asarray(edges.column("recommended_id").to_pylist()).reshape(-1, k)
    return bool(np.array_equal(got, expected))


if __name__ == "__main__":
    main()
