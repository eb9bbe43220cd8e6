"""A driver program for the fault tests: runs sklspark on a standalone cluster and saves the result.

    python _fault_job.py MASTER_URL KIND OUT_FILE MARKER_DIR {none,crash-once,raise-once}
    python _fault_job.py MASTER_URL serve    # one job per stdin line: a JSON list [KIND, OUT_FILE, MARKER_DIR, FAULT]

KIND is ``rdd`` or ``df`` (``distribute()`` of a projection), or ``knn-broadcast`` or ``knn-sharded``
(``all_neighbors`` with k=5 in that mode). The model (or the neighbours backend) sleeps a little per
chunk and leaves a marker file per chunk in MARKER_DIR, so the test can inject a fault while the job
runs. With ``crash-once`` the first chunk to run kills its Python worker (``os._exit``); with
``raise-once`` it raises. Either way only once across the whole cluster.

``serve`` keeps one driver (its JVM, its application and executors on the cluster) for many jobs, so the
fault tests pay for a driver start-up once: after each job it writes ``OUT_FILE.done`` holding ``ok`` or
the job's traceback, and it stops when stdin closes.
"""

import json
import os
import sys
import time
import traceback
import uuid

import numpy as np
import pyarrow as pa
from pyspark.sql import SparkSession
from sklearn.base import BaseEstimator, TransformerMixin
from sklearn.neighbors import NearestNeighbors

import sklspark
from sklspark.neighbors import SklearnBackend, all_neighbors

N_ROWS, N_FEATURES, N_PARTITIONS = 6_000, 8, 12


class SlowProjection(TransformerMixin, BaseEstimator):
    def __init__(self, marker_dir, fault):
        self.marker_dir = marker_dir
        self.fault = fault

    def fit(self, X, y=None):
        self.weights_ = np.random.default_rng(0).normal(size=(X.shape[1], 3))
        self.n_features_in_ = X.shape[1]
        return self

    def transform(self, X):
        if len(X) > 2:  # not the driver-side probe
            self._maybe_fail()
            time.sleep(0.1)
            open(os.path.join(self.marker_dir, f"chunk-{uuid.uuid4().hex}"), "w").close()
        return X @ self.weights_

    def _maybe_fail(self):
        if self.fault == "none":
            return
        try:
            fd = os.open(os.path.join(self.marker_dir, "fault-done"), os.O_CREAT | os.O_EXCL)
        except FileExistsError:
            return
        os.close(fd)
        if self.fault == "crash-once":
            os._exit(1)
        raise RuntimeError("injected failure (raise-once)")


class SlowSklearnBackend(SklearnBackend):
    """The exact sklearn backend, slowed down and leaving a marker per searched chunk."""

    def __init__(self, marker_dir):
        super().__init__()
        self.marker_dir = marker_dir

    def search(self, Q, n):
        if len(Q) > 2:
            time.sleep(0.1)
            open(os.path.join(self.marker_dir, f"chunk-{uuid.uuid4().hex}"), "w").close()
        return super().search(Q, n)


def _session(master):
    os.environ["PYSPARK_PYTHON"] = sys.executable
    spark = (
        SparkSession.builder.master(master)
        .config("spark.ui.enabled", "false")
        .config("spark.driver.host", "127.0.0.1")
        .config("spark.task.maxFailures", "8")
        .config("spark.executor.memory", "1g")
        .getOrCreate()
    )
    spark.sparkContext.setLogLevel("ERROR")
    return spark


def main(master, kind, out_file, marker_dir, fault):
    spark = _session(master)
    run_job(spark, kind, out_file, marker_dir, fault)
    spark.stop()


def serve(master):
    """Run the job of each stdin line on one session; ``OUT_FILE.done`` says how it ended."""
    spark = _session(master)
    for line in sys.stdin:
        kind, out_file, marker_dir, fault = json.loads(line)
        try:
            run_job(spark, kind, out_file, marker_dir, fault)
            status = "ok"
        except Exception:  # noqa: BLE001 - any failure is reported to the test, which then fails
            status = traceback.format_exc()
        with open(out_file + ".done.tmp", "w") as f:
            f.write(status)
        os.rename(out_file + ".done.tmp", out_file + ".done")  # never seen half-written
    spark.stop()


def run_job(spark, kind, out_file, marker_dir, fault):
    """One job of ``kind`` on ``spark`` (see the module docstring); its result saved in ``out_file``."""
    X = np.random.default_rng(1).normal(size=(N_ROWS, N_FEATURES))
    model = SlowProjection(marker_dir, fault).fit(X)
    if kind.startswith("knn-"):
        # clustered rows: sharded mode routes queries to shards of nearby rows (30 clusters, 4 shards)
        X = X + 8 * np.random.default_rng(2).normal(size=(30, N_FEATURES))[np.arange(N_ROWS) % 30]
        df = spark.createDataFrame(pa.table({"id": np.arange(N_ROWS), "features": list(X)})).repartition(N_PARTITIONS)
        shards = 4 if kind == "knn-sharded" else None
        table = all_neighbors(df, 5, backend=SlowSklearnBackend(marker_dir), shards=shards, chunk_size=200).toArrow()
        expected = NearestNeighbors(n_neighbors=6, algorithm="brute").fit(X).kneighbors(X)[1][:, 1:]
        np.savez(
            out_file,
            ids=table.column("id").to_numpy(),
            expected=expected,
            got=np.stack(table.column("neighbor_ids").to_numpy(zero_copy_only=False)),
        )
        return
    if kind == "rdd":
        rdd = spark.sparkContext.parallelize(list(X), N_PARTITIONS)
        got = np.array(sklspark.distribute(model, "transform", rdd, chunk_size=200).collect())
        ids = np.arange(N_ROWS)
    else:
        df = spark.createDataFrame(pa.table({"id": np.arange(N_ROWS), "features": list(X)})).repartition(N_PARTITIONS)
        table = sklspark.distribute(model, "transform", df, chunk_size=200).select("id", "transform").toArrow()
        ids = table.column("id").to_numpy()
        got = np.stack(table.column("transform").to_numpy(zero_copy_only=False))
    np.savez(out_file, ids=ids, got=got, expected=X @ model.weights_)


if __name__ == "__main__":
    if sys.argv[2:] == ["serve"]:
        serve(sys.argv[1])
    else:
        main(*sys.argv[1:])
