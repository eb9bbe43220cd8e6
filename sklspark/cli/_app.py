"""The ``sklspark`` command: options, the Spark session, and exit codes (0 done, 1 job failed, 2 bad arguments)."""

from __future__ import annotations

import ast
import contextlib
import dataclasses
import functools
import logging
import re
import sys
import tempfile
import time
import traceback
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import click
from pyspark.sql import SparkSession
from rich.console import Console
from rich.table import Table

from .. import __version__
from .._distribute import distribute
from .._features import fitted_feature_names
from .._runner import ERROR_MARKER
from .._session import spark_session
from ..neighbors._backends import BACKENDS
from ._java import JavaMissing, java_major_version
from ._models import load_model
from ._paths import FORMATS, HadoopPaths, input_format, read_input, write_atomically
from ._progress import SparkProgress

err = Console(stderr=True, highlight=False, soft_wrap=True)
out = Console(highlight=False, soft_wrap=True)


class JobFailed(click.ClickException):
    """The Spark job (or Spark itself) failed: exit code 1, one paragraph instead of a JVM trace."""

    exit_code = 1

    def show(self, file: Any = None) -> None:
        err.print(f"[bold red]error:[/] {self.message}")


class BadArguments(click.UsageError):
    """Arguments refused before any job: exit code 2."""


#: A Java exception's message in a JVM trace: ``: org.apache.spark.SparkException: ...`` (the error Spark raised)
#: and ``Caused by: java.lang.RuntimeException: ...`` (what caused it, the last one the root).
_JAVA_ERROR = re.compile(r"^(?:: |Caused by: )(?:[\w$]+\.)*[\w$]+(?:Exception|Error)(?:: (.*))?$")

#: Spark's error class and SQL state around a message: ``[FAILED_READ_FILE.X] ... SQLSTATE: KD001``.
_SPARK_ERROR_CLASS = re.compile(r"^\[[A-Z_.]+\] |\s*SQLSTATE: \w+$")


def _java_cause(text: str) -> str | None:
    """One line from a JVM trace (a ``Py4JJavaError``): Spark's error, and its root cause if that says more."""
    messages = [m.group(1) or "" for m in map(_JAVA_ERROR.match, text.splitlines()) if m]
    if not messages:
        return None
    spark_error, root = (_SPARK_ERROR_CLASS.sub("", m).strip() for m in (messages[0], messages[-1]))
    return spark_error if root in spark_error else f"{spark_error} (cause: {root})"


def _one_paragraph(exc: BaseException) -> str:
    """The useful part of an exception from Spark: sklspark's own message, else the last Python error line, else
    the JVM's error and its root cause."""
    text = str(exc)
    for line in text.splitlines():
        if ERROR_MARKER in line:
            return line[line.index(ERROR_MARKER) + len(ERROR_MARKER) :].strip()
    errors = [ln.strip() for ln in text.splitlines() if re.match(r"^\s*[\w.]+(Error|Exception): ", ln)]
    java = None if errors else _java_cause(text)
    if java is not None:
        return java
    first = next((ln.strip() for ln in text.splitlines() if ln.strip()), type(exc).__name__)
    return errors[-1] if errors else f"{type(exc).__name__}: {first}"


def _parse_conf(_ctx: Any, _param: Any, values: tuple[str, ...]) -> dict[str, str]:
    conf = {}
    for item in values:
        key, sep, value = item.partition("=")
        if not sep or not key:
            raise click.BadParameter(f"expected key=value, got {item!r}")
        conf[key.strip()] = value.strip()
    return conf


def _parse_kwargs(_ctx: Any, _param: Any, values: tuple[str, ...]) -> dict[str, Any]:
    kwargs = {}
    for key, value in _parse_conf(_ctx, _param, values).items():
        try:
            kwargs[key] = ast.literal_eval(value)
        except (ValueError, SyntaxError):
            kwargs[key] = value  # a bare word is a string
    return kwargs


def _split_columns(_ctx: Any, _param: Any, value: str | None) -> list[str] | None:
    if value is None:
        return None
    columns = [c.strip() for c in value.split(",") if c.strip()]
    if not columns:
        raise click.BadParameter("expected a comma-separated list of column names")
    return columns


def _grouped(group: type, name: str, *options: Callable) -> Callable:
    """Apply click options (in the order given, as they show in --help) and hand them to the command as one object.

    Each option's parameter name must be a field of the dataclass ``group``; the command receives an
    instance of it as its keyword argument ``name``.
    """
    fields = [f.name for f in dataclasses.fields(group)]

    def decorate(command: Callable) -> Callable:
        @functools.wraps(command)
        def wrapper(*args: Any, **kwargs: Any) -> Any:
            kwargs[name] = group(**{field: kwargs.pop(field) for field in fields})
            return command(*args, **kwargs)

        for option in reversed(options):
            wrapper = option(wrapper)
        return wrapper

    return decorate


@dataclasses.dataclass(frozen=True)
class SparkOptions:
    """Where Spark runs, its configuration, and how much to say."""

    master: str = "local[*]"
    conf: dict[str, str] = dataclasses.field(default_factory=dict)
    spark_connect: str | None = None
    verbose: bool = False


@dataclasses.dataclass(frozen=True)
class OutputOptions:
    """Where the result goes, in which format, and how the input is read."""

    output: str
    output_format: str = "parquet"
    input_format: str | None = None
    overwrite: bool = False


@dataclasses.dataclass(frozen=True)
class FeatureOptions:
    """Where the features are: one vector/array column, or a list of numeric columns."""

    features_col: str = "features"
    feature_list: list[str] | None = None

    @property
    def features(self) -> str | list[str]:
        return self.feature_list or self.features_col


@dataclasses.dataclass(frozen=True)
class KnnOptions:
    """What ``all_neighbors`` searches for, and how."""

    k: int
    id_col: str = "id"
    metric: str = "euclidean"
    backend: str = "auto"
    shards: int | None = None
    max_distance: float | None = None
    exclude_self: bool = True


spark_options = _grouped(
    SparkOptions,
    "spark_opts",
    click.option(
        "--master",
        default="local[*]",
        show_default=True,
        help="Spark master: local[N] (embedded, no cluster needed), spark://host:port, yarn, k8s://...",
    ),
    click.option(
        "--conf",
        "conf",
        multiple=True,
        callback=_parse_conf,
        metavar="KEY=VALUE",
        help="Spark configuration, repeatable, e.g. --conf spark.executor.memory=4g",
    ),
    click.option(
        "--spark-connect",
        metavar="sc://HOST:PORT",
        default=None,
        help="Connect to a Spark Connect server instead of starting Spark (--master is then ignored).",
    ),
    click.option("--verbose", is_flag=True, help="Show Spark's log and full stack traces on failure."),
)

output_options = _grouped(
    OutputOptions,
    "io",
    click.option("-o", "--output", required=True, help="Where to write the result (any path Spark can write)."),
    click.option(
        "--format",
        "output_format",
        type=click.Choice(FORMATS),
        default="parquet",
        show_default=True,
        help="Output format. CSV cannot hold array columns.",
    ),
    click.option(
        "--input-format",
        type=click.Choice(FORMATS),
        default=None,
        help="Input format; default: from the input's extension, else parquet.",
    ),
    click.option("--overwrite", is_flag=True, help="Replace OUTPUT if it exists."),
)

feature_options = _grouped(
    FeatureOptions,
    "feature_opts",
    click.option(
        "--features-col",
        default="features",
        show_default=True,
        help="The feature column: a vector, an array of numbers, or (apply) a string column of documents.",
    ),
    click.option(
        "--features",
        "feature_list",
        callback=_split_columns,
        metavar="C1,C2,...",
        help="Feature columns, instead of --features-col (apply: any scalar type for a model fitted on a "
        "pandas DataFrame, which by default takes the columns it was fitted on, by name).",
    ),
)

knn_options = _grouped(
    KnnOptions,
    "knn_opts",
    click.option("-k", "k", type=click.IntRange(min=1), default=10, show_default=True, help="Neighbours per point."),
    click.option("--id-col", default="id", show_default=True, help="The column of point ids."),
    click.option(
        "--metric",
        default="euclidean",
        show_default=True,
        help="Distance metric (any NearestNeighbors metric with the sklearn backend; inner_product with gemm).",
    ),
    click.option(
        "--backend",
        type=click.Choice(["auto", *sorted(BACKENDS)]),
        default="auto",
        show_default=True,
        help="Candidate search: auto (gemm for euclidean and cosine, else sklearn), "
        + ", ".join(f"{n} ({'exact' if b.exact else 'approximate'})" for n, b in BACKENDS.items())
        + ".",
    ),
    click.option(
        "--shards",
        type=click.IntRange(min=1),
        default=None,
        help="Split the reference into S shards (default: automatic, by size).",
    ),
    click.option(
        "--max-distance",
        type=float,
        default=None,
        help="Leave out neighbours farther than this (lists may then be shorter than k); at least 0, except with "
        "--metric inner_product, whose distance -q.r may be negative.",
    ),
    click.option(
        "--exclude-self/--include-self",
        default=True,
        show_default=True,
        help="Leave each point's own id out of its neighbours.",
    ),
)


#: Spark master URLs: local[N] / local[N,F] / local-cluster[...], spark://host:port[,host:port], yarn, k8s://, mesos://.
_MASTER_URL = re.compile(
    r"local(\[(\*|\d+)(,\d+)?\])?|local-cluster\[\d+,\d+,\d+\]|spark://[^/\s:]+:\d+(,[^/\s:]+:\d+)*"
    r"|yarn|k8s://\S+|mesos://\S+"
)


@contextlib.contextmanager
def _spark(opts: SparkOptions) -> Iterator[Any]:
    if opts.spark_connect is None:
        if not _MASTER_URL.fullmatch(opts.master):
            raise BadArguments(
                f"--master {opts.master!r} is not a Spark master URL; expected local[N], local[*], spark://host:port, "
                f"yarn or k8s://https://host:port"
            )
        try:
            java_major_version()
        except JavaMissing as exc:
            raise JobFailed(str(exc)) from exc
    # A session of the calling program (sklspark.cli.main() run from Python) is used and left running.
    ours = opts.spark_connect is not None or SparkSession.getActiveSession() is None
    # sklspark draws its own progress; Spark's console bar would interleave with it.
    try:
        spark = spark_session(
            opts.master,
            app_name="sklspark",
            conf={"spark.ui.showConsoleProgress": "false", **opts.conf},
            remote=opts.spark_connect,
            quiet=not opts.verbose,
        )
    except Exception as exc:
        where = f"--spark-connect {opts.spark_connect}" if opts.spark_connect else f"--master {opts.master}"
        raise JobFailed(f"cannot start Spark with {where}: {_one_paragraph(exc)}") from exc
    if not opts.verbose and opts.spark_connect is None:
        spark.sparkContext.setLogLevel("FATAL")  # failures are reported by sklspark, in one paragraph
    decisions = logging.StreamHandler(sys.stderr)  # what sklspark decided and why, with --verbose
    decisions.setFormatter(logging.Formatter("sklspark: %(message)s"))
    logger = logging.getLogger("sklspark")
    if opts.verbose:
        logger.addHandler(decisions)
        logger.setLevel(logging.INFO)
    try:
        yield spark
    finally:
        logger.removeHandler(decisions)
        if ours:
            spark.stop()


def _guarded(command: Callable) -> Callable:
    """Turn failures into exit codes: refused arguments 2, failed jobs 1 (full trace with --verbose)."""

    @functools.wraps(command)
    def wrapper(*args: Any, **kwargs: Any) -> Any:
        try:
            return command(*args, **kwargs)
        except click.ClickException:
            raise
        except Exception as exc:
            if kwargs["spark_opts"].verbose:
                traceback.print_exc()
            raise JobFailed(_one_paragraph(exc)) from exc

    return wrapper


def _prepare(step: Callable[[], Any]) -> Any:
    """Run a step that must not start a job; its ValueError/TypeError are bad arguments (exit 2)."""
    try:
        return step()
    except (ValueError, TypeError) as exc:
        raise BadArguments(_one_paragraph(exc) if ERROR_MARKER in str(exc) else str(exc)) from exc


def _read(spark: Any, paths: HadoopPaths, path: str, io: OutputOptions):
    """The input DataFrame, after refusing an output that exists without --overwrite."""
    if paths.available and paths.exists(io.output) and not io.overwrite:
        raise BadArguments(f"output {io.output} exists; pass --overwrite to replace it")
    if paths.available and not paths.exists(path):
        raise BadArguments(f"input {path} does not exist")
    from pyspark.errors import AnalysisException

    fmt = input_format(path, io.input_format)
    try:
        return read_input(spark, path, fmt)
    except AnalysisException as exc:
        raise BadArguments(f"cannot read {path}: {_one_paragraph(exc)}") from exc
    except Exception as exc:  # a corrupt file: Spark fails reading it (a Py4JJavaError), not the arguments
        raise JobFailed(f"cannot read {path} as {fmt}: {_one_paragraph(exc)}") from exc


def _write_with_summary(spark: Any, paths: HadoopPaths, df: Any, io: OutputOptions, what: str) -> int:
    """Write ``df`` atomically with a progress bar and print a summary; the rows are counted while writing."""
    if io.output_format == "csv":
        nested = [f.name for f in df.schema.fields if f.dataType.typeName() in ("array", "struct", "map", "vector")]
        if nested:
            raise BadArguments(f"CSV cannot hold the array/vector columns {nested}; use --format parquet, json or orc")
    from pyspark.sql import Observation
    from pyspark.sql import functions as F

    written = Observation("sklspark-written")
    start = time.perf_counter()
    with SparkProgress(spark, what, console=err):
        write_atomically(
            df.observe(written, F.count(F.lit(1)).alias("rows")), io.output, io.output_format, io.overwrite, paths
        )
    elapsed = time.perf_counter() - start
    rows = written.get["rows"]
    err.print(
        f"[bold green]done:[/] {what}: {rows:,} rows in, {rows:,} rows out, {elapsed:.1f} s "
        f"({rows / max(elapsed, 1e-9):,.0f} rows/s) -> {io.output} ({io.output_format})"
    )
    return rows


@click.group(context_settings={"help_option_names": ["-h", "--help"], "max_content_width": 100})
@click.version_option(__version__, prog_name="sklspark")
def cli() -> None:
    """Run fitted scikit-learn models over data in Spark.

    \b
    sklspark demo                         generate data, find every point's neighbours, show them
    sklspark knn INPUT -o OUTPUT -k 10    every point's k nearest neighbours, by id
    sklspark apply MODEL INPUT -o OUTPUT  any fitted model's method over a data set

    Exit codes: 0 success, 1 the job failed, 2 bad arguments (refused before any job).
    """


def _run_knn(spark: Any, input_path: str, io: OutputOptions, feature_opts: FeatureOptions, knn: KnnOptions) -> int:
    from ..neighbors import all_neighbors

    paths = HadoopPaths(spark)
    df = _read(spark, paths, input_path, io)
    result = _prepare(
        lambda: all_neighbors(
            df,
            knn.k,
            id_col=knn.id_col,
            features_col=feature_opts.features,
            metric=knn.metric,
            backend=knn.backend,
            shards=knn.shards,
            exclude_self=knn.exclude_self,
            max_distance=knn.max_distance,
        )
    )
    return _write_with_summary(spark, paths, result, io, f"knn k={knn.k}")


@cli.command()
@click.argument("input_path", metavar="INPUT")
@output_options
@knn_options
@feature_options
@spark_options
@_guarded
def knn(
    input_path: str, io: OutputOptions, knn_opts: KnnOptions, feature_opts: FeatureOptions, spark_opts: SparkOptions
) -> None:
    """Find the k nearest neighbours of every point in INPUT.

    INPUT is any path Spark can read (file://, hdfs://, s3a://...), Parquet unless its extension or
    --input-format says CSV, JSON or ORC. It needs an id column and features. The result has one row
    per point: the id, neighbor_ids (nearest first) and distances.
    """
    with _spark(spark_opts) as spark:
        _run_knn(spark, input_path, io, feature_opts, knn_opts)


@cli.command()
@click.argument("model_path", metavar="MODEL")
@click.argument("input_path", metavar="INPUT")
@output_options
@click.option(
    "--method",
    default="predict",
    show_default=True,
    help="The method to run: predict, predict_proba, transform, kneighbors, ...",
)
@click.option(
    "--chunk-size",
    type=click.IntRange(min=1),
    default=None,
    help="Rows per call of the method (default: one Arrow batch, 10,000 rows unless Spark is set otherwise).",
)
@click.option(
    "--kwarg",
    "method_kwargs",
    multiple=True,
    callback=_parse_kwargs,
    metavar="KEY=VALUE",
    help="Argument for the method, repeatable; values are Python literals (e.g. --kwarg n_neighbors=5).",
)
@click.option(
    "--partitions",
    type=click.IntRange(min=1),
    default=None,
    help="Spread the input over this many partitions first (default: distribute()'s partitions='auto': kneighbors and "
    "radius_neighbors are spread over at least 2 per core, so one Parquet file uses every core; other methods keep "
    "the input's partitions).",
)
@click.option(
    "--key",
    default=None,
    metavar="COLUMN",
    help="MODEL holds a mapping from key values to fitted models (a dict saved with skops or pickle): score each "
    "row with the model of its value in COLUMN.",
)
@click.option(
    "--on-error",
    type=click.Choice(["raise", "null"]),
    default="raise",
    show_default=True,
    help="What a row that cannot be scored does: raise fails the job (exit 1); null writes null results for it and "
    "its reason in a string column 'error' (null where the row was scored).",
)
@click.option("--trust", multiple=True, metavar="TYPE", help="Trust this type when loading a .skops file, repeatable.")
@click.option("--trust-pickle", is_flag=True, help="Allow loading .pkl/.joblib files: this runs code from the file.")
@feature_options
@spark_options
@_guarded
def apply(
    model_path: str,
    input_path: str,
    io: OutputOptions,
    method: str,
    chunk_size: int | None,
    method_kwargs: dict,
    partitions: int | None,
    key: str | None,
    on_error: str,
    trust: tuple[str, ...],
    trust_pickle: bool,
    feature_opts: FeatureOptions,
    spark_opts: SparkOptions,
) -> None:
    """Run a fitted model's METHOD over every row of INPUT.

    MODEL is a .skops file (loaded safely: only trusted types) or, with --trust-pickle, a .pkl/.joblib
    file. The output has every input column plus the method's result columns.
    """
    model = _prepare(
        lambda: load_model(
            model_path,
            trust=trust,
            trust_pickle=trust_pickle,
            warn=lambda msg: err.print(f"[bold yellow]warning:[/] {msg}"),
        )
    )
    with _spark(spark_opts) as spark:
        paths = HadoopPaths(spark)
        df = _read(spark, paths, input_path, io)
        features: str | list[str] | None = feature_opts.features
        first = next(iter(model.values()), None) if isinstance(model, dict) else model
        if (
            feature_opts.feature_list is None
            and feature_opts.features_col == "features"
            and fitted_feature_names(first)
        ):
            features = None  # a model fitted on a pandas DataFrame: its own columns, by name
        spread = partitions or "auto"
        result = _prepare(
            lambda: distribute(
                model,
                method,
                df,
                chunk_size=chunk_size,
                features=features,
                partitions=spread,
                key=key,
                on_error=on_error,
                **method_kwargs,
            )
        )
        name = f"{len(model)} models" if key is not None and isinstance(model, dict) else type(model).__name__
        _write_with_summary(spark, paths, result, io, f"{name}.{method}")


@cli.command()
@click.option("--n-points", type=click.IntRange(min=20), default=20_000, show_default=True, help="Points to generate.")
@click.option("--n-features", type=click.IntRange(min=1), default=16, show_default=True)
@click.option("-k", "k", type=click.IntRange(min=1), default=5, show_default=True)
@spark_options
@_guarded
def demo(n_points: int, n_features: int, k: int, spark_opts: SparkOptions) -> None:
    """Generate clustered points, find every point's k nearest neighbours with Spark, show a few."""
    import numpy as np
    import pyarrow as pa
    import pyarrow.parquet as pq

    rng = np.random.default_rng(0)
    centres = rng.normal(scale=5.0, size=(20, n_features))
    X = (centres[rng.integers(0, 20, n_points)] + rng.normal(size=(n_points, n_features))).astype(np.float32)
    with tempfile.TemporaryDirectory(prefix="sklspark-demo-") as tmp, _spark(spark_opts) as spark:
        input_path, output = str(Path(tmp, "points.parquet")), str(Path(tmp, "neighbours.parquet"))
        pq.write_table(pa.table({"id": np.arange(n_points), "features": list(X)}), input_path)
        err.print(f"generated {n_points:,} points x {n_features} features -> {input_path}")
        _run_knn(spark, input_path, OutputOptions(output), FeatureOptions(), KnnOptions(k))
        rows = pq.read_table(output).sort_by("id").slice(0, 5).to_pylist()
        table = Table(title=f"nearest {k} neighbours of the first points")
        for column in ("id", "neighbor_ids", "distances"):
            table.add_column(column)
        for row in rows:
            table.add_row(str(row["id"]), str(row["neighbor_ids"]), ", ".join(f"{d:.3f}" for d in row["distances"]))
        out.print(table)


def main(argv: list[str] | None = None) -> None:
    """Entry point of the ``sklspark`` console script.

    Called from Python in a process that already has an active Spark session (a notebook, a test), the
    command runs on that session (its ``--master`` is not used) and leaves it running.
    """
    cli.main(args=argv, prog_name="sklspark")
