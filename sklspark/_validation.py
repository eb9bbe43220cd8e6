"""Driver-side validation of the user's arguments: the method, the estimator's fitted state, scalars, widths.

Everything here runs on the driver before a Spark job starts and raises scikit-learn's wording
(:func:`check_scalar`). Where the features are and how they are handed over is :mod:`sklspark._features`.
"""

from __future__ import annotations

import numbers
from collections.abc import Collection, Sequence
from typing import Any

import numpy as np
from sklearn.utils import get_tags
from sklearn.utils.validation import check_is_fitted

#: Largest accepted ``chunk_size``: one chunk must stay a bounded slice of a task's memory.
MAX_CHUNK_SIZE = 1 << 22

#: Largest chunk when ``chunk_size=None`` follows Spark's Arrow batches
#: (``spark.sql.execution.arrow.maxRecordsPerBatch``, 10,000 rows by default): longer batches are cut.
MAX_BATCH_CHUNK = 1 << 16

#: Methods that fit, mutate or need targets: never run by :func:`sklspark.distribute`.
_NOT_PREDICTION_TIME = frozenset({"score"})
_NOT_PREDICTION_PREFIXES = ("fit", "partial_fit", "set_", "get_", "_")


def check_method(estimator: Any, method: Any, caller: str = "distribute") -> None:
    """Check that ``estimator`` is fitted and has the prediction-time ``method``.

    Raises
    ------
    TypeError
        If ``method`` is not a string.
    ValueError
        If ``method`` fits or mutates the estimator, if the estimator does not
        have it, or (``NotFittedError``, a ``ValueError``) if it is not fitted.
    """
    check_scalar(method, "method", caller, kind=str)
    name = type(estimator).__name__
    if method in _NOT_PREDICTION_TIME or method.startswith(_NOT_PREDICTION_PREFIXES):
        raise ValueError(
            f"method {method!r} is not a prediction-time method; {caller}() runs methods such as "
            f"'predict', 'predict_proba', 'transform', 'kneighbors' on an already fitted estimator "
            f"(fit {name} on the driver first)"
        )
    if not callable(getattr(estimator, method, None)):
        raise ValueError(f"{name} has no method {method!r}{_available_hint(estimator)}")
    check_is_fitted(estimator)


def _available_hint(estimator: Any) -> str:
    common = (
        "predict",
        "predict_proba",
        "predict_log_proba",
        "decision_function",
        "transform",
        "inverse_transform",
        "score_samples",
        "kneighbors",
        "radius_neighbors",
    )
    have = [m for m in common if callable(getattr(estimator, m, None))]
    return f"; it has {', '.join(repr(m) for m in have)}" if have else ""


def check_scalar(
    value: Any,
    name: str,
    caller: str | None = None,
    *,
    kind: type = numbers.Integral,
    low: float | None = None,
    high: float | None = None,
    options: Collection[str] | None = None,
    none_ok: bool = False,
    also: Sequence[str] = (),
) -> Any:
    """Check one scalar argument and return it (an ``int`` for integers), or raise with scikit-learn's wording.

    Parameters
    ----------
    value : object
        The argument.
    name : str
        The parameter's name.
    caller : str, optional
        The public function it was passed to, named in the message.
    kind : {numbers.Integral, numbers.Real, bool, str}, default=numbers.Integral
        Its type; ``bool`` is refused where a number is expected.
    low, high : float, optional
        Inclusive bounds for numbers (``None``: unbounded).
    options : collection of str, optional
        Accepted values of a ``str``.
    none_ok : bool, default=False
        Whether ``None`` is accepted (and returned).
    also : sequence of str, default=()
        Other accepted values, checked by the caller, for the message (e.g. ``"an instance of 'Backend'"``).

    Raises
    ------
    TypeError
        If ``value`` is not of ``kind``.
    ValueError
        If it is out of ``[low, high]`` or not among ``options``.

    Examples
    --------
    >>> check_scalar(0, "k", "all_neighbors", low=1)
    Traceback (most recent call last):
    ...
    ValueError: The 'k' parameter of all_neighbors must be an int in the range [1, inf). Got 0 instead.
    """
    if value is None and none_ok:
        return None
    if kind in (numbers.Integral, numbers.Real):
        noun = "an int" if kind is numbers.Integral else "a float"
        expected = f"{noun} in the range {_interval(low, high)}"
        right_type = isinstance(value, kind) and not isinstance(value, (bool, np.bool_))
        in_range = right_type and (low is None or value >= low) and (high is None or value <= high)
    elif options is not None:
        expected = f"a str among {{{', '.join(repr(o) for o in sorted(options))}}}"
        right_type = isinstance(value, str)
        in_range = right_type and value in options
    else:
        expected = "a bool" if kind is bool else f"a {kind.__name__}"
        right_type = in_range = isinstance(value, kind)
    if not in_range:
        accepted = [expected, *also, *(["None"] if none_ok else [])]
        listed = f"{', '.join(accepted[:-1])} or {accepted[-1]}" if len(accepted) > 1 else expected
        error = ValueError if right_type else TypeError
        where = f" of {caller}" if caller else ""
        raise error(f"The {name!r} parameter{where} must be {listed}. Got {value!r} instead.")
    return int(value) if kind is numbers.Integral else value


def _interval(low: float | None, high: float | None) -> str:
    return f"{'(-inf' if low is None else f'[{low}'}, {'inf)' if high is None else f'{high}]'}"


def check_chunk_size(chunk_size: Any, caller: str) -> int:
    """Return ``chunk_size`` as an int after checking it is an integer in ``[1, MAX_CHUNK_SIZE]``."""
    return check_scalar(chunk_size, "chunk_size", caller, low=1, high=MAX_CHUNK_SIZE)


def check_optional_chunk_size(chunk_size: Any, caller: str) -> int | None:
    """``None`` (one chunk per Arrow batch, see :data:`MAX_BATCH_CHUNK`), or a checked ``chunk_size``."""
    return None if chunk_size is None else check_chunk_size(chunk_size, caller)


def declares_sparse(estimator: Any) -> bool:
    """Whether the estimator declares sparse input through scikit-learn tags (a cheap driver-side check)."""
    try:
        return bool(get_tags(estimator).input_tags.sparse)
    except Exception:  # noqa: BLE001 - third-party objects without tags: give them dense input
        return False


def n_features_of(estimator: Any) -> int | None:
    """The number of features the estimator was fitted on, or ``None`` if it does not say."""
    n = getattr(estimator, "n_features_in_", None)
    return int(n) if isinstance(n, numbers.Integral) else None


def check_width(estimator: Any, width: int, where: str) -> None:
    """Raise ``ValueError`` if ``width`` differs from the estimator's ``n_features_in_``."""
    expected = n_features_of(estimator)
    if expected is not None and width != expected:
        raise ValueError(
            f"{where} has {width} features, but {type(estimator).__name__} was fitted on {expected} features"
        )
