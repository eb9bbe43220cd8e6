"""Loading fitted models from files: skops (safe by default), pickle/joblib only when trusted explicitly."""

from __future__ import annotations

from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

SKOPS_SUFFIXES = (".skops",)
PICKLE_SUFFIXES = (".pkl", ".pickle", ".joblib")

#: Types scikit-learn's own estimators hold that skops does not trust by default: a dtype (the
#: ``dtype=`` parameter of encoders and vectorizers) and the trees of ``HistGradientBoosting*``.
#: Both are plain data; loading them runs no code from the file.
SKLEARN_DATA_TYPES = (
    "numpy.dtype",
    "sklearn.ensemble._hist_gradient_boosting.predictor.TreePredictor",
)


class ModelFileError(ValueError):
    """The model file cannot be loaded as asked."""


def load_model(path: str, *, trust: Sequence[str] = (), trust_pickle: bool = False, warn: Callable[[str], None]) -> Any:
    """Load a fitted estimator from ``path``.

    ``.skops`` files load with :func:`skops.io.load`, which only builds types it trusts (and
    :data:`SKLEARN_DATA_TYPES`); any other type in the file must be named in ``trust``. Pickle and
    joblib files run code from the file when loaded, so they load only with ``trust_pickle=True``
    (after ``warn`` is called).

    Raises
    ------
    ModelFileError
        Missing file, unknown suffix, untrusted types, a pickle without ``trust_pickle``, or a file
        that cannot be read as a model ("cannot load the model from FILE: ...").
    """
    file = Path(path)
    if not file.is_file():
        raise ModelFileError(f"model file {path} does not exist")
    suffix = file.suffix.lower()
    if suffix in SKOPS_SUFFIXES:
        import skops.io as sio

        trusted = [*SKLEARN_DATA_TYPES, *trust]
        found = _readable(path, lambda: sio.get_untrusted_types(file=file))
        untrusted = [t for t in found if t not in trusted]
        if untrusted:
            flags = " ".join(f"--trust {t}" for t in untrusted)
            raise ModelFileError(
                f"{path} contains types skops does not trust by default: {', '.join(untrusted)}. "
                f"If you trust this file, pass {flags}"
            )
        return _readable(path, lambda: sio.load(file, trusted=[t for t in found if t in trusted]))
    if suffix in PICKLE_SUFFIXES:
        if not trust_pickle:
            raise ModelFileError(
                f"{path} is a pickle/joblib file: loading it runs code from the file. Pass --trust-pickle if you "
                f"trust it, or save the model with skops (skops.io.dump(model, 'model.skops'))"
            )
        warn(f"loading {path} with --trust-pickle: this runs code from the file")
        import joblib

        return _readable(path, lambda: joblib.load(file))
    raise ModelFileError(
        f"{path}: unknown model file type {suffix or '(none)'}; expected {', '.join(SKOPS_SUFFIXES + PICKLE_SUFFIXES)}"
    )


def _readable(path: str, read: Callable[[], Any]) -> Any:
    """``read()``, with any failure to read the file reported as a :class:`ModelFileError` naming it."""
    try:
        return read()
    except ModelFileError:
        raise
    except Exception as exc:  # a corrupt file fails anywhere inside skops, joblib or pickle
        raise ModelFileError(f"cannot load the model from {path}: {type(exc).__name__}: {exc}") from exc
