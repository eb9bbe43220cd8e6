"""kNN of every document over TF-IDF ``SparseVector`` features (cosine), from ONE Parquet file.

python benchmarks/sparse.py [--quick] [--sparse-rows N] [--name sparse]
"""

from __future__ import annotations

import sys
from pathlib import Path

import numpy as np
from _common import Row, noop, session, timed
from sklearn.neighbors import NearestNeighbors

from sklspark.neighbors import all_neighbors

NAME = "sparse"
DEFAULT = True


def add_arguments(parser) -> None:
    parser.add_argument("--sparse-rows", type=int, default=50_000, help="documents of the sparse TF-IDF group")


def quick(args) -> None:
    args.sparse_rows = 1_000


def bench(args, tmp: Path, rows: list[Row]) -> None:
    """kNN of every document over TF-IDF ``SparseVector`` features (2^18 hashed terms, cosine), from ONE Parquet file.

    sklspark searches them as CSR in both modes (never densified: a dense row would be 2 MiB); the baseline
    is scikit-learn's brute force on the same CSR matrix.
    """
    from pyspark.ml.linalg import SparseVector
    from sklearn.feature_extraction.text import HashingVectorizer, TfidfTransformer

    n, k, width = args.sparse_rows, args.k, 2**18
    rng = np.random.default_rng(4)
    vocabulary = np.array([f"w{i}" for i in range(30_000)])
    lengths = rng.integers(20, 120, n)
    words = vocabulary[np.minimum(rng.zipf(1.2, lengths.sum()), len(vocabulary)) - 1]
    documents = [" ".join(w) for w in np.split(words, np.cumsum(lengths)[:-1])]
    counts = HashingVectorizer(n_features=width, alternate_sign=False, norm=None).transform(documents)
    X = TfidfTransformer().fit_transform(counts).tocsr()
    X.sort_indices()
    stored = f"{X.nnz / n:.0f} stored per row"
    group = f"Sparse kNN: TF-IDF vectors ({n:,} documents x 2^18 hashed terms, {stored}, k={k}, cosine)"

    nn = NearestNeighbors(n_neighbors=k, metric="cosine", algorithm="brute")
    rows.append(
        Row(
            group,
            "in-process scikit-learn kneighbors on the CSR matrix",
            timed(lambda: nn.fit(X).kneighbors(X)),
            "baseline",
        )
    )

    spark = session("local[2]")
    vectors = [SparseVector(width, X.indices[a:b], X.data[a:b]) for a, b in zip(X.indptr[:-1], X.indptr[1:])]
    one_file = str(tmp / "tfidf-one-file.parquet")
    spark.createDataFrame(list(zip(range(n), vectors)), ["id", "features"]).coalesce(1).write.parquet(one_file)
    for label, shards in (("broadcast", None), ("sharded (4 shards)", 4)):
        df = spark.read.parquet(one_file)
        t = timed(
            lambda df=df, shards=shards: noop(all_neighbors(df, k, metric="cosine", shards=shards, exclude_self=False))
        )
        rows.append(
            Row(group, f"sklspark all_neighbors from ONE Parquet file, {label}, gemm backend on CSR", t, "end to end")
        )


def targets(rows: list[Row]) -> list[tuple[str, str, bool]]:
    return []


if __name__ == "__main__":
    from _common import main

    main([sys.modules[__name__]], sys.argv[1:], default_name=NAME)
