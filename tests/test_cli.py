"""The real ``sklspark`` command, run as a user runs it (subprocess): exit codes, messages, outputs."""

import operator
import os
import shutil
import subprocess
import sys

import joblib
import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
import skops.io as sio
from sklearn.linear_model import LogisticRegression
from sklearn.neighbors import NearestNeighbors
from sklearn.pipeline import make_pipeline
from sklearn.preprocessing import FunctionTransformer, StandardScaler

SKLSPARK = [sys.executable, "-m", "sklspark"]
X = np.random.default_rng(0).normal(size=(300, 4))
Y = (X[:, 0] > 0).astype(int)


def run(*args, env=None, timeout=300):
    proc = subprocess.run([*SKLSPARK, *args, "--master", "local[2]"] if args[0] != "--help" else [*SKLSPARK, *args],
                          capture_output=True, text=True, timeout=timeout, env=env)
    return proc.returncode, proc.stdout, proc.stderr


@pytest.fixture(scope="module")
def files(tmp_path_factory):
    d = tmp_path_factory.mktemp("cli")
    pq.write_table(pa.table({"id": np.arange(len(X)), **{c: X[:, j] for j, c in enumerate("abcd")}}), d / "in.parquet")
    bad = X.copy()
    bad[123, 1] = np.nan
    pq.write_table(pa.table({"id": np.arange(len(X)), **{c: bad[:, j] for j, c in enumerate("abcd")}}), d / "nan.parquet")
    model = make_pipeline(StandardScaler(), LogisticRegression()).fit(X, Y)
    sio.dump(model, d / "model.skops")
    joblib.dump(model, d / "model.joblib")
    sio.dump(FunctionTransformer(operator.neg).fit(X), d / "neg.skops")
    sio.dump(NearestNeighbors(n_neighbors=3, algorithm="brute").fit(X), d / "nn.skops")  # skops does not trust KD-trees
    return d


@pytest.mark.parametrize("command", [[], ["apply"], ["knn"], ["demo"]])
def test_help_is_complete(command):
    proc = subprocess.run([*SKLSPARK, *command, "--help"], capture_output=True, text=True)
    assert proc.returncode == 0
    for option in {"apply": ["--method", "--kwarg", "--trust", "--trust-pickle", "--chunk-size", "--features"],
                   "knn": ["-k", "--id-col", "--metric", "--backend", "--shards", "--exclude-self"],
                   "demo": ["--n-points"]}.get(command[0] if command else "", ["apply", "knn", "demo", "Exit codes"]):
        assert option in proc.stdout
    if command:
        for option in ("--master", "--conf", "--spark-connect", "--verbose"):
            assert option in proc.stdout


def test_apply_writes_the_in_process_result(files, tmp_path):
    code, _, err = run("apply", str(files / "model.skops"), str(files / "in.parquet"), "-o", str(tmp_path / "out"),
                       "--features", "a,b,c,d", "--method", "predict_proba", "--chunk-size", "64")
    assert code == 0, err
    assert "done:" in err and "300 rows out" in err
    table = pq.read_table(tmp_path / "out").sort_by("id")
    model = sio.load(files / "model.skops")
    np.testing.assert_allclose(np.stack(table.column("probability").to_numpy(zero_copy_only=False)), model.predict_proba(X))
    assert not [p for p in os.listdir(tmp_path) if "sklspark-tmp" in p]


def test_apply_with_kwargs_and_trusted_type(files, tmp_path):
    code, _, err = run("apply", str(files / "nn.skops"), str(files / "in.parquet"), "-o", str(tmp_path / "nn"),
                       "--features", "a,b,c,d", "--method", "kneighbors", "--kwarg", "n_neighbors=2",
                       "--kwarg", "return_distance=False")
    assert code == 0, err
    indices = np.stack(pq.read_table(tmp_path / "nn").sort_by("id").column("indices").to_numpy(zero_copy_only=False))
    np.testing.assert_array_equal(indices, NearestNeighbors().fit(X).kneighbors(X, 2, return_distance=False))
    code, _, err = run("apply", str(files / "neg.skops"), str(files / "in.parquet"), "-o", str(tmp_path / "neg"),
                       "--features", "a,b,c,d", "--method", "transform", "--trust", "_operator.neg")
    assert code == 0, err


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["apply", "{d}/model.joblib", "{d}/in.parquet", "-o", "{o}"], "is a pickle/joblib file: loading it runs code"),
        (["apply", "{d}/neg.skops", "{d}/in.parquet", "-o", "{o}"], "types skops does not trust by default: _operator.neg. If you trust this file, pass --trust _operator.neg"),
        (["apply", "{d}/missing.skops", "{d}/in.parquet", "-o", "{o}"], "model file {d}/missing.skops does not exist"),
        (["apply", "{d}/model.skops", "{d}/nowhere.parquet", "-o", "{o}", "--features", "a,b,c,d"], "input {d}/nowhere.parquet does not exist"),
        (["apply", "{d}/model.skops", "{d}/in.parquet", "-o", "{o}", "--features", "a,b,zz"], "feature column(s) ['zz'] not found"),
        (["apply", "{d}/model.skops", "{d}/in.parquet", "-o", "{d}", "--features", "a,b,c,d"], "exists; pass --overwrite to replace it"),
        (["apply", "{d}/model.skops", "{d}/in.parquet", "-o", "{o}", "--features", "a,b,c,d", "--method", "fit"], "'fit' is not a prediction-time method"),
        (["knn", "{d}/in.parquet", "-o", "{o}", "-k", "0"], "Invalid value for '-k'"),
        (["apply", "{d}/model.skops", "{d}/in.parquet", "-o", "{o}", "--conf", "novalue"], "expected key=value, got 'novalue'"),
    ],
)
def test_bad_arguments_exit_2_before_any_job(files, tmp_path, args, message):
    args = [a.format(d=files, o=tmp_path / "out") for a in args]
    code, _, err = run(*args)
    assert code == 2, err
    assert message.format(d=files) in err
    assert not (tmp_path / "out").exists()


def test_failed_job_exits_1_with_one_paragraph_and_no_output(files, tmp_path):
    code, _, err = run("apply", str(files / "model.skops"), str(files / "nan.parquet"), "-o", str(tmp_path / "out"),
                       "--features", "a,b,c,d", "--chunk-size", "50")
    assert code == 1
    assert "error: Pipeline.predict failed in partition 0, rows 100-149: ValueError: Input X contains NaN" in err
    assert "at org.apache" not in err and "Traceback" not in err
    assert os.listdir(tmp_path) == []  # neither the output nor a temporary directory is left


def test_verbose_shows_the_trace(files, tmp_path):
    code, _, err = run("apply", str(files / "model.skops"), str(files / "nan.parquet"), "-o", str(tmp_path / "out"),
                       "--features", "a,b,c,d", "--verbose")
    assert code == 1 and "Traceback" in err


def test_no_java_is_explained_before_spark_starts(files, tmp_path):
    env = {**os.environ, "JAVA_HOME": str(tmp_path / "no-jdk"), "PATH": os.path.dirname(sys.executable)}
    code, _, err = run("apply", str(files / "model.skops"), str(files / "in.parquet"), "-o", str(tmp_path / "out"),
                       "--features", "a,b,c,d", env=env)
    assert code == 1
    assert "Java not found" in err and "needs Java 17 or newer" in err
