"""A driver program for the version-check tests: its executors' Python has another scikit-learn than it has.

    PYSPARK_PYTHON=/other/env/bin/python python _versions_job.py {quick,classic,connect} MASTER WORKER_SKLEARN WORK_DIR

The workers run the interpreter named by ``PYSPARK_PYTHON``, whose scikit-learn is WORKER_SKLEARN; a
package of the user's is at 1.0 on the driver and at 2.0 on the executors. The entry points must fail in
their task with sklspark's version message (the CLI with exit code 1 and one paragraph), then run and
match the in-process result once ``SKLSPARK_SKIP_VERSION_CHECK=1`` is set on the driver. Prints
``VERSIONS OK``.

``quick`` (a session on MASTER): ``distribute()`` on a DataFrame, a model with the user's package, the
CLI, the opt-out. ``classic``: the same, and ``udf()`` in SQL, ``distribute()`` on an RDD, on a
streaming DataFrame and of many models keyed by a column. ``connect`` (a local Spark Connect server,
``remote("local[2]")``; MASTER is ignored): a DataFrame, SQL, a model shipped as an artifact file, the
opt-out. Every failing job has one task: a failed task takes its Python worker with it, and every new
worker imports scikit-learn again.
"""

import importlib
import os
import sys
import time

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import sklearn
from pyspark.errors import PySparkException
from pyspark.sql import SparkSession
from sklearn.linear_model import LogisticRegression
from sklearn.pipeline import make_pipeline
from sklearn.preprocessing import FunctionTransformer, StandardScaler

import sklspark
import sklspark._shipping as shipping
from sklspark._versions import SKIP_ENV


def main(mode, master, worker_sklearn, work_dir):
    """Run the checks of ``mode`` (see the module docstring); raise AssertionError on the first that fails."""
    os.makedirs(work_dir, exist_ok=True)
    EXPECTED = (
        f"VersionMismatch: sklspark: this Python worker ({os.environ['PYSPARK_PYTHON']} on ",
        f"scikit-learn {sklearn.__version__} on the driver, {worker_sklearn} on this worker",
        f"(pip install scikit-learn=={sklearn.__version__}",
        f"set {SKIP_ENV}=1 on the driver.",
    )
    X = np.random.default_rng(0).normal(size=(400, 4))
    MODEL = make_pipeline(StandardScaler(), LogisticRegression()).fit(X, X[:, 0] + X[:, 1] > 0)

    def expect_mismatch(what, action, *also):
        start = time.perf_counter()
        try:
            action()
        except PySparkException as exc:  # the task's PythonException
            text = str(exc)
            for part in (*EXPECTED, *also):
                assert part in text, f"{what}: {part!r} not in\n{text[-3000:]}"
        else:
            raise AssertionError(f"{what}: no version mismatch")
        print(f"{what}: failed as expected in {time.perf_counter() - start:.1f} s")

    # A package of the user's, at 1.0 on the driver and at 2.0 on the executors (on their PYTHONPATH only).
    PACKAGE = f"userpkg_{os.getpid()}"
    for where, version in (("driver", "1.0"), ("executors", "2.0")):
        os.makedirs(f"{work_dir}/{where}/{PACKAGE}")
        with open(f"{work_dir}/{where}/{PACKAGE}/__init__.py", "w") as f:
            f.write(f"__version__ = {version!r}\n\ndef double(X):\n    return X * 2\n")
    sys.path.insert(0, f"{work_dir}/driver")
    user_package = importlib.import_module(PACKAGE)

    def check_cli():
        """``sklspark apply``, in this process so that it reuses this session and its workers' Python."""
        import skops.io as sio
        from click.testing import CliRunner

        from sklspark.cli._app import cli

        pq.write_table(pa.table({f"x{i}": X[:, i] for i in range(4)}), f"{work_dir}/in.parquet")
        sio.dump(MODEL, f"{work_dir}/model.skops")
        args = ["apply", f"{work_dir}/model.skops", f"{work_dir}/in.parquet", "-o", f"{work_dir}/out.parquet"]
        result = CliRunner().invoke(cli, [*args, "--features", "x0,x1,x2,x3", "--master", master], prog_name="sklspark")
        assert result.exit_code == 1, (result.exit_code, result.output, result.exception)
        assert result.stderr.count("error: ") == 1 and "Traceback" not in result.stderr, result.stderr
        paragraph = " ".join(result.stderr[result.stderr.index("error: ") :].split())  # after the progress line
        assert paragraph.startswith("error: this Python worker"), result.stderr
        assert f"scikit-learn {sklearn.__version__} on the driver, {worker_sklearn} on this worker" in paragraph
        assert paragraph.endswith(f"set {SKIP_ENV}=1 on the driver."), result.stderr
        print("the CLI: exit code 1, one paragraph")

    def stream_query():
        stream_dir = f"{work_dir}/stream"
        os.makedirs(stream_dir)
        pq.write_table(pa.table({"id": np.arange(len(X)), "features": list(X)}), f"{stream_dir}/part-0.parquet")
        stream = spark.readStream.schema("id long, features array<double>").parquet(stream_dir)
        query = sklspark.distribute(MODEL, "predict", stream).writeStream.format("memory").queryName("s").start()
        try:
            query.processAllAvailable()
        finally:
            query.stop()

    builder = SparkSession.builder.appName("sklspark-versions")
    if mode == "connect":
        spark = builder.remote("local[2]").getOrCreate()
    else:
        # One attempt per task on a cluster: a retried task would only fail the same way, three more times.
        spark = builder.master(master).config("spark.ui.enabled", "false").config("spark.task.maxFailures", "1")
        spark = spark.config("spark.executorEnv.PYTHONPATH", f"{work_dir}/executors").getOrCreate()
        spark.sparkContext.setLogLevel("FATAL")
    df = spark.createDataFrame(pa.table({"id": np.arange(len(X)), "features": list(X)})).coalesce(1)
    df.select("id", *(df.features[i].alias(f"x{i}") for i in range(4))).createOrReplaceTempView("t")
    sql = "SELECT id, score(x0, x1, x2, x3) AS p FROM t"
    rdd = spark.sparkContext.parallelize(list(X), 1) if mode != "connect" else None

    expect_mismatch("distribute(DataFrame)", lambda: sklspark.distribute(MODEL, "predict", df).collect())
    if mode != "quick":
        spark.udf.register("score", sklspark.udf(MODEL))
        expect_mismatch("udf() in SQL", lambda: spark.sql(sql).collect())
    if mode == "classic":
        expect_mismatch("distribute(RDD)", lambda: sklspark.distribute(MODEL, "predict", rdd).collect())
        expect_mismatch("distribute(streaming DataFrame)", stream_query)
        keyed = df.withColumn("store", (df.id % 2).cast("string"))
        fleet = {"0": MODEL, "1": MODEL}
        expect_mismatch(
            "many models keyed by a column",
            lambda: sklspark.distribute(fleet, "predict", keyed, key="store", features="features").collect(),
        )
    if mode != "connect":
        with_package = make_pipeline(FunctionTransformer(user_package.double), LogisticRegression()).fit(X, X[:, 0] > 0)
        expect_mismatch(
            "a model with a package of its own",
            lambda: sklspark.distribute(with_package, "predict", df).collect(),
            f"; {PACKAGE} 1.0 on the driver, 2.0 on this worker.",
            f" {PACKAGE}==1.0)",
        )
        check_cli()
    else:
        shipping.CLOSURE_MAX_BYTES = 100  # the model travels as an uploaded artifact file: checked the same way
        assert shipping.ShippedModel(MODEL, df).via == "file"
        expect_mismatch(
            "distribute(DataFrame), artifact file", lambda: sklspark.distribute(MODEL, "predict", df).collect()
        )

    # The opt-out, read on the driver when the model is serialised: the check only logs, and this model happens to
    # load under the worker's version. A SQL function made before it still checks.
    os.environ[SKIP_ENV] = "1"
    got = sklspark.distribute(MODEL, "predict", df).toPandas().sort_values("id")
    assert np.array_equal(got["prediction"].to_numpy(), MODEL.predict(X))
    if mode != "quick":
        expect_mismatch("udf() made before the opt-out", lambda: spark.sql(sql).collect())
        spark.udf.register("score", sklspark.udf(MODEL))
        got = spark.sql(sql).toPandas().sort_values("id")
        assert np.array_equal(got["p"].to_numpy(), MODEL.predict(X))
    if mode == "classic":
        assert np.array_equal(np.array(sklspark.distribute(MODEL, "predict", rdd).collect()), MODEL.predict(X))
    spark.stop()
    print("VERSIONS OK")


if __name__ == "__main__":
    main(*sys.argv[1:5])
