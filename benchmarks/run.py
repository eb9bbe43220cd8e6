"""Side-by-side benchmarks of sklspark against its peers, in one run, on one machine.

    python benchmarks/run.py            # default sizes (about 10-15 minutes on 2 cores)
    python benchmarks/run.py --quick    # tiny sizes, every group, fewer variants (CI smoke test)
    python benchmarks/run.py --only approximate --name approximate   # 1,000,000 points, hnsw (about 10 minutes)

Writes ``benchmarks/results/<name>.md`` (tables of times and ratios, and the targets) and
``benchmarks/results/<name>.png`` (a bar chart of the ratios). Ratios, not absolute times, are the point:
the machines are shared and noisy. Every Spark variant reads its input from Parquet and ends with an
action that computes every row (``write.format("noop")`` for DataFrames, ``count()`` for RDDs), so all
variants do the same work. Slow variants (row-per-call) run on a sample and are extrapolated, and the
table says so.
"""

from __future__ import annotations

import argparse
import datetime
import os
import platform
import resource
import sys
import tempfile
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
from pyspark.sql import SparkSession
from sklearn.linear_model import LogisticRegression
from sklearn.neighbors import NearestNeighbors
from sklearn.preprocessing import StandardScaler

import sklspark
from sklspark.neighbors import HnswBackend, all_neighbors

RESULTS = Path(__file__).resolve().parent / "results"


@dataclass
class Row:
    group: str
    variant: str
    seconds: float
    note: str = ""
    extra: dict = field(default_factory=dict)


def timed(fn: Callable[[], object]) -> float:
    start = time.perf_counter()
    fn()
    return time.perf_counter() - start


#: (master, conf) of the session :func:`session` last started.
_STARTED: dict[str, tuple] = {}


def session(master: str, **conf: str):
    """A session on ``master`` with ``conf`` and its Python workers started (the running one if it has both)."""
    active = SparkSession.getActiveSession()
    wanted = (master, sorted(conf.items()))
    if active is not None and _STARTED.get("last") == wanted:
        return active
    if active is not None:
        active.stop()
    spark = sklspark.spark_session(
        master,
        app_name="sklspark-benchmarks",
        conf={
            "spark.ui.enabled": "false",
            "spark.ui.showConsoleProgress": "false",
            "spark.driver.memory": "6g",
            **conf,
        },
    )
    spark.sparkContext.setLogLevel("FATAL")
    spark.range(100, numPartitions=4).rdd.map(lambda r: r).count()  # start the Python workers
    _STARTED["last"] = wanted
    return spark


def write_features(path: Path, X: np.ndarray, partitions: int) -> None:
    """A Parquet data set with ``id`` and an ``array<float>`` column ``features``, in several files."""
    path.mkdir(parents=True, exist_ok=True)
    for i, part in enumerate(np.array_split(np.arange(len(X)), partitions)):
        width = X.shape[1]
        values = pa.array(X[part].ravel())
        column = pa.ListArray.from_arrays(pa.array(np.arange(len(part) + 1) * width, type=pa.int32()), values)
        pq.write_table(pa.table({"id": pa.array(part), "features": column}), path / f"part-{i:03d}.parquet")


def noop(df) -> None:
    df.write.format("noop").mode("overwrite").save()


def add_string_columns(path: Path, wide: Path, n_columns: int = 30, width: int = 30) -> None:
    """A copy of the Parquet data set at ``path`` with ``n_columns`` string columns of ``width`` bytes each."""
    wide.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(3)
    for file in sorted(path.glob("*.parquet")):
        table = pq.read_table(file)
        for c in range(n_columns):  # 1,000 distinct values per column, like a label or a code
            values = pa.array([f"{c:02d}-{v:0{width - 3}d}" for v in range(1000)])
            table = table.append_column(f"s{c:02d}", values.take(pa.array(rng.integers(0, 1000, table.num_rows))))
        pq.write_table(table, wide / file.name)


# --------------------------------------------------------------------------------------------- 1. kNN


def clustered(n_rows: int, dim: int) -> np.ndarray:
    """``n_rows`` float32 points around 50 random centres (scale 4) with unit Gaussian noise."""
    rng = np.random.default_rng(0)
    centres = rng.normal(scale=4.0, size=(50, dim))
    return (centres[rng.integers(0, 50, n_rows)] + rng.normal(size=(n_rows, dim))).astype(np.float32)


def bench_knn(args, tmp: Path, rows: list[Row]) -> None:
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

    # Scaling: the same job on one core.
    spark = session("local[1]")
    df = spark.read.parquet(str(path))
    t1 = timed(lambda: noop(sklspark.distribute(nn, "kneighbors", df, n_neighbors=args.k)))
    rows.append(Row(group, "sklspark distribute() on a DataFrame, local[1]", t1, "scaling reference"))


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
    backend = GemmBackend()
    backend.build(X, "euclidean")
    keys = np.arange(len(X))
    chunks = [X[i : i + 4096] for i in range(0, len(X), 4096)]
    with threadpool_limits(1), ThreadPoolExecutor(2) as pool:
        t = timed(lambda: list(pool.map(lambda Q: exact_top_k(backend, X, keys, Q, k, "euclidean"), chunks)))
    return [
        Row(group, "GEMM floor: 2·n²·d flops at numpy's SGEMM rate", floor, f"{rate / 1e9:.0f} GFLOP/s, {kernel}"),
        Row(group, "in-process sklspark gemm kernel + exact re-rank", t, "2 threads x 1 BLAS thread"),
    ]


# ------------------------------------------------------------------------- 1b. approximate kNN at scale


def bench_sparse(args, tmp: Path, rows: list[Row]) -> None:
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


def bench_approximate(args, tmp: Path, rows: list[Row]) -> None:
    """``all_neighbors`` with the hnsw backend from ONE Parquet file, end to end, and its recall@k on a sample.

    Recall is measured against the exact top ``k`` (in-process gemm kernel + exact re-rank, the query
    itself left out as ``exclude_self`` does) of a random sample of rows, read back from the written result.
    """
    from sklspark.neighbors import GemmBackend, _join
    from sklspark.neighbors._rerank import exact_top_k

    n, k = args.approx_rows, args.k
    group = f"Approximate kNN all points ({n:,} x {args.knn_dim} float32, k={k}, Euclidean, hnsw)"
    X = clustered(n, args.knn_dim)
    one_file = tmp / "approximate-one-file.parquet"
    write_features(one_file, X, partitions=1)
    sample = np.sort(np.random.default_rng(5).choice(n, min(n, args.approx_sample), replace=False))

    exact = {}
    backend = GemmBackend()
    backend.build(X, "euclidean")
    t = timed(lambda: exact.setdefault("p", exact_top_k(backend, X, np.arange(n), X[sample], k + 1, "euclidean")[0]))
    rows.append(
        Row(
            group,
            f"exact search (in-process gemm kernel + exact re-rank), {len(sample):,} rows, extrapolated",
            t * n / len(sample),
            f"baseline: {t:.1f} s measured on {len(sample):,} query rows x {n:,}, scaled to every row",
        )
    )
    expected = [[p for p in row if p != i][:k] for i, row in zip(sample, exact["p"])]

    spark = session("local[2]")
    hnsw = TimedHnsw(M=args.hnsw_m, ef_construction=args.hnsw_ef_construction, ef_search=args.hnsw_ef_search)
    df = spark.read.parquet(str(one_file))
    size = _join._estimated_bytes(df)
    mode = "broadcast" if size is not None and size <= _join.REFERENCE_BROADCAST_MAX_BYTES else "sharded"
    mode = f"{mode} mode (Spark estimates the file at {(size or 0) / 2**20:.0f} MiB)"
    out = tmp / "approximate-neighbours.parquet"
    t = timed(lambda: all_neighbors(df, k, backend=hnsw).write.mode("overwrite").parquet(str(out)))
    table = pq.read_table(out, columns=["id", "neighbor_ids"])
    got = dict(zip(table.column("id").to_pylist(), table.column("neighbor_ids").to_pylist()))
    recall = float(np.mean([len(set(got[i]) & set(e)) / k for i, e in zip(sample.tolist(), expected)]))
    params = f"M={hnsw.M}, ef_construction={hnsw.ef_construction}, ef_search={hnsw.ef_search}"
    rows.append(
        Row(
            group,
            "sklspark all_neighbors from ONE Parquet file, hnsw backend, written to Parquet",
            t,
            f"end to end, {mode}; recall@{k} = {recall:.4f} on {len(sample):,} rows; {params}",
            extra={"recall": recall},
        )
    )
    if BUILD_SECONDS:  # the graph is built on the driver in broadcast mode
        build = BUILD_SECONDS[-1]
        rows.append(Row(group, "  of which: HNSW graph build on the driver (2 threads)", build))
        rows.append(Row(group, "  of which: everything else (read, collect, ship, search, re-rank, write)", t - build))


#: How long each build of a :class:`TimedHnsw` took (on the driver, in broadcast mode), in seconds.
BUILD_SECONDS: list[float] = []


class TimedHnsw(HnswBackend):
    """The hnsw backend, timing its builds: a backend through the plugin interface like any user's."""

    def build(self, X: np.ndarray, metric: str) -> None:
        start = time.perf_counter()
        super().build(X, metric)
        BUILD_SECONDS.append(time.perf_counter() - start)


# ------------------------------------------------------------------------------ 2. cheap models


def bench_cheap(args, tmp: Path, rows: list[Row]) -> None:
    from pyspark.ml.functions import predict_batch_udf
    from pyspark.sql.functions import udf
    from pyspark.sql.types import ArrayType, FloatType, LongType, StructField, StructType

    rng = np.random.default_rng(1)
    X = rng.normal(size=(args.cheap_rows, args.cheap_dim)).astype(np.float32)
    y = (X[:, 0] + X[:, 1] > 0).astype(np.int64)
    path = tmp / "cheap.parquet"
    write_features(path, X, partitions=8)
    wide = tmp / "cheap-wide.parquet"
    add_string_columns(path, wide)
    models = {
        "LogisticRegression.predict": (LogisticRegression().fit(X[:20_000], y[:20_000]), "predict", LongType()),
        "StandardScaler.transform": (StandardScaler().fit(X[:20_000]), "transform", ArrayType(FloatType())),
    }
    spark = session("local[2]", **{"spark.sql.execution.arrow.maxRecordsPerBatch": "10000"})
    for label, (model, method, spark_type) in list(models.items())[: 1 if args.quick else None]:
        group = f"Cheap model, many rows: {label} ({args.cheap_rows:,} x {args.cheap_dim} float32)"
        rows.append(Row(group, "in-process numpy/scikit-learn", timed(lambda: getattr(model, method)(X)), "baseline"))
        bc = spark.sparkContext.broadcast(model)
        width = args.cheap_dim

        def expert(batches, bc=bc, method=method):
            fn = getattr(bc.value, method)
            for batch in batches:
                col = batch.column("features")
                values = col.flatten().to_numpy(zero_copy_only=False).reshape(len(col), width)
                out = fn(values)
                arr = (
                    pa.array(out)
                    if out.ndim == 1
                    else pa.ListArray.from_arrays(
                        pa.array(np.arange(len(out) + 1) * out.shape[1], type=pa.int32()), pa.array(out.ravel())
                    )
                )
                yield pa.RecordBatch.from_arrays([*batch.columns, arr], names=[*batch.schema.names, "out"])

        df = spark.read.parquet(str(path))
        schema = StructType([*df.schema.fields, StructField("out", spark_type)])
        noop(df.mapInArrow(expert, schema))  # warm-up, untimed: file cache, imports in the Python workers
        rows.append(Row(group, "hand-written expert mapInArrow", timed(lambda: noop(df.mapInArrow(expert, schema)))))

        def make_predict_fn(bc=bc, method=method):
            fn = getattr(bc.value, method)
            return lambda inputs: fn(inputs)

        batch_udf = predict_batch_udf(
            make_predict_fn, return_type=spark_type, batch_size=4096, input_tensor_shapes=[[width]]
        )
        rows.append(
            Row(group, "pyspark predict_batch_udf", timed(lambda: noop(df.withColumn("out", batch_udf("features")))))
        )
        rows.append(
            Row(
                group,
                "sklspark distribute() on the DataFrame",
                timed(lambda: noop(sklspark.distribute(model, method, df))),
            )
        )
        score = sklspark.udf(model, method)
        rows.append(
            Row(group, "sklspark udf() in withColumn", timed(lambda: noop(df.withColumn("out", score("features")))))
        )
        wide_df = spark.read.parquet(str(wide))
        wide_schema = StructType([*wide_df.schema.fields, StructField("out", spark_type)])
        noop(wide_df)  # warm-up, untimed: the wide files' cache
        for table, name in ((df, "table"), (wide_df, "wide table")):
            rows.append(Row(group, f"reading the {name} only (no model)", timed(lambda t=table: noop(t)), "reference"))
        rows.append(
            Row(
                group,
                "sklspark distribute() on the wide table (+30 string columns of 30 bytes)",
                timed(lambda: noop(sklspark.distribute(model, method, wide_df))),
                "only the feature column goes through Python",
            )
        )
        rows.append(
            Row(
                group,
                "hand-written expert mapInArrow on the wide table",
                timed(lambda: noop(wide_df.mapInArrow(expert, wide_schema))),
                "every column goes through Python",
            )
        )

        def stream() -> None:
            source = spark.readStream.schema(df.schema).option("maxFilesPerTrigger", 1).parquet(str(path))
            sink = sklspark.distribute(model, method, source).writeStream.format("noop").trigger(availableNow=True)
            sink.option("checkpointLocation", str(tmp / f"checkpoint-{method}")).start().awaitTermination()

        t = timed(stream)
        rows.append(
            Row(
                group,
                "sklspark distribute() on a file stream, 1 file per micro-batch",
                t,
                f"{args.cheap_rows / t:,.0f} rows/s",
            )
        )

        def one_row(v, bc=bc, method=method):
            out = getattr(bc.value, method)(np.asarray(v, dtype=np.float32).reshape(1, -1))[0]
            return out.tolist() if hasattr(out, "tolist") else out

        row_udf = udf(one_row, spark_type)
        sample = df.limit(args.naive_sample)
        t = timed(lambda: noop(sample.withColumn("out", row_udf("features")))) * args.cheap_rows / args.naive_sample
        rows.append(Row(group, "row-at-a-time Python UDF", t, f"measured on {args.naive_sample:,} rows, extrapolated"))


# ------------------------------------------------------------------------------------- 3. memory


def bench_memory(args, tmp: Path, rows: list[Row]) -> None:
    """Peak RSS of a Python worker running distribute() (RDD path), fresh worker per task."""
    spark = session("local[2]", **{"spark.python.worker.reuse": "false"})
    rng = np.random.default_rng(2)
    ref = rng.normal(size=(2_000, 32)).astype(np.float32)
    nn = NearestNeighbors(n_neighbors=5, algorithm="brute").fit(ref)

    def peak_mb(n_rows: int, chunk_size: int) -> float:
        X = rng.normal(size=(n_rows, 32)).astype(np.float32)
        path = tmp / f"mem-{n_rows}.parquet"
        if not path.exists():
            write_features(path, X, partitions=1)
        rdd = spark.read.parquet(str(path)).coalesce(1).rdd.map(lambda r: np.asarray(r.features, dtype=np.float32))
        out = sklspark.distribute(nn, "kneighbors", rdd, chunk_size=chunk_size)

        def drain(items):
            count = sum(1 for _ in items)
            yield count, resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024

        return max(mb for _, mb in out.mapPartitions(drain).collect())

    group = "Python worker peak memory (RSS, MB) vs chunk_size, one partition"
    n_rows = args.memory_rows
    for chunk_size in (256, 4096) if args.quick else (256, 1024, 4096, 16384, 65536):
        rows.append(
            Row(group, f"chunk_size={chunk_size:,}, {n_rows:,} rows", 0.0, extra={"mb": peak_mb(n_rows, chunk_size)})
        )
    group = "Python worker peak memory (RSS, MB) vs rows, chunk_size=4,096, one partition"
    for factor in (1, 10):
        rows.append(Row(group, f"{n_rows * factor:,} rows", 0.0, extra={"mb": peak_mb(n_rows * factor, 4096)}))


# ------------------------------------------------------------------------------------- reporting


def find(rows: list[Row], group_prefix: str, variant_prefix: str) -> Row | None:
    return next((r for r in rows if r.group.startswith(group_prefix) and r.variant.startswith(variant_prefix)), None)


def targets(rows: list[Row]) -> list[tuple[str, str, bool]]:
    out = []

    def ratio(a: Row | None, b: Row | None) -> float | None:
        return a.seconds / b.seconds if a and b and b.seconds else None

    def add(text: str, value: float | None, ok: Callable[[float], bool], fmt: str = ".2f") -> None:
        if value is not None:
            out.append((text, f"{value:{fmt}}", ok(value)))

    base = find(rows, "kNN", "in-process scikit-learn")
    add(
        "all_neighbors (sklearn, broadcast) time / in-process scikit-learn time <= 1.10",
        ratio(find(rows, "kNN", "sklspark all_neighbors, broadcast, sklearn"), base),
        lambda v: v <= 1.10,
    )
    add(
        "all_neighbors from one Parquet file (gemm) time / in-process scikit-learn time <= 0.6",
        ratio(find(rows, "kNN", "sklspark all_neighbors from ONE Parquet file"), base),
        lambda v: v <= 0.6,
    )
    add(
        "in-process gemm kernel time / GEMM floor <= 1.5",
        ratio(find(rows, "kNN", "in-process sklspark gemm kernel"), find(rows, "kNN", "GEMM floor")),
        lambda v: v <= 1.5,
    )
    add(
        "all_neighbors sharded time / broadcast time (gemm) <= 1.2",
        ratio(
            find(rows, "kNN", "sklspark all_neighbors, sharded"),
            find(rows, "kNN", "sklspark all_neighbors, broadcast, gemm"),
        ),
        lambda v: v <= 1.2,
    )
    add(
        "all_neighbors (faiss) time / in-process scikit-learn time < 1",
        ratio(find(rows, "kNN", "sklspark all_neighbors, broadcast, faiss"), base),
        lambda v: v < 1,
    )
    add(
        "row-per-call time / distribute() time >= 15",
        ratio(find(rows, "kNN", "naive Spark"), find(rows, "kNN", "sklspark distribute() on an RDD")),
        lambda v: v >= 15,
    )
    add(
        "local[1] time / local[2] time >= 1.7 (distribute() kNN)",
        ratio(
            find(rows, "kNN", "sklspark distribute() on a DataFrame, local[1]"),
            find(rows, "kNN", "sklspark distribute() on a DataFrame"),
        ),
        lambda v: v >= 1.7,
    )
    approximate = find(rows, "Approximate kNN", "sklspark all_neighbors")
    if approximate is not None:
        seconds = approximate.seconds
        add("approximate all_neighbors (hnsw) end to end, seconds <= 600", seconds, lambda v: v <= 600, ".0f")
        recall = approximate.extra["recall"]
        add("approximate all_neighbors (hnsw) recall@10 >= 0.95", recall, lambda v: v >= 0.95, ".4f")
    for model in ("LogisticRegression.predict", "StandardScaler.transform"):
        group = f"Cheap model, many rows: {model}"
        for variant, name in (("sklspark distribute() on the DataFrame", "distribute()"), ("sklspark udf()", "udf()")):
            add(
                f"{model}: {name} throughput / hand-written mapInArrow throughput >= 1.0",
                ratio(find(rows, group, "hand-written"), find(rows, group, variant)),
                lambda v: v >= 1.0,
            )
            add(
                f"{model}: {name} throughput / predict_batch_udf throughput >= 1.5",
                ratio(find(rows, group, "pyspark predict_batch_udf"), find(rows, group, variant)),
                lambda v: v >= 1.5,
            )
        add(
            f"{model}: distribute() time on the wide table / on the narrow table <= 1.15",
            ratio(
                find(rows, group, "sklspark distribute() on the wide"),
                find(rows, group, "sklspark distribute() on the D"),
            ),
            lambda v: v <= 1.15,
        )
        wide_read, narrow_read = find(rows, group, "reading the wide"), find(rows, group, "reading the table")
        wide, narrow = (
            find(rows, group, "sklspark distribute() on the wide"),
            find(rows, group, "sklspark distribute() on the D"),
        )
        if wide and narrow and wide_read and narrow_read:
            add(
                f"{model}: distribute() time beyond reading, wide table / narrow table <= 1.15",
                (wide.seconds - wide_read.seconds) / (narrow.seconds - narrow_read.seconds),
                lambda v: v <= 1.15,
            )
    mem = [r for r in rows if r.group.startswith("Python worker peak memory (RSS, MB) vs rows")]
    if len(mem) == 2:
        add(
            "worker peak memory at 10x rows / at 1x rows <= 1.10",
            mem[1].extra["mb"] / mem[0].extra["mb"],
            lambda v: v <= 1.10,
        )
    return out


def report(rows: list[Row], args, elapsed: float) -> str:
    lines = [
        f"# sklspark benchmarks ({'quick smoke run' if args.quick else 'default sizes'})",
        "",
        f"{datetime.date.today()}, {platform.machine()}, {os.cpu_count()} cores, Python {platform.python_version()}, "
        f"Spark local[2] unless noted; whole run {elapsed / 60:.1f} min. Ratio = time / the group's baseline "
        "(lower is faster); speed-up = baseline time / time.",
    ]
    for group in dict.fromkeys(r.group for r in rows):
        members = [r for r in rows if r.group == group]
        lines += ["", f"## {group}", ""]
        if "memory" in group:
            lines += ["| variant | peak RSS (MB) |", "| --- | ---: |"]
            lines += [f"| {r.variant} | {r.extra['mb']:.0f} |" for r in members]
            continue
        base = members[0].seconds
        lines += ["| variant | time (s) | ratio to baseline | note |", "| --- | ---: | ---: | --- |"]
        lines += [f"| {r.variant} | {r.seconds:.2f} | {r.seconds / base:.2f} | {r.note} |" for r in members]
    lines += ["", "## Targets", "", "| target | measured | met |", "| --- | ---: | :---: |"]
    lines += [f"| {text} | {value} | {'yes' if ok else '**no**'} |" for text, value, ok in targets(rows)]
    return "\n".join(lines) + "\n"


def plot(rows: list[Row], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    timed_rows = [r for r in rows if "memory" not in r.group]
    groups = list(dict.fromkeys(r.group for r in timed_rows))
    fig, axes = plt.subplots(len(groups), 1, figsize=(11, 2.2 + 0.45 * len(timed_rows)), squeeze=False)
    for ax, group in zip(axes[:, 0], groups):
        members = [r for r in timed_rows if r.group == group]
        ratios = [r.seconds / members[0].seconds for r in members]
        ax.barh([r.variant for r in members][::-1], ratios[::-1], color="#4477aa")
        ax.set_xscale("log")
        ax.axvline(1.0, color="black", linewidth=0.8)
        ax.set_title(group, fontsize=9)
        ax.tick_params(labelsize=8)
        ax.set_xlabel("time / baseline (log scale, lower is faster)", fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=110)


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument(
        "--quick", action="store_true", help="tiny sizes, every group, one cheap model, two chunk sizes: a smoke test"
    )
    parser.add_argument("--knn-rows", type=int, default=100_000)
    parser.add_argument("--knn-dim", type=int, default=64)
    parser.add_argument("-k", type=int, default=10)
    parser.add_argument("--cheap-rows", type=int, default=2_000_000)
    parser.add_argument("--cheap-dim", type=int, default=32)
    parser.add_argument("--naive-sample", type=int, default=2_000)
    parser.add_argument("--memory-rows", type=int, default=100_000)
    parser.add_argument("--sparse-rows", type=int, default=50_000, help="documents of the sparse TF-IDF group")
    parser.add_argument("--approx-rows", type=int, default=1_000_000, help="rows of the approximate group")
    parser.add_argument("--approx-sample", type=int, default=10_000, help="rows whose recall is measured")
    parser.add_argument("--hnsw-m", type=int, default=32)
    parser.add_argument("--hnsw-ef-construction", type=int, default=40)
    parser.add_argument("--hnsw-ef-search", type=int, default=128)
    parser.add_argument("--name", default=None, help="results file name (default: default or quick)")
    parser.add_argument(
        "--only",
        choices=["sparse", "approximate", "knn", "cheap", "memory"],
        action="append",
        help="run only these groups (repeatable); approximate (1,000,000 rows, hnsw) runs only when named or --quick",
    )
    args = parser.parse_args(argv)
    if args.quick:
        args.knn_rows, args.cheap_rows, args.naive_sample, args.memory_rows = 2_000, 20_000, 200, 5_000
        args.sparse_rows = 1_000
        args.approx_rows, args.approx_sample = 20_000, 1_000
    name = args.name or ("quick" if args.quick else "default")

    rows: list[Row] = []
    start = time.perf_counter()
    with tempfile.TemporaryDirectory(prefix="sklspark-bench-") as tmp:
        # In this order, groups on the same master and conf share a session (knn ends on local[1]).
        groups = {
            "sparse": bench_sparse,
            "approximate": bench_approximate,
            "knn": bench_knn,
            "cheap": bench_cheap,
            "memory": bench_memory,
        }
        default = list(groups) if args.quick else ["sparse", "knn", "cheap", "memory"]
        for bench in (groups[g] for g in args.only or default):
            bench(args, Path(tmp), rows)
            print(f"[bench] {bench.__name__} done at {time.perf_counter() - start:.0f}s", file=sys.stderr)
    text = report(rows, args, time.perf_counter() - start)
    RESULTS.mkdir(exist_ok=True)
    (RESULTS / f"{name}.md").write_text(text)
    plot(rows, RESULTS / f"{name}.png")
    print(text)


if __name__ == "__main__":
    main()
