"""Version record: what the driver serialised a model with, checked by each Python worker before it unpickles.

A pickled scikit-learn model is only guaranteed to load under the versions that wrote it. When a model is
serialised (:func:`dump_recording`), the driver records the versions of Python (major.minor),
scikit-learn, numpy, scipy, cloudpickle, sklspark and the top-level package of every class and function
the pickle refers to by name (lightgbm, xgboost, the user's own package...). Each Python worker compares
that :class:`VersionRecord` with its own versions once per model, before loading it
(:func:`check_worker`):

* a different Python minor version, scikit-learn version, model package version (or the package missing),
  or numpy major version fails the task at once with :class:`VersionMismatch`, whose one-line message
  starts with :data:`ERROR_MARKER` and names the library, both versions and the fix;
* smaller differences (numpy minor, scipy, cloudpickle, sklspark) are logged on the worker
  (``logging.getLogger("sklspark")``) and the model is loaded.

Setting :data:`SKIP_ENV` (``SKLSPARK_SKIP_VERSION_CHECK=1``) on the driver, or in the executors'
environment, turns the failure into a logged warning.
"""

from __future__ import annotations

import functools
import importlib
import importlib.metadata
import logging
import os
import socket
import sys
import types
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from typing import IO, Any

import cloudpickle

#: Prefix of every message sklspark raises inside a task: the CLI finds sklspark's own error in a Spark trace by it.
ERROR_MARKER = "sklspark:"

#: Environment variable that turns a failed version check into a logged warning ("1", "true" or "yes").
SKIP_ENV = "SKLSPARK_SKIP_VERSION_CHECK"

#: The packages recorded for every model, whatever it contains, by import name.
CORE_PACKAGES = ("sklearn", "numpy", "scipy", "cloudpickle", "sklspark")

#: Core packages whose differences are only logged (numpy: only a minor difference; its major fails).
_LENIENT = frozenset({"scipy", "cloudpickle", "sklspark"})

#: How packages are named in messages and ``pip install`` commands, where that differs from the import name.
_DISPLAY_NAMES = {"sklearn": "scikit-learn", "python": "Python"}

#: Never recorded: not packages (``__main__``, pickled by value) or part of the interpreter itself.
_NOT_PACKAGES = frozenset({"__main__", "__mp_main__", "builtins"})

_logger = logging.getLogger("sklspark")

#: Per worker process: the model tokens whose record was already checked and passed.
_passed: set[str] = set()


class VersionMismatch(RuntimeError):
    """Raised inside a Spark task when the worker's versions cannot safely load a model pickled on the driver."""


@dataclass(frozen=True)
class VersionRecord:
    """The versions a model was serialised with on the driver.

    Attributes
    ----------
    python : str
        The driver's Python, ``"major.minor"``.
    packages : mapping of str to str or None
        Version of each package by import name: :data:`CORE_PACKAGES` first, then the model's own
        packages; ``None`` for a module that declares no version (it is then not compared).
    skip : bool
        Whether :data:`SKIP_ENV` was set on the driver: a failed check is then only logged.
    """

    python: str
    packages: Mapping[str, str | None]
    skip: bool = False

    @property
    def model_packages(self) -> tuple[str, ...]:
        """The packages found inside the model, other than :data:`CORE_PACKAGES`."""
        return tuple(name for name in self.packages if name not in CORE_PACKAGES)


@dataclass(frozen=True)
class Difference:
    """One package whose version differs between the driver and a worker (``None``: not installed)."""

    name: str
    driver: str | None
    worker: str | None

    def describe(self) -> str:
        """``"scikit-learn 1.7.2 on the driver, 1.6.1 on this worker"``."""
        shown = _DISPLAY_NAMES.get(self.name, self.name)
        worker = self.worker if self.worker is not None else "not installed"
        return f"{shown} {self.driver} on the driver, {worker} on this worker"

    def requirement(self) -> str:
        """What to install on the executors: ``"scikit-learn==1.7.2"``."""
        return f"{_DISPLAY_NAMES.get(self.name, self.name)}=={self.driver}"


def python_version() -> str:
    """This interpreter's ``"major.minor"``."""
    return f"{sys.version_info.major}.{sys.version_info.minor}"


@functools.cache
def package_version(name: str) -> str | None:
    """The installed version of the top-level package ``name`` (imported if needed); ``None`` if it has none.

    Raises
    ------
    ImportError
        If the package is not installed.
    """
    module = sys.modules.get(name) or importlib.import_module(name)
    version = getattr(module, "__version__", None)
    if isinstance(version, str):
        return version
    for distribution in [name, *_distributions().get(name, [])]:
        try:
            return importlib.metadata.version(distribution)
        except importlib.metadata.PackageNotFoundError:
            continue
    return None


@functools.cache
def _distributions() -> Mapping[str, list[str]]:
    return importlib.metadata.packages_distributions()


def _installed_version(name: str) -> str | None:
    """:func:`package_version`, with ``None`` for a package that is not installed."""
    try:
        return package_version(name)
    except ImportError:
        return None


def _is_package(name: str) -> bool:
    """Whether the top-level module ``name`` belongs to an installed package (not the stdlib, not ``__main__``)."""
    return bool(name) and name not in _NOT_PACKAGES and name not in sys.stdlib_module_names


_CLOUDPICKLE_OVERRIDE = cloudpickle.Pickler.reducer_override
#: What a pickle refers to by module and name when cloudpickle does not pickle it by value.
_NAMED = (type, types.FunctionType, types.BuiltinFunctionType)


class _RecordingPickler(cloudpickle.Pickler):
    """A cloudpickle pickler that notes the module of every class and function it pickles by reference.

    Those are what the worker must import to unpickle; classes and functions cloudpickle pickles by
    value (defined in ``__main__``, locally, or in a module registered with
    ``cloudpickle.register_pickle_by_value``) are not.
    """

    def __init__(self, file: IO[bytes]) -> None:
        super().__init__(file)
        self.modules: set[str] = set()

    def reducer_override(self, obj: Any) -> Any:
        # Called for nearly every object pickled: kept to one plain call and two cheap tests.
        reduced = _CLOUDPICKLE_OVERRIDE(self, obj)
        if reduced is NotImplemented and isinstance(obj, _NAMED):
            module = getattr(obj, "__module__", None)
            if isinstance(module, str):
                self.modules.add(module)
        return reduced


def dump_recording(obj: Any, file: IO[bytes]) -> VersionRecord:
    """Cloudpickle ``obj`` into ``file`` and return the versions a worker needs to load it.

    The packages are found while pickling (the top-level package of every module a class or function is
    imported from), so ``obj`` is walked once. :data:`SKIP_ENV` is read here, on the driver.
    """
    pickler = _RecordingPickler(file)
    pickler.dump(obj)
    found = sorted({module.partition(".")[0] for module in pickler.modules} - set(CORE_PACKAGES))
    packages = {name: _installed_version(name) for name in (*CORE_PACKAGES, *filter(_is_package, found))}
    return VersionRecord(python=python_version(), packages=packages, skip=_skip_requested())


def combine(records: Iterable[VersionRecord]) -> VersionRecord | None:
    """One record for several models pickled in this process (a fleet): the union of their packages."""
    records = list(records)
    if not records:
        return None
    packages: dict[str, str | None] = {}
    for record in records:
        packages.update(record.packages)
    return VersionRecord(records[0].python, packages, any(record.skip for record in records))


def _skip_requested() -> bool:
    return os.environ.get(SKIP_ENV, "").strip().lower() in {"1", "true", "yes"}


def _differs(name: str, driver: str | None, worker: str | None) -> bool:
    if name == "numpy" and driver is not None and worker is not None:
        return driver.split(".")[0] != worker.split(".")[0]
    return driver != worker


def compare(record: VersionRecord, worker: Mapping[str, str | None]) -> tuple[list[Difference], list[Difference]]:
    """The differences between the driver's ``record`` and a ``worker``'s versions: (fatal, lenient).

    ``worker`` maps ``"python"`` (``"major.minor"``) and each package of ``record`` to the worker's version,
    ``None`` when not installed. Fatal: Python's minor version, scikit-learn, numpy's major version, any
    model package (one that records no version on the driver is not compared). Lenient: numpy's minor
    version, scipy, cloudpickle, sklspark.
    """
    fatal: list[Difference] = []
    lenient: list[Difference] = []
    if record.python != worker.get("python"):
        fatal.append(Difference("python", record.python, worker.get("python")))
    for name, driver in record.packages.items():
        if driver is None or driver == worker.get(name):
            continue
        difference = Difference(name, driver, worker.get(name))
        strict = name not in _LENIENT and _differs(name, driver, difference.worker)
        (fatal if strict else lenient).append(difference)
    return fatal, lenient


def mismatch_message(fatal: list[Difference], where: str) -> str:
    """The one-line message of a failed check: each difference, then the fix; it starts with :data:`ERROR_MARKER`."""
    if any(d.name == "python" for d in fatal) and len(fatal) == 1:
        fix = f"point PYSPARK_PYTHON (spark.pyspark.python) at a Python {fatal[0].driver} environment"
    else:
        install = " ".join(d.requirement() for d in fatal if d.name != "python")
        fix = (
            f"install the driver's versions on the executors (pip install {install}), or point PYSPARK_PYTHON "
            "(spark.pyspark.python) at an environment that has them"
        )
    return (
        f"{ERROR_MARKER} this Python worker ({where}) cannot safely load the model, which was serialised on the "
        f"driver under other versions: {'; '.join(d.describe() for d in fatal)}. To fix it, {fix}. To load it "
        f"anyway, set {SKIP_ENV}=1 on the driver."
    )


def worker_versions(record: VersionRecord) -> dict[str, str | None]:
    """This process's versions of Python and of every package in ``record`` (``None``: not installed)."""
    return {"python": python_version(), **{name: _installed_version(name) for name in record.packages}}


def check_worker(record: VersionRecord | None, token: str) -> None:
    """Compare a model's version record with this worker's versions, once per process and model ``token``.

    Call it before unpickling the model. ``record=None`` (no record) passes.

    Raises
    ------
    VersionMismatch
        On a fatal difference (see :func:`compare`), unless :data:`SKIP_ENV` is set on the driver or here.
    """
    if record is None or token in _passed:
        return
    fatal, lenient = compare(record, worker_versions(record))
    where = f"{sys.executable} on {socket.gethostname()}"
    for difference in lenient:
        _logger.warning("sklspark: %s (%s); loading the model anyway", difference.describe(), where)
    if fatal:
        message = mismatch_message(fatal, where)
        if not (record.skip or _skip_requested()):
            raise VersionMismatch(message)
        _logger.warning("%s (ignored: %s is set)", message, SKIP_ENV)
    _passed.add(token)
