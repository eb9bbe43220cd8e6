"""The model travels once and is loaded once per Python worker; BLAS threads are capped per task."""

import os

import numpy as np
from sklearn.base import BaseEstimator, TransformerMixin
from sklearn.neighbors import NearestNeighbors
from sklearn.preprocessing import FunctionTransformer

import sklspark._shipping as shipping
from sklspark import distribute
from sklspark._shipping import ShippedModel

X = np.random.default_rng(1).normal(size=(200, 8))


def _load_recorder(log_path):
    """A fitted transformer that appends its process id to ``log_path`` every time it is unpickled."""

    class LoadRecorder(TransformerMixin, BaseEstimator):
        def fit(self, X, y=None):
            self.n_features_in_ = X.shape[1]
            return self

        def transform(self, X):
            return np.full(X.shape[0], os.getpid())

        def __setstate__(self, state):
            self.__dict__.update(state)
            with open(log_path, "a") as log:
                log.write(f"{os.getpid()}\n")

    return LoadRecorder().fit(X)


def test_model_is_loaded_once_per_worker_process(spark, tmp_path):
    log = tmp_path / "loads.txt"
    est = _load_recorder(str(log))
    result = distribute(est, "transform", spark.sparkContext.parallelize(list(X), 16), chunk_size=5)
    pids_used = set(result.collect())
    pids_used |= set(result.collect())  # a second job reuses the workers' copies
    loads = log.read_text().split()
    assert sorted(set(loads)) == sorted(str(p) for p in pids_used)
    assert len(loads) == len(set(loads)), f"a worker loaded the model more than once: {loads}"


def test_dataframe_path_also_loads_once_per_worker(spark, tmp_path):
    log = tmp_path / "loads.txt"
    est = _load_recorder(str(log))
    df = spark.createDataFrame([(i, X[i].tolist()) for i in range(len(X))], "id long, features array<double>")
    pids = {r["transform"] for r in distribute(est, "transform", df.repartition(12), chunk_size=7).collect()}
    loads = log.read_text().split()
    assert len(loads) == len(set(loads)) == len(pids)


def test_blas_threads_are_capped_at_task_cpus(spark):
    def blas_threads(Z):
        from threadpoolctl import threadpool_info

        counts = [pool["num_threads"] for pool in threadpool_info() if pool["user_api"] == "blas"]
        return np.full(Z.shape[0], max(counts))

    est = FunctionTransformer(blas_threads).fit(X)
    task_cpus = int(spark.conf.get("spark.task.cpus", "1"))
    assert set(distribute(est, "transform", spark.sparkContext.parallelize(list(X), 4)).collect()) == {task_cpus}


def test_lambda_inside_a_pipeline_travels(spark):
    from sklearn.pipeline import make_pipeline

    est = make_pipeline(FunctionTransformer(lambda Z: np.abs(Z)), NearestNeighbors(n_neighbors=2)).fit(X)
    got = distribute(est[-1], "kneighbors", spark.sparkContext.parallelize(list(np.abs(X)), 3)).collect()
    expected = est[-1].kneighbors(np.abs(X))
    np.testing.assert_array_equal(np.array([g[1] for g in got]), expected[1])
    transformed = distribute(est[:-1], "transform", spark.sparkContext.parallelize(list(X), 3)).collect()
    np.testing.assert_allclose(np.array(transformed), np.abs(X))


def test_classic_sessions_broadcast_the_model(spark):
    for where in (spark, spark.sparkContext, spark.range(1)):
        assert ShippedModel(NearestNeighbors().fit(X), where).via == "broadcast"


def test_models_over_the_broadcast_limit_travel_as_a_file(spark, monkeypatch):
    monkeypatch.setattr(shipping, "BROADCAST_MAX_BYTES", 1000)
    nn = NearestNeighbors(n_neighbors=3).fit(X)
    assert ShippedModel(nn, spark).via == "file"
    got = distribute(nn, "kneighbors", spark.sparkContext.parallelize(list(X), 3)).collect()
    np.testing.assert_array_equal(np.array([g[1] for g in got]), nn.kneighbors(X)[1])
