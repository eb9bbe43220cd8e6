"""``on_error="null"`` through every entry point: ``udf()`` in select and in SQL, RDD pairs, named-column
pipelines, outputs that do not fit their column. Every good row equals the in-process call; every bad
row has null results and the reason the in-process call gives for it alone."""

import numpy as np
import pandas as pd
import pyarrow as pa
import pytest
from numpy.testing import assert_allclose
from sklearn.compose import ColumnTransformer
from sklearn.linear_model import LogisticRegression
from sklearn.neighbors import NearestNeighbors
from sklearn.pipeline import make_pipeline
from sklearn.preprocessing import FunctionTransformer, OneHotEncoder, StandardScaler

import sklspark

RNG = np.random.default_rng(18)
X = RNG.normal(size=(60, 3))
Y = (X[:, 0] > 0).astype(int)
CLF = LogisticRegression().fit(X, Y)
BAD = [3, 17, 41]
DIRTY = X.copy()
DIRTY[BAD, 1] = np.nan
GOOD = np.setdiff1d(np.arange(len(X)), BAD)


def _reason(method_call, method: str) -> str:
    """The reason the in-process call gives for one bad row, as on_error="null" reports it."""
    with pytest.raises(Exception) as info:
        method_call()
    return f"{method}: {type(info.value).__name__}: {info.value}"


def _frame(spark, n_partitions: int = 3):
    table = pa.table({"id": np.arange(len(X)), "features": list(DIRTY), **{f"x{j}": DIRTY[:, j] for j in range(3)}})
    return spark.createDataFrame(table).repartition(n_partitions)


def _struct_rows(df, column: str):
    """The struct column's fields as lists in ``id`` order."""
    table = df.select("id", f"{column}.*").toArrow().sort_by("id")
    return {name: table.column(name).to_pylist() for name in table.column_names}


def test_udf_in_select_gives_a_struct_with_the_reason(spark):
    score = sklspark.udf(CLF, "predict_proba", chunk_size=16, on_error="null")
    got = _struct_rows(_frame(spark).select("id", score("features").alias("s")), "s")
    assert list(got) == ["id", "probability", "error"]
    assert_allclose(np.array([got["probability"][i] for i in GOOD]), CLF.predict_proba(X[GOOD]), rtol=1e-12)
    for i in BAD:
        assert got["probability"][i] is None
        assert got["error"][i] == _reason(lambda i=i: CLF.predict_proba(DIRTY[[i]]), "predict_proba")
    assert [got["error"][i] for i in GOOD] == [None] * len(GOOD)


def test_udf_registered_for_sql_with_a_multi_part_output(spark):
    nn = NearestNeighbors(n_neighbors=3).fit(X)
    spark.udf.register("neighbours_or_null", sklspark.udf(nn, "kneighbors", on_error="null"))
    _frame(spark).createOrReplaceTempView("dirty_points")
    query = "SELECT id, neighbours_or_null(x0, x1, x2) AS knn FROM dirty_points"
    got = _struct_rows(spark.sql(query), "knn")
    assert list(got) == ["id", "distances", "indices", "error"]
    distances, indices = nn.kneighbors(X[GOOD])
    assert np.array_equal(np.array([got["indices"][i] for i in GOOD]), indices)
    assert_allclose(np.array([got["distances"][i] for i in GOOD]), distances, rtol=1e-12)
    for i in BAD:
        assert got["indices"][i] is None and got["distances"][i] is None
        assert got["error"][i] == _reason(lambda i=i: nn.kneighbors(DIRTY[[i]]), "kneighbors")


def test_rdd_elements_become_result_reason_pairs(sc):
    elements: list = list(DIRTY)
    elements[7] = DIRTY[7, :2]  # wrong width
    elements[9] = None  # nothing to score
    out = sklspark.distribute(CLF, "predict_proba", sc.parallelize(elements, 3), chunk_size=8, on_error="null")
    pairs = out.collect()
    assert len(pairs) == len(X)
    bad = {*BAD, 7, 9}
    for i, (result, reason) in enumerate(pairs):
        if i in bad:
            assert result is None and reason.startswith("predict_proba: "), (i, reason)
        else:
            assert reason is None
            assert_allclose(result, CLF.predict_proba(X[[i]])[0], rtol=1e-12)
    for i in BAD:
        assert pairs[i][1] == _reason(lambda i=i: CLF.predict_proba(DIRTY[[i]]), "predict_proba")
    assert "7" in pairs[7][1] or "features" in pairs[7][1]


def _plans(n: int, rng: np.random.Generator) -> pd.DataFrame:
    return pd.DataFrame({"plan": rng.choice(["basic", "pro", "plus"], n).astype(object), "tenure": rng.normal(size=n)})


def test_named_column_pipeline_with_an_unknown_category(spark):
    rng = np.random.default_rng(5)
    train = _plans(80, rng)
    pipe = make_pipeline(
        ColumnTransformer(
            [("plan", OneHotEncoder(handle_unknown="error"), ["plan"]), ("tenure", StandardScaler(), ["tenure"])]
        ),
        LogisticRegression(),
    ).fit(train, train["tenure"] > 0)
    frame = _plans(40, rng)
    unknown = [5, 21]
    frame.loc[unknown, "plan"] = "gold"
    df = spark.createDataFrame(frame.assign(id=np.arange(len(frame)))).repartition(2)
    good = np.setdiff1d(np.arange(len(frame)), unknown)

    out = sklspark.distribute(pipe, "predict", df, chunk_size=8, on_error="null").toArrow().sort_by("id")
    prediction, error = out.column("prediction").to_pylist(), out.column("error").to_pylist()
    assert [prediction[i] for i in good] == pipe.predict(frame.iloc[good]).tolist()
    for i in unknown:
        assert prediction[i] is None
        assert error[i] == _reason(lambda i=i: pipe.predict(frame.iloc[[i]]), "predict")

    got = _struct_rows(df.select("id", sklspark.udf(pipe, on_error="null")().alias("s")), "s")
    assert got["prediction"] == prediction and got["error"] == error


def test_an_output_that_does_not_fit_its_column_is_one_bad_row(spark):
    halve = FunctionTransformer(lambda Z: Z[:, 0] / 2).fit(np.zeros((2, 1)))
    values = np.arange(30, dtype=np.float64)  # odd values halve to a fraction: no bigint holds it
    df = spark.createDataFrame(pa.table({"id": np.arange(30), "v": values}))
    score = sklspark.udf(halve, "transform", return_type="bigint", chunk_size=8, on_error="null")
    got = _struct_rows(df.select("id", score("v").alias("s")), "s")
    for i, v in enumerate(values):
        if v % 2 == 0:
            assert got["transform"][i] == halve.transform(values[[i], None])[0] and got["error"][i] is None
        else:
            assert got["transform"][i] is None
            assert got["error"][i].startswith("transform: ValueError: the output (float64) does not fit result column")
    with pytest.raises(Exception, match="does not fit result column 'transform' of type bigint"):
        df.select(sklspark.udf(halve, "transform", return_type="bigint")("v")).collect()
