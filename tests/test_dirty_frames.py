"""Named columns with nulls, dates and decimals, scored as the in-process call on the frame each pandas reader gives.

The same Spark data is read three ways (``toPandas()``, ``pd.read_parquet`` of the Parquet files Spark
wrote, ``pd.read_csv`` of the CSV file Spark wrote); a model fitted on each frame is scored through
``distribute`` (DataFrame and RDD of ``Row``) and ``udf``, and every row must equal the in-process call
on that frame.
"""

import datetime as dt
import decimal
import glob
import zlib

import numpy as np
import pandas as pd
import pyarrow as pa
import pytest
from _helpers import assert_same, no_spark_job
from pyspark.sql import functions as F
from sklearn.compose import ColumnTransformer
from sklearn.impute import SimpleImputer
from sklearn.linear_model import LogisticRegression
from sklearn.pipeline import make_pipeline
from sklearn.preprocessing import FunctionTransformer, OneHotEncoder, OrdinalEncoder

from sklspark import distribute, udf
from sklspark._features import resolve_features
from sklspark._frames import frame_styles
from sklspark._inputs import frame_from_columns

READERS = ("toPandas", "read_parquet", "read_csv")
N = 240


def _nullable(values: list, every: int, t: pa.DataType | None = None) -> pa.Array:
    """``values`` with a null at every row ``i`` where ``i % every == every - 1`` (so every 4-row chunk has one)."""
    return pa.array([None if i % every == every - 1 else v for i, v in enumerate(values)], t)


def _table(n: int, seed: int) -> pa.Table:
    """Every scalar Spark type, with nulls; floats with few digits, so that a CSV round trip keeps them."""
    rng = np.random.default_rng(seed)
    plans = rng.choice(["basic", "plus", "pro"], n).tolist()
    days = [dt.date(2024, 1, 1) + dt.timedelta(days=int(k)) for k in rng.integers(0, 6, n)]
    prices = [decimal.Decimal(p) for p in rng.choice(["9.99", "19.99", "0.10"], n)]
    stamps = [dt.datetime(2024, 1, 2, 3, 4, 5) + dt.timedelta(minutes=int(k)) for k in rng.integers(0, 5000, n)]
    return pa.table(
        {
            "id": pa.array(np.arange(n)),
            "plan": _nullable(plans, 4),
            "region": _nullable(rng.choice(["north", "south", "east"], n).tolist(), 5),
            "tenure": _nullable(rng.integers(1, 72, n).tolist(), 4, pa.int32()),
            "calls": pa.array(rng.integers(0, 9, n), pa.int32()),
            "rating": _nullable((rng.integers(0, 20, n) / 4).tolist(), 4, pa.float32()),
            # two decimals: pandas' default CSV parser is not exact for 17 significant digits (1 in 7 differ)
            "monthly": _nullable(np.round(rng.gamma(3.0, 20.0, n), 2).tolist(), 4),
            "vip": _nullable((rng.random(n) < 0.5).tolist(), 4),
            "autopay": pa.array(rng.random(n) < 0.5),
            "price": _nullable(prices, 4, pa.decimal128(8, 2)),
            "signup": _nullable(days, 4),
            "seen": _nullable(stamps, 4, pa.timestamp("us", tz="UTC")),
            "seen_ntz": _nullable(stamps, 4, pa.timestamp("us")),
        }
    )


@pytest.fixture(scope="module")
def dirty(spark):
    """The data in Spark, one partition in ``id`` order (4-row chunks each hold a null); ``seen_ntz`` is NTZ."""
    df = spark.createDataFrame(_table(N, 0)).withColumn("seen_ntz", F.col("seen_ntz").cast("timestamp_ntz"))
    return df.coalesce(1)


@pytest.fixture(scope="module")
def frames(dirty, tmp_path_factory):
    """The frame each reader gives of ``dirty``, sorted by ``id``, without ``id``."""
    where = tmp_path_factory.mktemp("readers")
    dirty.write.parquet(str(where / "parquet"))
    csv = dirty.write.option("header", True)
    # Spark's CSV writer would add "T" and ".000Z"; pandas-style times are what sklspark gives for read_csv.
    csv = csv.option("timestampFormat", "yyyy-MM-dd HH:mm:ss").option("timestampNTZFormat", "yyyy-MM-dd HH:mm:ss")
    csv.csv(str(where / "csv"))
    read = {
        "toPandas": dirty.toPandas(),
        "read_parquet": pd.read_parquet(where / "parquet"),
        "read_csv": pd.read_csv(glob.glob(str(where / "csv" / "*.csv"))[0]),
    }
    return {name: f.sort_values("id").drop(columns="id").reset_index(drop=True) for name, f in read.items()}


def _sorted(df, column: str) -> np.ndarray:
    got = df.select("id", column).toPandas().sort_values("id")[column]
    return np.stack([np.asarray(v, dtype=np.float64) for v in got])


# --------------------------------------------------------------------------- the chunks are the readers' frames


@pytest.mark.parametrize("reader", READERS)
def test_chunks_are_the_readers_frames(dirty, frames, reader):
    frame = frames[reader]
    fitted = FunctionTransformer().fit(frame)
    spec = resolve_features(dirty.schema, fitted, None, frame_styles(fitted, reader))
    arrow = dirty.orderBy("id").toArrow()
    got = frame_from_columns([arrow.column(c).combine_chunks() for c in spec.columns], spec)
    pd.testing.assert_frame_equal(got, frame)  # values and dtypes
    for column in [
        c for c in frame.columns if frame[c].dtype.kind == "O"
    ]:  # and the very Python types, null marker included
        assert [type(v) for v in got[column]] == [type(v) for v in frame[column]], column


@pytest.mark.parametrize("reader", READERS)
def test_option_names_the_reader_when_the_model_records_nothing(dirty, frames, reader):
    frame = frames[reader]

    def describe_cells(X: pd.DataFrame) -> np.ndarray:
        """Per row: a code of each cell's ``repr`` (type, value, null marker), then of each column's dtype."""
        cells = np.array([[zlib.crc32(repr(v).encode()) for v in X[c].tolist()] for c in X.columns]).T
        dtypes = np.array([zlib.crc32(str(X[c].dtype).encode()) for c in X.columns])
        return np.hstack([cells, np.broadcast_to(dtypes, cells.shape)]).astype(np.float64)

    describe = FunctionTransformer(describe_cells).fit(frame)  # records feature_names_in_, nothing else
    assert frame_styles(describe, reader).reader == reader
    expected = describe.transform(frame)
    out = distribute(describe, "transform", dirty, chunk_size=4, pandas_reader=reader)
    assert_same(_sorted(out, "transform"), expected)
    f = udf(describe, "transform", return_type="array<double>", chunk_size=4, pandas_reader=reader)
    assert_same(_sorted(dirty.select("id", f().alias("transform")), "transform"), expected)


def test_session_time_zone(spark):
    """toPandas gives session-time wall clock, read_parquet UTC wall clock (Spark writes INT96 instants)."""
    instant = dt.datetime(2024, 1, 2, 3, 4, 5, tzinfo=dt.timezone.utc)
    arrow = pa.array([instant, None], pa.timestamp("us", tz="America/New_York"))  # as a task receives it
    names = pd.DataFrame({"seen": pd.to_datetime([instant, None]).tz_localize(None)})
    model = FunctionTransformer().fit(names)
    df = spark.createDataFrame(pa.table({"seen": pa.array([instant, None], pa.timestamp("us", tz="UTC"))}))
    for reader, wall in (("toPandas", "2024-01-01 22:04:05"), ("read_parquet", "2024-01-02 03:04:05")):
        spec = resolve_features(df.schema, model, None, frame_styles(model, reader))
        got = frame_from_columns([arrow], spec)["seen"]
        assert str(got.dtype) == "datetime64[ns]" and str(got[0]) == wall and got.isna()[1]


def test_read_csv_timestamps_as_pandas_writes_them(spark):
    """``str(pd.Timestamp)``: seconds, and six decimals only where there is a fraction (before 1970 too)."""
    rng = np.random.default_rng(1)
    seconds, micros = rng.integers(0, 5 * 10**9, 300), rng.integers(0, 10**6, 300)
    values = [
        dt.datetime(1900, 1, 1) + dt.timedelta(seconds=int(s), microseconds=int(u * (s % 2)))
        for s, u in zip(seconds, micros)
    ]
    values[5] = None
    frame = pd.DataFrame({"at": [None if v is None else str(pd.Timestamp(v)) for v in values]}).fillna(np.nan)
    schema = spark.createDataFrame(pa.table({"at": pa.array(values[:1], pa.timestamp("us"))})).schema
    fitted = FunctionTransformer().fit(frame)
    spec = resolve_features(schema, fitted, None, frame_styles(fitted, "read_csv"))
    pd.testing.assert_frame_equal(frame_from_columns([pa.array(values, pa.timestamp("us"))], spec), frame)


def test_pandas_reader_refused_before_any_job(spark, dirty, frames):
    model = FunctionTransformer().fit(frames["toPandas"])
    with no_spark_job(spark.sparkContext):
        for call in (
            lambda: distribute(model, "transform", dirty, pandas_reader="parquet"),
            lambda: udf(model, "transform", pandas_reader=1),
        ):
            with pytest.raises(
                (ValueError, TypeError),
                match=r"'pandas_reader' parameter of (distribute|udf) must be a str among "
                r"\{'read_csv', 'read_parquet', 'toPandas'\}",
            ):
                call()


# --------------------------------------------------------------------------- a pipeline fitted on each reader's frame


def _pipeline() -> object:
    """Nulls as categories (strings, booleans), dates and decimals as categories, imputed numbers."""
    categories = OneHotEncoder(handle_unknown="ignore")
    ordinal = OrdinalEncoder(handle_unknown="use_encoded_value", unknown_value=-1)
    return make_pipeline(
        ColumnTransformer(
            [
                ("plan", categories, ["plan", "vip"]),
                ("region", make_pipeline(SimpleImputer(strategy="constant", fill_value="none"), ordinal), ["region"]),
                ("dates", OrdinalEncoder(encoded_missing_value=-2), ["signup"]),  # unseen dates are refused
                ("decimals", OneHotEncoder(handle_unknown="ignore"), ["price"]),
                ("numbers", SimpleImputer(), ["tenure", "calls", "rating", "monthly", "autopay"]),
            ]
        ),
        LogisticRegression(max_iter=3000),
    )


def _label(frame: pd.DataFrame) -> np.ndarray:
    score = frame["calls"].to_numpy() - 4 + (frame["plan"].isna().to_numpy() * 3)
    return np.where(score + np.arange(len(frame)) % 3 > 0, "churn", "stay")


@pytest.mark.parametrize("reader", READERS)
def test_pipeline_fitted_on_each_reader(spark, dirty, frames, reader):
    frame = frames[reader].drop(columns=["seen", "seen_ntz"])
    model = _pipeline().fit(frame, _label(frame))
    styles = frame_styles(model)  # no option: what the encoders recorded decides
    assert styles.reader == ("read_csv" if reader == "read_csv" else "toPandas"), styles
    expected = model.predict_proba(frame)
    # The marker matters here: the other reader's null marker changes rows silently (a null plan is unknown
    # to its OneHotEncoder) and is refused by the date column's OrdinalEncoder.
    other = frame.astype(object).where(frame.notna(), np.nan if reader != "read_csv" else None)
    same_dates = other.assign(signup=frame["signup"])
    assert (np.abs(model.predict_proba(same_dates) - expected).max(axis=1) > 1e-9).sum() >= 10
    with pytest.raises(ValueError, match="Found unknown categories"):
        model.predict_proba(other)

    df = dirty.drop("seen", "seen_ntz").repartition(3, "id")
    assert_same(_sorted(distribute(model, "predict_proba", df, chunk_size=7), "probability"), expected)
    f = udf(model, "predict_proba", return_type="array<double>")
    assert_same(_sorted(df.select("id", f().alias("p")), "p"), expected)
    rows = dirty.orderBy("id").rdd.repartition(1)  # Row elements: Python values, None for null
    assert_same(np.stack(distribute(model, "predict_proba", rows, chunk_size=9).collect()), expected)


# --------------------------------------------------------------------------- the rules of frame_styles, without Spark


def _fitted(transformers, frame: pd.DataFrame):
    return ColumnTransformer(transformers, remainder="drop").fit(frame)


def test_evidence_follows_column_routing_and_imputers():
    frame = pd.DataFrame(
        {
            "a": ["x", None, "y", "x"],
            "b": [dt.date(2024, 1, 1), None, dt.date(2024, 1, 2), dt.date(2024, 1, 1)],
            "c": ["p", "q", None, "p"],
            "d": [1.0, np.nan, 2.0, 3.0],
        }
    )
    with_nan = frame.astype(object).where(frame.notna(), np.nan)
    imputed = make_pipeline(SimpleImputer(strategy="constant", fill_value="?"), OrdinalEncoder())
    # Positions, a boolean mask and a label slice route columns as names do.
    for routing in ([0, 1], np.array([True, True, False, False]), slice("a", "b")):
        styles = frame_styles(_fitted([("enc", OneHotEncoder(), routing), ("num", SimpleImputer(), ["d"])], frame))
        assert styles.reader == "toPandas"
        assert styles.styles[0].missing == styles.styles[1].missing == "None" and styles.styles[1].dates == "date"
    # The encoder after an imputer that left None alone records it; after one that imputed nan, nothing.
    assert frame_styles(_fitted([("c", imputed, ["c"])], frame)).styles[2].missing == "None"
    nan_fitted = frame_styles(_fitted([("c", imputed, ["c"])], with_nan))
    assert nan_fitted.styles[2].missing == "nan" and nan_fitted.reader == "toPandas"  # no evidence: the imputer's nan
    assert frame_styles(_fitted([("c", imputed, ["c"])], with_nan), "toPandas").styles[2].missing == "None"
    # One column's evidence names the reader of every other column; the option picks among agreeing readers.
    csv = frame_styles(_fitted([("a", OneHotEncoder(), ["a"]), ("c", imputed, ["c"])], with_nan), "toPandas")
    assert csv.reader == "read_csv" and csv.styles[1].dates == "str" and csv.styles[2].missing == "nan"
    assert frame_styles(_fitted([("a", OneHotEncoder(), ["a"])], frame), "read_parquet").reader == "read_parquet"
    # The column's own evidence wins over the reader: datetime64 categories for dates (read_csv parse_dates).
    parsed = with_nan.assign(b=pd.to_datetime(frame["b"].fillna(dt.date(2024, 1, 3))))  # NaT: sklearn refuses it
    mixed = frame_styles(_fitted([("a", OneHotEncoder(), ["a"]), ("b", OneHotEncoder(), ["b"])], parsed))
    assert mixed.reader == "read_csv" and mixed.styles[1].dates == "datetime64"
    # None where one column says toPandas and another read_csv: the option (or toPandas), each column its own.
    both = with_nan.assign(c=frame["c"])
    contradicting = frame_styles(_fitted([("a", OneHotEncoder(), ["a"]), ("c", OneHotEncoder(), ["c"])], both))
    assert contradicting.reader == "toPandas" and [s.missing for s in contradicting.styles] == ["nan"] + ["None"] * 3
