"""kNN of every point (dense, Euclidean): in-process peers, the GEMM floor, naive Spark, distribute(), all_neighbors.

python benchmarks/knn.py [--quick] [--knn-rows N] [--name knn]
"""

from __future__ import annotations

import sys
from pathlib import Path

import numpy as np
from _common import Row, Targets, clustered, noop, session, timed, write_features
from sklearn.neighbors import NearestNeighbors

import sklspark
from sklspark.neighbors import all_neighbors

NAME = "knn"
DEFAULT = True


def add_arguments(parser) -> None:
    parser.add_argument("--knn-rows", type=int, default=100_000)
    parser.add_argument(
        "--spark-join-rows",
        type=int,
        action="append",
        help="sizes at which Spark's exact nearestByJoin runs beside all_neighbors (default 2,000 and 4,000)",
    )


def quick(args) -> None:
    args.knn_rows = 2_000
    args.spark_join_rows = args.spark_join_rows or [300]


def bench(args, tmp: Path, rows: list[Row]) -> None:
    group = f"kNN all points ({args.knn_rows:,} x {args.knn_dim} float32, k={args.k}, Euclidean)"
    X = clustered(args.knn_rows, args.knn_dim)
    path = tmp / "knn.parquet"
    write_features(path, X, partitions=8)
    one_file = tmp / "knn-one-file.parquet"
    write_features(one_file, X, partitions=1)  # one Parquet file: one partition

    nn = NearestNeighbors(n_neighbors=args.k, algorithm="brute")
    t = timed(lambda: nn.fit(X).kneighbors(X))
    rows.append(Row(group, "in-process scikit-learn kneighbors (2 BLAS threads)", t, "baseline"))
    rows += gemm_rows(group, X, args.k)
    try:
        from sklspark.neighbors._backends import import_faiss

        faiss = import_faiss()  # its bundled OpenBLAS with the CPU's kernel, not the Prescott fallback

        def faiss_search():
            index = faiss.IndexFlatL2(X.shape[1])
            index.add(X)
            index.search(X, args.k)

        rows.append(Row(group, "in-process faiss IndexFlatL2", timed(faiss_search)))
    except ImportError:
        pass

    spark = session("local[2]")
    nn.fit(X)

    def vectors(df):
        return df.rdd.map(lambda r: np.asarray(r.features, dtype=np.float32))

    bc = spark.sparkContext.broadcast(nn)
    naive = vectors(spark.read.parquet(str(path)).limit(args.naive_sample).repartition(8))
    naive = naive.map(lambda x: bc.value.kneighbors(x.reshape(1, -1)))
    t = timed(naive.count) * len(X) / args.naive_sample
    rows.append(
        Row(
            group,
            "naive Spark: rdd.map(bc.value.kneighbors), one row per call",
            t,
            f"measured on {args.naive_sample:,} rows, extrapolated",
        )
    )
    rdd = vectors(spark.read.parquet(str(path)))
    rows.append(
        Row(
            group,
            "sklspark distribute() on an RDD",
            timed(lambda: sklspark.distribute(nn, "kneighbors", rdd, n_neighbors=args.k).count()),
        )
    )
    df = spark.read.parquet(str(path))
    rows.append(
        Row(
            group,
            "sklspark distribute() on a DataFrame",
            timed(lambda: noop(sklspark.distribute(nn, "kneighbors", df, n_neighbors=args.k))),
        )
    )
    t = timed(lambda: noop(all_neighbors(spark.read.parquet(str(one_file)), args.k)))
    rows.append(
        Row(
            group,
            "sklspark all_neighbors from ONE Parquet file, default (gemm) backend",
            t,
            "end to end, exclude_self: the issue's case (one input partition)",
        )
    )
    for backend in ("gemm", "sklearn", "faiss"):
        t = timed(
            lambda: noop(all_neighbors(spark.read.parquet(str(path)), args.k, backend=backend, exclude_self=False))
        )
        rows.append(
            Row(
                group,
                f"sklspark all_neighbors, broadcast, {backend} backend",
                t,
                "end to end: reads and collects the reference",
            )
        )
    t = timed(lambda: noop(all_neighbors(spark.read.parquet(str(path)), args.k, shards=4, exclude_self=False)))
    rows.append(Row(group, "sklspark all_neighbors, sharded (4 shards), gemm backend", t))
    result = {}
    t = timed(
        lambda: result.setdefault(
            "t",
            all_neighbors(spark.read.parquet(str(path)), args.k, backend="annoy", exclude_self=False)
            .select("id", "neighbor_ids")
            .toArrow(),
        )
    )
    got = np.stack(result["t"].sort_by("id").column("neighbor_ids").to_numpy(zero_copy_only=False))
    exact = nn.kneighbors(X, return_distance=False)
    recall = np.mean([len(set(g) & set(e)) / args.k for g, e in zip(got, exact)])
    rows.append(Row(group, "sklspark all_neighbors, annoy backend (approximate)", t, f"recall@{args.k} = {recall:.3f}"))

    rows += spark_join_rows(args, tmp, group)

    # Scaling: the same job on one core.
    spark = session("local[1]")
    df = spark.read.parquet(str(path))
    t1 = timed(lambda: noop(sklspark.distribute(nn, "kneighbors", df, n_neighbors=args.k)))
    rows.append(Row(group, "sklspark distribute() on a DataFrame, local[1]", t1, "scaling reference"))


def spark_join_rows(args, tmp: Path, knn_group: str) -> list[Row]:
    """Spark's own exact top-k join (``nearestByJoin`` on ``vector_l2_distance``) beside ``all_neighbors``.

    Spark evaluates the whole cross product in the JVM, so it runs at small sizes only; each size is one
    Parquet file, both sides keep the point itself (``exclude_self=False``), and the neighbour sets of the
    two are compared row by row (Spark leaves ties unspecified; random float data has none). The largest
    size is extrapolated quadratically to the kNN group's size, as a peer row of that group.
    """
    from pyspark.sql import functions as F

    sizes = sorted(args.spark_join_rows or [2_000, 4_000])
    group = f"Spark's exact nearestByJoin beside sklspark all_neighbors (n x {args.knn_dim} float32, k={args.k})"
    spark = session("local[2]")
    out: list[Row] = []
    for n in sizes:
        path = tmp / f"spark-join-{n}.parquet"
        write_features(path, clustered(n, args.knn_dim), partitions=1)
        df = spark.read.parquet(str(path))
        queries = df.select(F.col("id").alias("qid"), F.col("features").alias("q"))
        base = df.select(F.col("id").alias("rid"), F.col("features").alias("r"))
        join = queries.nearestByJoin(base, F.vector_l2_distance("q", "r"), args.k, "exact", "distance")
        t_ours = timed(lambda: noop(all_neighbors(spark.read.parquet(str(path)), args.k, exclude_self=False)))
        t_spark = timed(lambda: noop(join))
        theirs = {r.qid: set(r.ids) for r in join.groupBy("qid").agg(F.collect_list("rid").alias("ids")).collect()}
        ours = all_neighbors(df, args.k, exclude_self=False).select("id", "neighbor_ids").collect()
        same = sum(set(r.neighbor_ids) == theirs.get(r.id) for r in ours)
        note = f"{t_spark / t_ours:.1f}x all_neighbors; same neighbour sets on {same:,} of {n:,} rows"
        out.append(Row(group, f"Spark nearestByJoin(vector_l2_distance, exact), {n:,} rows", t_spark, note))
        out.append(
            Row(group, f"sklspark all_neighbors from ONE Parquet file, {n:,} rows", t_ours, "exclude_self=False")
        )
    n, t_spark = sizes[-1], out[-2].seconds
    t_ours = out[-1].seconds
    if n < 100_000:  # the size
        out.append(
            Row(
                group,
                "Spark nearestByJoin, extrapolated quadratically to 100,000 rows",
                t_spark * (100_000 / n) ** 2,
                f"from {n:,} rows; {t_spark / t_ours:.0f}x all_neighbors at {n:,} rows",
            )
        )
    out.append(
        Row(
            knn_group,
            "Spark nearestByJoin(vector_l2_distance, exact), extrapolated",
            t_spark * (args.knn_rows / n) ** 2,
            f"quadratic from {t_spark:.1f} s measured at {n:,} rows (the whole cross product in the JVM)",
        )
    )
    return out


def gemm_rows(group: str, X: np.ndarray, k: int) -> list[Row]:
    """The GEMM floor (2 n^2 d flops at numpy's SGEMM rate measured now) and the built-in kernel, in-process.

    The kernel runs as Spark runs it on 2 cores: two threads (one per core) of one BLAS thread each, each
    searching chunks of 4,096 queries with the exact re-rank.
    """
    from concurrent.futures import ThreadPoolExecutor

    from threadpoolctl import threadpool_info, threadpool_limits

    from sklspark.neighbors import GemmBackend
    from sklspark.neighbors._rerank import exact_top_k

    kernel = next((i.get("architecture") for i in threadpool_info() if "numpy" in i["filepath"]), "?")
    slab = X[: min(len(X), 8192)]
    slab @ X.T  # warm-up
    t = timed(lambda: [slab @ X.T for _ in range(3)]) / 3
    rate = 2 * len(slab) * len(X) * X.shape[1] / t
    floor = 2 * len(X) * len(X) * X.shape[1] / rate
    backend = GemmBackend(clustered=False)  # the brute-force kernel against its floor, whatever the data
    backend.build(X, "euclidean")
    keys = np.arange(len(X))
    chunks = [X[i : i + 4096] for i in range(0, len(X), 4096)]
    with threadpool_limits(1), ThreadPoolExecutor(2) as pool:
        t = timed(lambda: list(pool.map(lambda Q: exact_top_k(backend, X, keys, Q, k, "euclidean"), chunks)))
    return [
        Row(group, "GEMM floor: 2·n²·d flops at numpy's SGEMM rate", floor, f"{rate / 1e9:.0f} GFLOP/s, {kernel}"),
        Row(group, "in-process sklspark gemm kernel + exact re-rank", t, "2 threads x 1 BLAS thread"),
    ]


def targets(rows: list[Row]) -> list[tuple[str, str, bool]]:
    t = Targets(rows)
    base = t.find("kNN", "in-process scikit-learn")
    t.add(
        "all_neighbors (sklearn, broadcast) time / in-process scikit-learn time <= 1.10",
        t.ratio(t.find("kNN", "sklspark all_neighbors, broadcast, sklearn"), base),
        lambda v: v <= 1.10,
    )
    t.add(
        "all_neighbors from one Parquet file (gemm) time / in-process scikit-learn time <= 0.6",
        t.ratio(t.find("kNN", "sklspark all_neighbors from ONE Parquet file"), base),
        lambda v: v <= 0.6,
    )
    t.add(
        "in-process gemm kernel time / GEMM floor <= 1.5",
        t.ratio(t.find("kNN", "in-process sklspark gemm kernel"), t.find("kNN", "GEMM floor")),
        lambda v: v <= 1.5,
    )
    t.add(
        "all_neighbors sharded time / broadcast time (gemm) <= 1.2",
        t.ratio(
            t.find("kNN", "sklspark all_neighbors, sharded"),
            t.find("kNN", "sklspark all_neighbors, broadcast, gemm"),
        ),
        lambda v: v <= 1.2,
    )
    t.add(
        "all_neighbors (faiss) time / in-process scikit-learn time < 1",
        t.ratio(t.find("kNN", "sklspark all_neighbors, broadcast, faiss"), base),
        lambda v: v < 1,
    )
    t.add(
        "row-per-call time / distribute() time >= 15",
        t.ratio(t.find("kNN", "naive Spark"), t.find("kNN", "sklspark distribute() on an RDD")),
        lambda v: v >= 15,
    )
    t.add(
        "local[1] time / local[2] time >= 1.7 (distribute() kNN)",
        t.ratio(
            t.find("kNN", "sklspark distribute() on a DataFrame, local[1]"),
            t.find("kNN", "sklspark distribute() on a DataFrame"),
        ),
        lambda v: v >= 1.7,
    )
    return t.lines


if __name__ == "__main__":
    from _common import main

    main([sys.modules[__name__]], sys.argv[1:], default_name=NAME)
