"""Loading fitted models from files: skops (safe by default), pickle/joblib only when trusted explicitly."""

from __future__ import annotations

from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

SKOPS_SUFFIXES = (".skops",)
PICKLE_SUFFIXES = (".pkl", ".pickle", ".joblib")


class ModelFileError(ValueError):
    """The model file cannot be loaded as asked."""


def load_model(path: str, *, trust: Sequence[str] = (), trust_pickle: bool = False, warn: Callable[[str], None]) -> Any:
    """Load a fitted estimator from ``path``.

    ``.skops`` files load with :func:`skops.io.load`, which only builds types it trusts; any other type in
    the file must be named in ``trust``. Pickle and joblib files run code from the file when loaded, so
    they load only with ``trust_pickle=True`` (after ``warn`` is called).

    Raises
    ------
    ModelFileError
        Missing file, unknown suffix, untrusted types, or a pickle without ``trust_pickle``.
    """
    file = Path(path)
    if not file.is_file():
        raise ModelFileError(f"model file {path} does not exist")
    suffix = file.suffix.lower()
    if suffix in SKOPS_SUFFIXES:
        import skops.io as sio

        untrusted = [t for t in sio.get_untrusted_types(file=file) if t not in trust]
        if untrusted:
            flags = " ".join(f"--trust {t}" for t in untrusted)
            raise ModelFileError(
                f"{path} contains types skops does not trust by default: {', '.join(untrusted)}. "
                f"If you trust this file, pass {flags}"
            )
        return sio.load(file, trusted=list(trust) or None)
    if suffix in PICKLE_SUFFIXES:
        if not trust_pickle:
            raise ModelFileError(
                f"{path} is a pickle/joblib file: loading it runs code from the file. Pass --trust-pickle if you "
                f"trust it, or save the model with skops (skops.io.dump(model, 'model.skops'))"
            )
        warn(f"loading {path} with --trust-pickle: this runs code from the file")
        import joblib

        return joblib.load(file)
    raise ModelFileError(
        f"{path}: unknown model file type {suffix or '(none)'}; expected {', '.join(SKOPS_SUFFIXES + PICKLE_SUFFIXES)}"
    )
