"""The join description: every argument of one :func:`kneighbors_join` / :func:`all_neighbors` call, checked once.

:func:`plan_join` runs on the driver and starts no Spark job. It renames columns whose names need
quoting (a step, recorded so that the ID column gets its name back at the end), checks ``k``,
``exclude_self``, the columns of both sides, the backend and its metric (once), ``max_distance`` and
``on_error``, and returns one frozen :class:`JoinPlan` that both modes take whole. What the tasks
need travels as its picklable part, :class:`SearchSpec`.
"""

from __future__ import annotations

import logging
import numbers
import os
import re
from collections.abc import Callable, Sequence
from dataclasses import dataclass, fields
from typing import Any

import numpy as np
import scipy.sparse as sp
from pyspark.sql import DataFrame
from pyspark.sql import functions as F
from pyspark.sql.types import ByteType, IntegerType, LongType, ShortType, StringType, StructType
from sklearn.neighbors import NearestNeighbors
from sklearn.utils.validation import check_is_fitted

from .._features import FeatureSpec, check_features
from .._validation import check_optional_chunk_size, check_scalar
from ._backends import BACKENDS, Backend, choose_backend
from ._checks import ids_from_sequence
from ._names import DISTANCES, ERROR, INNER_PRODUCT, METRIC_ALIASES, NEIGHBOR_IDS

_log = logging.getLogger("sklspark")

#: The options of :func:`kneighbors_join` after ``k``: their checks name it, whichever function was called.
_OPTIONS_OF = "kneighbors_join"

_INTEGER_IDS = (LongType, IntegerType, ShortType, ByteType)
_ID_TYPES = (*_INTEGER_IDS, StringType)

#: Column names Spark resolves as written; others (dots, spaces, backticks) are renamed for the join.
_PLAIN_NAME = re.compile(r"[A-Za-z_][A-Za-z0-9_]*")

#: Query rows searched at once by default.
QUERY_CHUNK = 4096

#: The reference's own rows searched at once by default as the queries of a self-join: a task's whole range up
#: to this many: each product of two own rows scores both, so a task with one range of 250,000 rows saves an eighth
#: of its products at 1,000,000 rows and four ranges. Its lists (k + 4 float32 scores and int64 positions a row) and
#: results (k int64 IDs and float64 distances a row) take about 90 MB at k=10.
OWN_CHUNK = 1 << 18

#: Values of ``on_error``: fail the job on a bad row, or give it null neighbours and its reason in ``error``.
ON_ERROR = ("raise", "null")


@dataclass(frozen=True)
class JoinOptions:
    """The options of one call as the user gave them, unchecked (defaults: :func:`kneighbors_join`'s)."""

    id_col: Any = "id"
    features_col: Any = "features"
    exclude_self: Any = False
    metric: Any = "euclidean"
    backend: Any = "auto"
    shards: Any = None
    chunk_size: Any = None
    reference_ids: Any = None
    max_distance: Any = None
    on_error: Any = "raise"
    index_dir: Any = None

    @classmethod
    def names(cls) -> set[str]:
        return {f.name for f in fields(cls)}


@dataclass(frozen=True)
class SearchSpec:
    """What a search task needs (picklable: no DataFrame): the search of ``n`` neighbours per query.

    Attributes
    ----------
    n : int
        Neighbours searched per query: ``k``, one more with ``exclude_self`` (the query itself is dropped after).
    id_col : str
        The ID column of both sides (under its plain name).
    q_spec, r_spec : FeatureSpec
        Where the queries' and the reference's features are (``r_spec`` is ``None`` for a fitted reference).
    engine : Backend
        Unbuilt; each task builds a fresh copy.
    metric : str
        Canonical metric name.
    chunk_size : int
        Most query rows searched at once.
    on_error : {"raise", "null"}
    own_chunk_size : int
        Most of the reference's own rows searched at once as queries (a self-join in broadcast mode).
    reference_rows : int
        Rows of the whole reference, once counted (sharded mode: a shard's search sizes its partition by them);
        0 before.
    """

    n: int
    id_col: str
    q_spec: FeatureSpec
    r_spec: FeatureSpec | None
    engine: Backend
    metric: str
    chunk_size: int
    on_error: str
    own_chunk_size: int
    reference_rows: int = 0


@dataclass(frozen=True)
class FittedReference:
    """A fitted ``NearestNeighbors`` as a reference: the estimator, its rows and their IDs."""

    nn: NearestNeighbors
    X: Any
    ids: np.ndarray


@dataclass(frozen=True)
class JoinPlan:
    """One join, checked: the inputs under plain column names, what to search, and what to keep of it.

    Attributes
    ----------
    queries : DataFrame
    reference : DataFrame or FittedReference
    search : SearchSpec
    k : int
    exclude_self : bool
    max_distance : float or None
    shards : int or None
        The user's ``shards=`` (a DataFrame reference only).
    index_dir : str or None
        The user's ``index_dir=`` (absolute): where sharded mode writes the shard indexes of a backend that
        ships as a file; by default a directory of the driver's staging directory.
    result_id : str
        The ID column's name in the result (the user's, if it was renamed for the join).
    caller : str
        The public function the user called, named in messages and logs.
    """

    queries: DataFrame
    reference: DataFrame | FittedReference
    search: SearchSpec
    k: int
    exclude_self: bool
    max_distance: float | None
    shards: int | None
    result_id: str
    caller: str
    index_dir: str | None = None

    @property
    def id_col(self) -> str:
        return self.search.id_col

    @property
    def self_join(self) -> bool:
        """Whether the queries are the reference itself (``all_neighbors``): one side's statistics then serve both."""
        return self.queries is self.reference and self.search.q_spec == self.search.r_spec

    @property
    def prebuilt_shards(self) -> bool:
        """Whether sharded mode builds each shard's index once, as files (a backend that ``ships_as_file``), rather
        than in every (query block, shard) group (:mod:`~sklspark.neighbors._shard_index`)."""
        return self.search.engine.ships_as_file

    def has_work(self, n_ref: int, queries_empty: Callable[[], bool]) -> bool:
        """Whether ``k`` fits a reference of ``n_ref`` rows; ``False`` (an empty result) if not but there are no
        queries to search for, else ``ValueError``. ``queries_empty`` is asked only when ``k`` does not fit."""
        available = n_ref - 1 if self.exclude_self else n_ref
        if self.k <= available or queries_empty():
            return self.k <= available
        detail = f"{n_ref} rows" + (", minus the query itself with exclude_self=True" if self.exclude_self else "")
        raise ValueError(f"k={self.k} is larger than the reference set ({detail}); use k <= {max(available, 0)}")


def stable_order(df: DataFrame, id_col: str, feature_cols: Sequence[str]) -> DataFrame:
    """``df`` sorted within each partition by ID, then by a hash of the features (no shuffle): the reference
    position order of both modes, on which the tie rule rests.

    Whichever order a (retried) task reads its partition in, the rows come out in the same order, so
    ``monotonically_increasing_id()`` taken after it gives every row the same value in every attempt
    (rows equal in ID and hash are equal, up to a 64-bit hash collision, so their order does not matter).
    """
    return df.sortWithinPartitions(id_col, F.xxhash64(*feature_cols))


def _plain_names(frames: list[Any], id_col: Any, features_col: Any) -> tuple[list[Any], Any, Any]:
    """``frames`` with the ID and feature columns that need quoting renamed to plain names.

    Returns the frames and the new ``id_col`` and ``features_col``. Columns that are missing keep
    their names, so the checks that follow name them as the caller wrote them.
    """
    if not isinstance(id_col, str) or not isinstance(features_col, Sequence):
        return frames, id_col, features_col
    names = [id_col] + ([features_col] if isinstance(features_col, str) else list(features_col))
    present = set.intersection(*(set(f.columns) for f in frames if isinstance(f, DataFrame)))
    renames = {
        name: f"_sklspark_col_{i}"
        for i, name in enumerate(names)
        if isinstance(name, str) and name in present and not _PLAIN_NAME.fullmatch(name)
    }
    if not renames:
        return frames, id_col, features_col
    frames = [f.withColumnsRenamed(renames) if isinstance(f, DataFrame) else f for f in frames]
    features = (
        renames.get(features_col, features_col)
        if isinstance(features_col, str)
        else [renames.get(c, c) for c in features_col]
    )
    return frames, renames.get(id_col, id_col), features


def _check_spec(schema: StructType, features_col: Any, id_col: Any, what: str) -> FeatureSpec:
    """The side's feature spec, after checking its ID column (present, integer or string, not a feature)."""
    if id_col not in schema.fieldNames():
        raise ValueError(f"id column {id_col!r} not found in the {what}; it has columns {schema.fieldNames()}")
    if not isinstance(schema[id_col].dataType, _ID_TYPES):
        raise TypeError(
            f"id column {id_col!r} of the {what} is {schema[id_col].dataType.simpleString()}; "
            f"expected an integer or string column"
        )
    spec = check_features(schema, features_col)
    if id_col in spec.columns:
        raise ValueError(f"id column {id_col!r} cannot also be a feature column")
    return spec


def _fitted_reference(nn: NearestNeighbors, metric: str, reference_ids: Any) -> FittedReference:
    check_is_fitted(nn)
    fitted_metric = METRIC_ALIASES.get(nn.effective_metric_, nn.effective_metric_)  # minkowski already resolved
    if fitted_metric != metric:
        raise ValueError(
            f"the fitted NearestNeighbors uses metric {fitted_metric!r} but metric={metric!r}; "
            f"pass metric={fitted_metric!r}"
        )
    if any(v is not None for v in nn.effective_metric_params_.values()):
        raise ValueError(f"NearestNeighbors with metric parameters {nn.effective_metric_params_} is not supported")
    X = sp.csr_matrix(nn._fit_X) if sp.issparse(nn._fit_X) else np.asarray(nn._fit_X)
    return FittedReference(nn, X, ids_from_sequence(reference_ids, X.shape[0]))


def _check_index_dir(index_dir: Any, engine: Backend, fitted: bool) -> str | None:
    """``index_dir=`` as an absolute path: a directory the driver sees, for a backend building shards as files."""
    if index_dir is None:
        return None
    path = os.fspath(index_dir) if isinstance(index_dir, (str, os.PathLike)) else None
    if not isinstance(path, str):
        raise TypeError(f"index_dir must be a directory's path (str or os.PathLike), got {type(index_dir).__name__}")
    if fitted:
        raise ValueError(
            "index_dir= applies to a sharded DataFrame reference; a fitted NearestNeighbors is always broadcast"
        )
    if not engine.ships_as_file:
        names = ", ".join(name for name, backend in BACKENDS.items() if backend.ships_as_file)
        raise ValueError(
            f"index_dir= applies to backends whose shards are built once as index files ({names}); backend "
            f"{engine.name!r} builds each shard in the tasks that search it"
        )
    if not os.path.isdir(path):
        raise ValueError(
            f"index_dir {path!r} is not a directory; it must exist and be readable by the driver and every executor"
        )
    return os.path.abspath(path)


def _check_comparable_ids(queries: DataFrame, reference: DataFrame, id_col: str) -> None:
    """``exclude_self`` compares the two sides' IDs: both strings, or both integers (compared as long)."""
    q_type, r_type = queries.schema[id_col].dataType, reference.schema[id_col].dataType
    if isinstance(q_type, _INTEGER_IDS) and isinstance(r_type, _INTEGER_IDS):
        return
    if q_type != r_type:
        raise TypeError(
            f"exclude_self compares IDs, but id column {id_col!r} is {q_type.simpleString()} in the queries "
            f"and {r_type.simpleString()} in the reference"
        )


def plan_join(queries: Any, reference: Any, k: Any, options: JoinOptions, caller: str) -> JoinPlan:
    """Check one call's arguments (no Spark job) and describe the join.

    ``k`` and ``exclude_self`` are checked naming ``caller``; the other options naming
    :func:`kneighbors_join`, whose options they are.

    Raises
    ------
    TypeError, ValueError
        Bad ``k`` or option, missing or mistyped columns, unknown backend, a metric the backend does not
        support, a fitted reference with another metric, ``k`` larger than a fitted reference.
    """
    k = check_scalar(k, "k", caller, low=1)
    exclude_self = check_scalar(options.exclude_self, "exclude_self", caller, kind=bool)
    shards = check_scalar(options.shards, "shards", _OPTIONS_OF, low=1, none_ok=True)
    chunk_size = check_optional_chunk_size(options.chunk_size, _OPTIONS_OF)
    on_error = check_scalar(options.on_error, "on_error", _OPTIONS_OF, kind=str, options=ON_ERROR)
    result_id = check_scalar(options.id_col, "id_col", _OPTIONS_OF, kind=str)
    reserved = (NEIGHBOR_IDS, DISTANCES, ERROR) if on_error == "null" else (NEIGHBOR_IDS, DISTANCES)
    if result_id in reserved:
        raise ValueError(f"id_col cannot be {result_id!r}: that is the name of a result column")
    if not isinstance(queries, DataFrame):
        raise TypeError(f"queries must be a pyspark DataFrame, got {type(queries).__name__}")
    if not isinstance(reference, (DataFrame, NearestNeighbors)):
        raise TypeError(
            f"reference must be a pyspark DataFrame or a fitted sklearn NearestNeighbors, "
            f"got {type(reference).__name__}"
        )
    (queries, reference), id_col, features = _plain_names([queries, reference], result_id, options.features_col)
    q_spec = _check_spec(queries.schema, features, id_col, "queries")
    choice = choose_backend(options.backend, options.metric, _OPTIONS_OF)
    low = -np.inf if choice.metric == INNER_PRODUCT else 0  # inner-product distances -q.r may be negative
    max_distance = check_scalar(
        options.max_distance, "max_distance", _OPTIONS_OF, kind=numbers.Real, low=low, none_ok=True
    )
    r_spec: FeatureSpec | None = None
    if isinstance(reference, NearestNeighbors):
        if shards is not None:
            raise ValueError("shards= applies to a DataFrame reference; a fitted NearestNeighbors is always broadcast")
        reference = _fitted_reference(reference, choice.metric, options.reference_ids)
    else:
        if options.reference_ids is not None:
            raise ValueError("reference_ids= applies to a fitted NearestNeighbors; a DataFrame reference has id_col")
        r_spec = _check_spec(reference.schema, features, id_col, "reference")
        if exclude_self:
            _check_comparable_ids(queries, reference, id_col)
    search = SearchSpec(
        k + 1 if exclude_self else k,
        id_col,
        q_spec,
        r_spec,
        choice.engine,
        choice.metric,
        chunk_size or QUERY_CHUNK,
        on_error,
        chunk_size or OWN_CHUNK,
    )
    index_dir = _check_index_dir(options.index_dir, choice.engine, isinstance(reference, FittedReference))
    plan = JoinPlan(queries, reference, search, k, exclude_self, max_distance, shards, result_id, caller, index_dir)
    if isinstance(reference, FittedReference):
        plan.has_work(reference.X.shape[0], lambda: False)  # refused before any job: a fitted reference's size is known
    _log.info("%s: backend %s, metric %r (%s)", caller, choice.engine.name, choice.metric, choice.reason)
    return plan
