"""Named-column frames: the pandas reader's types and null marker a fitted estimator expects, decided on the driver.

A pipeline fitted on ``spark_df.toPandas()`` or ``pd.read_parquet(...)`` saw ``None`` for a null string,
``datetime.date`` objects for a date column and ``decimal.Decimal`` for a decimal one; a pipeline fitted
on ``pd.read_csv(...)`` saw ``np.nan``, date strings and ``float64``. scikit-learn keeps what it saw (an
encoder's ``categories_`` holds ``None`` or ``nan``, a ``datetime.date`` or a string), so a chunk must
be converted the same way or rows are silently encoded as unknown, or refused.

:func:`frame_styles` walks the fitted estimator (``Pipeline`` first steps, ``ColumnTransformer``
routing, ``FeatureUnion`` members) to the transformers that see each raw column, reads what they
recorded (``categories_``, a ``SimpleImputer``'s ``missing_values`` and ``statistics_`` on object
columns), infers the reader from that evidence and falls back on the ``pandas_reader`` option where
the estimator records nothing. The result, a :class:`FrameStyles`, is plain frozen data carried to the
tasks; :func:`sklspark._inputs.frame_from_columns` applies it to Arrow columns.
"""

from __future__ import annotations

import datetime as dt
import decimal
import math
from collections.abc import Iterator
from dataclasses import dataclass, replace
from typing import Any

import numpy as np

#: The pandas readers whose frames can be imitated, and the default of ``pandas_reader``.
READERS = ("toPandas", "read_parquet", "read_csv")
DEFAULT_READER = "toPandas"

#: Readers giving ``None`` for nulls in object columns, ``datetime.date`` and ``Decimal`` objects.
_TYPED_READERS = frozenset({"toPandas", "read_parquet"})


@dataclass(frozen=True)
class ColumnStyle:
    """How one named column is handed to the estimator (applied whatever the column's Spark type).

    Attributes
    ----------
    missing : {"None", "nan"}
        The marker of a null in an ``object`` column (strings, dates and decimals as objects,
        booleans with nulls). Numeric and ``datetime64`` columns always use ``NaN`` / ``NaT``.
    dates : {"date", "str", "datetime64"}
        A ``date`` column as ``datetime.date`` objects, ISO strings (``"2024-01-02"``) or ``datetime64[ns]``.
    timestamps : {"local", "utc", "str"}
        A ``timestamp`` column as ``datetime64[ns]`` wall-clock times in the session time zone or in
        UTC, or as strings ``"YYYY-MM-DD HH:MM:SS[.ffffff]"`` (session time zone).
    decimals : {"decimal", "float"}
        A ``decimal`` column as ``decimal.Decimal`` objects or ``float64``.
    widen : bool
        Integers (without nulls) as ``int64`` and floats as ``float64`` (``read_csv``), rather than at
        their Spark width (``int`` is ``int32``, ``float`` is ``float32``).
    """

    missing: str
    dates: str
    timestamps: str
    decimals: str
    widen: bool


#: What each reader gives (checked against pandas 2.3 / pyarrow 26 / pyspark 4.x, see docs/pipelines.md).
PRESETS = {
    "toPandas": ColumnStyle(missing="None", dates="date", timestamps="local", decimals="decimal", widen=False),
    "read_parquet": ColumnStyle(missing="None", dates="date", timestamps="utc", decimals="decimal", widen=False),
    "read_csv": ColumnStyle(missing="nan", dates="str", timestamps="str", decimals="float", widen=True),
}


@dataclass(frozen=True)
class FrameStyles:
    """The per-column decision for an estimator with ``feature_names_in_`` (made by :func:`frame_styles`).

    Attributes
    ----------
    columns : tuple of str
        ``feature_names_in_``, in the fitted order.
    styles : tuple of ColumnStyle
        One per column.
    reader : str
        The reader imitated where a column's own transformers record nothing.
    evidence : tuple of str
        What the fitted estimator recorded that decided it (for messages and debugging).
    """

    columns: tuple[str, ...]
    styles: tuple[ColumnStyle, ...]
    reader: str
    evidence: tuple[str, ...] = ()

    def style_of(self, name: str) -> ColumnStyle:
        """The style of column ``name`` (the reader's own for a column the estimator was not fitted on)."""
        try:
            return self.styles[self.columns.index(name)]
        except ValueError:
            return PRESETS[self.reader]


def frame_styles(estimator: Any, pandas_reader: str | None = None) -> FrameStyles | None:
    """Decide, once on the driver, how each fitted column is converted; ``None`` without ``feature_names_in_``.

    Per column, in order of precedence:

    1. what the transformers that see the raw column recorded: an encoder's ``categories_``
       holding ``None`` or ``nan``, or ``datetime.date``, ``str``, ``datetime64`` or ``Decimal``
       values; a ``SimpleImputer``'s ``missing_values=None``, or ``None`` among its ``statistics_``
       (the transformer after a ``SimpleImputer`` in a ``Pipeline`` sees the raw column too);
    2. the reader all of that evidence, over every column, agrees on (``None``, ``date`` or
       ``Decimal`` objects: ``toPandas``/``read_parquet``; ``nan`` in an object column: ``read_csv``),
       ``pandas_reader`` if it is one of them;
    3. without any such evidence: ``pandas_reader`` when given; else ``np.nan`` for a column a
       ``SimpleImputer`` with the default ``missing_values=np.nan`` sees (it imputes only ``nan``);
       else ``toPandas``.
    """
    names = getattr(estimator, "feature_names_in_", None)
    if names is None:
        return None
    columns = tuple(str(n) for n in names)
    signals: dict[str, dict[str, str]] = {name: {} for name in columns}
    evidence = []
    for name, leaf, position in _raw_consumers(estimator, columns):
        found = _recorded(leaf, position)
        for aspect, value in found.items():
            signals[name].setdefault(aspect, value)
        if found:
            evidence.append(f"{type(leaf).__name__} on {name!r}: {', '.join(f'{k}={v}' for k, v in found.items())}")
    strong = [{k: v for k, v in s.items() if k != "imputes"} for s in signals.values()]
    telling = [found for found in strong if _readers_of(found) != set(READERS)]
    reader = _agreed_reader(telling, pandas_reader or DEFAULT_READER)
    if not telling and pandas_reader is None:  # nothing says which reader: a nan-imputing SimpleImputer's nan
        strong = [
            {"missing": "nan", **found} if "imputes" in signals[name] else found for name, found in zip(columns, strong)
        ]
    styles = tuple(_style(PRESETS[reader], found) for found in strong)
    return FrameStyles(columns, styles, reader, tuple(evidence))


def _readers_of(found: dict[str, str]) -> set[str]:
    """The readers whose frames could hold what one column's transformers recorded."""
    if found.get("missing") == "None" or found.get("values") in ("date", "decimal"):
        return set(_TYPED_READERS)
    if found.get("missing") == "nan":
        return {"read_csv"}
    return set(READERS)


def _agreed_reader(signals: list[dict[str, str]], pandas_reader: str) -> str:
    """The reader every recorded signal is compatible with (``pandas_reader`` if it is one), else ``pandas_reader``."""
    possible = set(READERS)
    for found in signals:
        possible &= _readers_of(found)
    if not possible or pandas_reader in possible:
        return pandas_reader
    return next(r for r in READERS if r in possible)


def _style(preset: ColumnStyle, found: dict[str, str]) -> ColumnStyle:
    """``preset`` with what one column's transformers recorded applied on top."""
    style = replace(preset, missing=found.get("missing", preset.missing))
    values = found.get("values")
    if values == "str":
        return replace(style, dates="str", timestamps="str")
    if values == "date":
        return replace(style, dates="date")
    if values == "datetime64":
        stamps = style.timestamps if style.timestamps != "str" else "local"
        return replace(style, dates="datetime64", timestamps=stamps)
    if values == "decimal":
        return replace(style, decimals="decimal")
    if values == "float":
        return replace(style, decimals="float")
    return style


# --------------------------------------------------------------------------- walking the fitted estimator


def _raw_consumers(estimator: Any, names: tuple[str, ...]) -> Iterator[tuple[str, Any, int]]:
    """``(column, transformer, position)`` for every transformer that sees a raw column, at its position there."""
    from sklearn.compose import ColumnTransformer
    from sklearn.pipeline import FeatureUnion, Pipeline

    if isinstance(estimator, Pipeline):
        for step in (step for _, step in estimator.steps if step is not None and not isinstance(step, str)):
            yield from _raw_consumers(step, names)
            if not _passes_columns_through(step, names):
                break
    elif isinstance(estimator, ColumnTransformer):
        own = getattr(estimator, "feature_names_in_", None)
        seen = tuple(str(n) for n in own) if own is not None else names
        for _, transformer, selection in getattr(estimator, "transformers_", ()):
            if isinstance(transformer, str):  # "drop", "passthrough": nothing recorded
                continue
            yield from _raw_consumers(transformer, _selected(seen, selection))
    elif isinstance(estimator, FeatureUnion):
        for _, transformer in estimator.transformer_list:
            if transformer is not None and not isinstance(transformer, str):
                yield from _raw_consumers(transformer, names)
    else:
        for position, name in enumerate(names):
            yield name, estimator, position


def _passes_columns_through(step: Any, names: tuple[str, ...]) -> bool:
    """Whether the next step of a ``Pipeline`` sees the raw columns too: after a ``SimpleImputer`` keeping them all."""
    from sklearn.impute import SimpleImputer

    if not isinstance(step, SimpleImputer):
        return False
    try:
        return tuple(str(n) for n in step.get_feature_names_out()) == names
    except Exception:  # noqa: BLE001 - an imputer that cannot name its output: stop there
        return False


def _selected(names: tuple[str, ...], selection: Any) -> tuple[str, ...]:
    """The columns a fitted ``ColumnTransformer`` routes to one transformer (names, positions, slices or a mask)."""
    if isinstance(selection, str):
        return (selection,)
    if isinstance(selection, slice):
        if isinstance(selection.start, str) or isinstance(selection.stop, str):  # label slices include the end
            start = names.index(selection.start) if selection.start is not None else 0
            stop = names.index(selection.stop) + 1 if selection.stop is not None else len(names)
            return names[start:stop]
        return names[selection]
    picked = np.asarray(selection)
    if picked.dtype == bool:
        return tuple(n for n, keep in zip(names, picked) if keep)
    if picked.dtype.kind in "iu":
        return tuple(names[int(i)] for i in picked.ravel())
    return tuple(str(c) for c in picked.ravel())


def _recorded(leaf: Any, position: int) -> dict[str, str]:
    """What one fitted transformer recorded of its raw column at ``position``: a missing marker and a value type."""
    categories = getattr(leaf, "categories_", None)
    if isinstance(categories, list) and position < len(categories):
        return _from_values(np.asarray(categories[position]))
    statistics = getattr(leaf, "statistics_", None)
    if (
        hasattr(leaf, "missing_values")
        and isinstance(statistics, np.ndarray)
        and statistics.dtype == object
        and position < statistics.size
    ):
        found = _from_values(statistics[position : position + 1])  # None here: the most frequent value was None
        marker = leaf.missing_values
        if marker is None:
            found["missing"] = "None"
        elif _is_nan(marker):
            found["imputes"] = "nan"  # the default: what the frame held stays unknown (None is kept as a value)
        return found
    return {}


def _from_values(values: np.ndarray) -> dict[str, str]:
    """The missing marker among ``values`` (object arrays only) and the type of the others."""
    found: dict[str, str] = {}
    if values.dtype.kind == "M":
        return {"values": "datetime64"}
    if values.dtype == object:
        if any(v is None for v in values):
            found["missing"] = "None"
        elif any(_is_nan(v) for v in values):
            found["missing"] = "nan"
    present = [v for v in values if v is not None and not _is_nan(v)]
    kind = _value_kind(present[0]) if present else None
    if kind is not None:
        found["values"] = kind
    return found


def _value_kind(value: Any) -> str | None:
    if isinstance(value, (dt.datetime, np.datetime64)):  # pandas.Timestamp is a datetime
        return "datetime64"
    if isinstance(value, dt.date):
        return "date"
    if isinstance(value, decimal.Decimal):
        return "decimal"
    if isinstance(value, str):
        return "str"
    if isinstance(value, (float, np.floating)):
        return "float"
    return None


def _is_nan(value: Any) -> bool:
    return isinstance(value, (float, np.floating)) and math.isnan(value)
