"""The ``sklspark`` command: exit codes, messages, outputs.

Most tests run the command in this process, on the test session (click's runner: the same parsing,
exit codes and output streams); those about a user's first run, Java and a killed driver run the real
``sklspark`` program in a subprocess.
"""

import operator
import os
import subprocess
import sys
import time

import joblib
import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
import skops.io as sio
from click.testing import CliRunner
from sklearn.compose import ColumnTransformer
from sklearn.ensemble import HistGradientBoostingClassifier
from sklearn.impute import SimpleImputer
from sklearn.linear_model import LogisticRegression
from sklearn.neighbors import NearestNeighbors
from sklearn.pipeline import make_pipeline
from sklearn.preprocessing import FunctionTransformer, OneHotEncoder, StandardScaler

from sklspark.cli._app import cli

SKLSPARK = [sys.executable, "-m", "sklspark"]
X = np.random.default_rng(0).normal(size=(300, 4))
Y = (X[:, 0] > 0).astype(int)


def _churn(n: int = 200) -> tuple[pd.DataFrame, np.ndarray]:
    rng = np.random.default_rng(3)
    frame = pd.DataFrame(
        {
            "plan": rng.choice(["basic", "pro", "plus"], n).astype(object),
            "tenure": rng.integers(1, 60, n).astype(np.float64),
            "autopay": rng.random(n) < 0.5,
        }
    )
    frame.loc[rng.random(n) < 0.15, "plan"] = np.nan
    frame.loc[rng.random(n) < 0.15, "tenure"] = np.nan
    return frame, np.where(rng.random(n) < 0.3, "churn", "stay")


CHURN, CHURN_Y = _churn()
CHURN_MODEL = make_pipeline(
    ColumnTransformer(
        [
            (
                "plan",
                make_pipeline(SimpleImputer(strategy="most_frequent"), OneHotEncoder(handle_unknown="ignore")),
                ["plan"],
            ),
            ("tenure", SimpleImputer(), ["tenure"]),
            ("autopay", "passthrough", ["autopay"]),
        ]
    ),
    HistGradientBoostingClassifier(max_iter=10, random_state=0),
).fit(CHURN, CHURN_Y)


def run_command(*args, env=None, timeout=300):
    """Run the real ``sklspark`` program as a user runs it: (exit code, stdout, stderr)."""
    proc = subprocess.run(
        [*SKLSPARK, *args, "--master", "local[2]"] if args[0] != "--help" else [*SKLSPARK, *args],
        capture_output=True,
        text=True,
        timeout=timeout,
        env=env,
    )
    return proc.returncode, proc.stdout, proc.stderr


@pytest.fixture
def run(spark):
    """Run the command in this process, on the test session: (exit code, stdout, stderr)."""

    def run(*args):
        result = CliRunner().invoke(cli, [*args, "--master", "local[2]"], prog_name="sklspark")
        if result.exception is not None and not isinstance(result.exception, SystemExit):
            raise result.exception  # a bug, not an exit code
        return result.exit_code, result.stdout, result.stderr

    return run


@pytest.fixture(scope="module")
def files(tmp_path_factory):
    d = tmp_path_factory.mktemp("cli")
    pq.write_table(pa.table({"id": np.arange(len(X)), **{c: X[:, j] for j, c in enumerate("abcd")}}), d / "in.parquet")
    bad = X.copy()
    bad[123, 1] = np.nan
    pq.write_table(
        pa.table({"id": np.arange(len(X)), **{c: bad[:, j] for j, c in enumerate("abcd")}}), d / "nan.parquet"
    )
    model = make_pipeline(StandardScaler(), LogisticRegression()).fit(X, Y)
    sio.dump(model, d / "model.skops")
    joblib.dump(model, d / "model.joblib")
    sio.dump(FunctionTransformer(operator.neg).fit(X), d / "neg.skops")
    sio.dump(NearestNeighbors(n_neighbors=3, algorithm="brute").fit(X), d / "nn.skops")  # skops does not trust KD-trees
    (d / "corrupt.skops").write_bytes(b"not a zip file")
    (d / "garbage.pkl").write_bytes(b"garbage")
    sio.dump(CHURN_MODEL, d / "churn.skops")
    # Spark's own types, columns in another order, an extra column: an int column with gaps is a nullable long.
    table = pa.Table.from_pandas(CHURN[::-1].iloc[:, ::-1].assign(id=np.arange(len(CHURN))[::-1]), preserve_index=False)
    pq.write_table(
        table.set_column(table.schema.get_field_index("tenure"), "tenure", table["tenure"].cast("int64")),
        d / "churn.parquet",
    )
    return d


def test_the_program_prints_its_help():
    proc = subprocess.run([*SKLSPARK, "--help"], capture_output=True, text=True)
    assert proc.returncode == 0
    for text in ("apply", "knn", "demo", "Exit codes"):
        assert text in proc.stdout


@pytest.mark.parametrize("command", [["apply"], ["knn"], ["demo"]])
def test_help_is_complete(command):
    result = CliRunner().invoke(cli, [*command, "--help"], prog_name="sklspark")
    assert result.exit_code == 0
    for option in {
        "apply": [
            "--method",
            "--kwarg",
            "--trust",
            "--trust-pickle",
            "--chunk-size",
            "--features",
            "--partitions",
            "--on-error",
        ],
        "knn": ["-k", "--id-col", "--metric", "--backend", "--shards", "--exclude-self"],
        "demo": ["--n-points"],
    }[command[0]]:
        assert option in result.stdout
    for option in ("--master", "--conf", "--spark-connect", "--verbose"):
        assert option in result.stdout


def test_apply_writes_the_in_process_result(run, files, tmp_path):
    code, _, err = run(
        "apply",
        str(files / "model.skops"),
        str(files / "in.parquet"),
        "-o",
        str(tmp_path / "out"),
        "--features",
        "a,b,c,d",
        "--method",
        "predict_proba",
        "--chunk-size",
        "64",
    )
    assert code == 0, err
    assert "done:" in err and "300 rows out" in err
    table = pq.read_table(tmp_path / "out").sort_by("id")
    model = sio.load(files / "model.skops")
    np.testing.assert_allclose(
        np.stack(table.column("probability").to_numpy(zero_copy_only=False)), model.predict_proba(X)
    )
    assert not [p for p in os.listdir(tmp_path) if "sklspark-tmp" in p]


def test_apply_with_kwargs_and_trusted_type(run, files, tmp_path):
    code, _, err = run(
        "apply",
        str(files / "nn.skops"),
        str(files / "in.parquet"),
        "-o",
        str(tmp_path / "nn"),
        "--features",
        "a,b,c,d",
        "--method",
        "kneighbors",
        "--kwarg",
        "n_neighbors=2",
        "--kwarg",
        "return_distance=False",
    )
    assert code == 0, err
    indices = np.stack(pq.read_table(tmp_path / "nn").sort_by("id").column("indices").to_numpy(zero_copy_only=False))
    np.testing.assert_array_equal(indices, NearestNeighbors().fit(X).kneighbors(X, 2, return_distance=False))
    code, _, err = run(
        "apply",
        str(files / "neg.skops"),
        str(files / "in.parquet"),
        "-o",
        str(tmp_path / "neg"),
        "--features",
        "a,b,c,d",
        "--method",
        "transform",
        "--trust",
        "_operator.neg",
    )
    assert code == 0, err


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["apply", "{d}/model.joblib", "{d}/in.parquet", "-o", "{o}"], "is a pickle/joblib file: loading it runs code"),
        (
            ["apply", "{d}/neg.skops", "{d}/in.parquet", "-o", "{o}"],
            "types skops does not trust by default: _operator.neg. If you trust this file, pass --trust _operator.neg",
        ),
        (["apply", "{d}/missing.skops", "{d}/in.parquet", "-o", "{o}"], "model file {d}/missing.skops does not exist"),
        (
            ["apply", "{d}/model.skops", "{d}/nowhere.parquet", "-o", "{o}", "--features", "a,b,c,d"],
            "input {d}/nowhere.parquet does not exist",
        ),
        (
            ["apply", "{d}/model.skops", "{d}/in.parquet", "-o", "{o}", "--features", "a,b,zz"],
            "feature column(s) ['zz'] not found",
        ),
        (
            ["apply", "{d}/model.skops", "{d}/in.parquet", "-o", "{d}", "--features", "a,b,c,d"],
            "exists; pass --overwrite to replace it",
        ),
        (
            ["apply", "{d}/model.skops", "{d}/in.parquet", "-o", "{o}", "--features", "a,b,c,d", "--method", "fit"],
            "'fit' is not a prediction-time method",
        ),
        (["knn", "{d}/in.parquet", "-o", "{o}", "-k", "0"], "Invalid value for '-k'"),
        (
            ["apply", "{d}/corrupt.skops", "{d}/in.parquet", "-o", "{o}"],
            "cannot load the model from {d}/corrupt.skops: BadZipFile",
        ),
        (
            ["apply", "{d}/garbage.pkl", "{d}/in.parquet", "-o", "{o}", "--trust-pickle"],
            "cannot load the model from {d}/garbage.pkl:",
        ),
        (
            ["apply", "{d}/churn.skops", "{d}/in.parquet", "-o", "{o}"],
            "feature column(s) ['plan', 'tenure', 'autopay'] not found",
        ),
        (
            ["apply", "{d}/model.skops", "{d}/in.parquet", "-o", "{o}", "--conf", "novalue"],
            "expected key=value, got 'novalue'",
        ),
    ],
)
def test_bad_arguments_exit_2_before_any_job(run, files, tmp_path, args, message):
    args = [a.format(d=files, o=tmp_path / "out") for a in args]
    code, _, err = run(*args)
    assert code == 2, err
    assert message.format(d=files) in err
    assert not (tmp_path / "out").exists()


@pytest.mark.parametrize("features", [[], ["--features", "autopay,plan,tenure"]])
def test_apply_pipeline_on_named_string_columns(run, files, tmp_path, features):
    code, _, err = run(
        "apply",
        str(files / "churn.skops"),
        str(files / "churn.parquet"),
        "-o",
        str(tmp_path / "out"),
        "--method",
        "predict_proba",
        "--chunk-size",
        "32",
        *features,
    )
    assert code == 0, err
    got = pd.read_parquet(tmp_path / "out").sort_values("id")
    np.testing.assert_allclose(np.stack(got["probability"]), CHURN_MODEL.predict_proba(CHURN), rtol=1e-7)


def test_bad_master_is_one_line(files, tmp_path):
    args = ["apply", str(files / "model.skops"), str(files / "in.parquet"), "-o", str(tmp_path / "out")]
    proc = subprocess.run([*SKLSPARK, *args, "--master", "spork://nowhere"], capture_output=True, text=True)
    assert proc.returncode == 2
    assert "--master 'spork://nowhere' is not a Spark master URL" in proc.stderr
    assert "at org.apache" not in proc.stderr


def test_failed_job_exits_1_with_one_paragraph_and_no_output(run, files, tmp_path):
    code, _, err = run(
        "apply",
        str(files / "model.skops"),
        str(files / "nan.parquet"),
        "-o",
        str(tmp_path / "out"),
        "--features",
        "a,b,c,d",
        "--chunk-size",
        "50",
    )
    assert code == 1
    assert "error: Pipeline.predict failed in partition 0, rows 100-149: ValueError: Input X contains NaN" in err
    assert "at org.apache" not in err and "Traceback" not in err
    assert os.listdir(tmp_path) == []  # neither the output nor a temporary directory is left


def test_apply_on_error_null_keeps_every_row_and_names_the_bad_one(run, files, tmp_path):
    code, _, err = run(
        "apply",
        str(files / "model.skops"),
        str(files / "nan.parquet"),
        "-o",
        str(tmp_path / "out"),
        "--features",
        "a,b,c,d",
        "--chunk-size",
        "50",
        "--on-error",
        "null",
    )
    assert code == 0, err
    table = pq.read_table(tmp_path / "out").sort_by("id")
    model = sio.load(files / "model.skops")
    prediction, error = table.column("prediction").to_pylist(), table.column("error").to_pylist()
    good = np.setdiff1d(np.arange(len(X)), [123])
    assert [prediction[i] for i in good] == model.predict(X[good]).tolist()
    assert prediction[123] is None and error[123].startswith("predict: ValueError: Input X contains NaN")
    assert [error[i] for i in good] == [None] * len(good)


def test_verbose_shows_the_trace(run, files, tmp_path):
    code, _, err = run(
        "apply",
        str(files / "model.skops"),
        str(files / "nan.parquet"),
        "-o",
        str(tmp_path / "out"),
        "--features",
        "a,b,c,d",
        "--verbose",
    )
    assert code == 1 and "Traceback" in err


def test_no_java_is_explained_before_spark_starts(files, tmp_path):
    env = {**os.environ, "JAVA_HOME": str(tmp_path / "no-jdk"), "PATH": os.path.dirname(sys.executable)}
    code, _, err = run_command(
        "apply",
        str(files / "model.skops"),
        str(files / "in.parquet"),
        "-o",
        str(tmp_path / "out"),
        "--features",
        "a,b,c,d",
        env=env,
    )
    assert code == 1
    assert "Java not found" in err and "needs Java 17 or newer" in err


@pytest.fixture(scope="module")
def points(tmp_path_factory):
    d = tmp_path_factory.mktemp("knn")
    P = np.round(np.random.default_rng(3).normal(size=(400, 5)), 1)  # rounded: duplicates and ties
    ids = [f"p{i:04d}" for i in range(len(P))]
    pq.write_table(pa.table({"pid": ids, "features": list(P)}), d / "points.parquet")
    pd.DataFrame({"pid": ids, **{f"x{j}": P[:, j] for j in range(5)}}).to_csv(d / "points.csv", index=False)
    return d, P, np.array(ids)


def _expected_ids(P, ids, k):
    """Brute-force neighbours with the documented tie rule (distance, then position), self excluded."""
    D = np.sqrt(((P[:, None, :] - P[None, :, :]) ** 2).sum(-1))
    order = np.lexsort((np.broadcast_to(np.arange(len(P)), D.shape), D), axis=1)
    return np.array([[ids[j] for j in row if j != i][:k] for i, row in enumerate(order)])


@pytest.mark.parametrize("extra", [[], ["--shards", "3"], ["--backend", "faiss"]])
def test_knn_writes_every_points_neighbours(run, points, tmp_path, extra):
    d, P, ids = points
    code, _, err = run(
        "knn", str(d / "points.parquet"), "-o", str(tmp_path / "nn"), "-k", "4", "--id-col", "pid", *extra
    )
    assert code == 0, err
    table = pq.read_table(tmp_path / "nn").sort_by("pid")
    assert table.column("pid").to_pylist() == list(ids)
    got = np.array(table.column("neighbor_ids").to_pylist())
    np.testing.assert_array_equal(got, _expected_ids(P, ids, 4))


def test_knn_max_distance(run, points, tmp_path):
    d, P, ids = points
    code, _, err = run(
        "knn", str(d / "points.parquet"), "-o", str(tmp_path / "nn"), "-k", "4", "--id-col", "pid",
        "--max-distance", "0.5",
    )  # fmt: skip
    assert code == 0, err
    table = pq.read_table(tmp_path / "nn").sort_by("pid")
    D = np.sqrt(((P[:, None, :] - P[None, :, :]) ** 2).sum(-1))
    position = {pid: i for i, pid in enumerate(ids)}
    expected = _expected_ids(P, ids, 4)
    for i, (near, dist) in enumerate(
        zip(table.column("neighbor_ids").to_pylist(), table.column("distances").to_pylist())
    ):
        assert near == [n for n in expected[i] if D[i, position[n]] <= 0.5]
        np.testing.assert_allclose(dist, [D[i, position[n]] for n in near])


def test_knn_reads_csv_with_feature_columns(run, points, tmp_path):
    d, P, ids = points
    code, _, err = run(
        "knn",
        str(d / "points.csv"),
        "-o",
        str(tmp_path / "nn"),
        "-k",
        "3",
        "--id-col",
        "pid",
        "--features",
        ",".join(f"x{j}" for j in range(5)),
        "--format",
        "json",
    )
    assert code == 0, err
    result = pd.concat([pd.read_json(f, lines=True) for f in (tmp_path / "nn").glob("part-*.json")])
    result = result.sort_values("pid")
    np.testing.assert_array_equal(np.array(result["neighbor_ids"].tolist()), _expected_ids(P, ids, 3))


def test_knn_bad_arguments(run, points, tmp_path):
    d, _, _ = points
    code, _, err = run(
        "knn", str(d / "points.parquet"), "-o", str(tmp_path / "nn.csv"), "--id-col", "pid", "--format", "csv"
    )
    assert code == 2 and "CSV cannot hold the array/vector columns" in err
    code, _, err = run("knn", str(d / "points.parquet"), "-o", str(tmp_path / "nn"), "--id-col", "nope")
    assert code == 2 and "id column 'nope' not found" in err
    code, _, err = run("knn", str(d / "points.parquet"), "-o", str(tmp_path / "nn"), "--id-col", "pid", "-k", "400")
    assert code == 2 and "k=400 is larger than the reference set" in err
    assert not (tmp_path / "nn").exists()


def test_knn_inner_product_takes_a_negative_max_distance(run, points, tmp_path):
    """With inner_product the distance is -q.r: --max-distance -3 keeps the neighbours with q.r >= 3."""
    d, P, ids = points
    code, _, err = run(
        "knn", str(d / "points.parquet"), "-o", str(tmp_path / "nn"), "-k", "4", "--id-col", "pid",
        "--metric", "inner_product", "--max-distance", "-3",
    )  # fmt: skip
    assert code == 0, err
    table = pq.read_table(tmp_path / "nn").sort_by("pid")
    D = -np.cumsum(P[:, None, :] * P[None, :, :], axis=2)[..., -1]  # terms added in feature order, as sklspark does
    np.fill_diagonal(D, np.inf)  # exclude_self
    order = np.lexsort((np.broadcast_to(np.arange(len(P)), D.shape), D), axis=1)[:, :4]
    expected = [[ids[j] for j in row if D[i, j] <= -3] for i, row in enumerate(order)]
    assert table.column("neighbor_ids").to_pylist() == expected
    assert any(len(e) < 4 for e in expected) and any(len(e) == 4 for e in expected)


def test_knn_on_an_empty_file_writes_an_empty_result(run, tmp_path):
    empty = tmp_path / "empty.parquet"
    pq.write_table(pa.table({"id": pa.array([], pa.int64()), "features": pa.array([], pa.list_(pa.float64()))}), empty)
    for extra in ([], ["--shards", "2"]):
        out = tmp_path / f"nn{len(extra)}"
        code, _, err = run("knn", str(empty), "-o", str(out), "-k", "5", *extra)
        assert code == 0, err
        table = pq.read_table(out)
        assert table.num_rows == 0 and table.column_names == ["id", "neighbor_ids", "distances"]
        assert "0 rows in, 0 rows out" in err


@pytest.mark.parametrize("command", ["knn", "apply"])
def test_corrupt_input_exits_1_naming_the_file_and_the_cause(run, files, tmp_path, command):
    corrupt = tmp_path / "corrupt.parquet"
    corrupt.write_bytes(b"not a parquet file, just some bytes 0123456789")
    model = [str(files / "model.skops")] if command == "apply" else []
    code, _, err = run(command, *model, str(corrupt), "-o", str(tmp_path / "out"))
    assert code == 1, err
    message = " ".join(err.split())  # the console wraps long lines
    assert f"error: cannot read {corrupt} as parquet:" in message
    assert "Could not read footer" in message and "is not a Parquet file" in message
    assert "Py4JJavaError" not in err and "at org.apache" not in err
    assert not (tmp_path / "out").exists()


def test_demo_shows_a_result():
    code, out, err = run_command("demo", "--n-points", "2000")
    assert code == 0, err
    assert "neighbor_ids" in out and "done: knn k=5: 2,000 rows in, 2,000 rows out" in err


def test_killed_job_leaves_no_partial_output(files, tmp_path):
    """SIGKILL the CLI (the driver) mid-write: the destination never holds a partial result."""
    big = tmp_path / "big.parquet"
    Xb = np.random.default_rng(5).normal(size=(200_000, 4))
    pq.write_table(
        pa.table({"id": np.arange(len(Xb)), **{c: Xb[:, j] for j, c in enumerate("abcd")}}), big, row_group_size=5_000
    )
    out = tmp_path / "out"
    proc = subprocess.Popen(
        [
            *SKLSPARK,
            "apply",
            str(files / "nn.skops"),
            str(big),
            "-o",
            str(out),
            "--features",
            "a,b,c,d",
            "--method",
            "kneighbors",
            "--chunk-size",
            "100",
            "--master",
            "local[2]",
        ],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    deadline = time.monotonic() + 240
    while not list(tmp_path.glob("out.sklspark-tmp-*")) and time.monotonic() < deadline:
        assert proc.poll() is None, proc.stderr.read()[-3000:]
        time.sleep(0.2)
    assert list(tmp_path.glob("out.sklspark-tmp-*")), "the job never started writing"
    time.sleep(2)
    proc.kill()
    proc.wait()
    assert not out.exists()


def test_apply_a_mapping_of_models_by_key(run, tmp_path):
    keys = np.arange(len(X)) % 3
    models = {k: make_pipeline(StandardScaler(), LogisticRegression(C=1.0 + k)).fit(X, Y) for k in range(3)}
    joblib.dump(models, tmp_path / "fleet.joblib")
    pq.write_table(
        pa.table({"id": np.arange(len(X)), "shop": keys, **{c: X[:, j] for j, c in enumerate("abcd")}}),
        tmp_path / "in.parquet",
    )
    code, _, err = run(
        "apply",
        str(tmp_path / "fleet.joblib"),
        str(tmp_path / "in.parquet"),
        "-o",
        str(tmp_path / "out"),
        "--features",
        "a,b,c,d",
        "--key",
        "shop",
        "--trust-pickle",
        "--method",
        "predict_proba",
    )
    assert code == 0, err
    table = pq.read_table(tmp_path / "out").sort_by("id")
    expected = np.stack([models[k].predict_proba(X[i : i + 1])[0] for i, k in enumerate(keys)])
    np.testing.assert_allclose(np.stack(table.column("probability").to_numpy(zero_copy_only=False)), expected)
