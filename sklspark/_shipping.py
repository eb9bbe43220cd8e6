"""Model shipping: serialise the fitted estimator once on the driver, load it once per worker process.

How the cloudpickle bytes travel depends on the session and the model's size:

* classic Spark, up to :data:`BROADCAST_MAX_BYTES`: a broadcast variable (BitTorrent-like, each
  executor fetches it once however many tasks run);
* Spark Connect, where there is no ``SparkContext`` and no broadcast, up to :data:`CLOSURE_MAX_BYTES`:
  inside the task's closure;
* larger models: a file (``SparkContext.addFile``, or an uploaded session artifact under Spark
  Connect) that every executor fetches once and each Python worker unpickles straight from disk. A
  broadcast would also hold the bytes in the driver's and every executor's JVM block manager, and a
  worker would hold the bytes and the model at once; the file path needs neither (measured in
  ``benchmarks/large_model.py``).

Either way, a Python worker process deserialises a given model once and keeps it for every later task
and chunk (Spark reuses Python workers by default, ``spark.python.worker.reuse=true``).
"""

from __future__ import annotations

import atexit
import functools
import os
import shutil
import tempfile
import threading
import uuid
from collections import OrderedDict
from collections.abc import Callable, Mapping
from typing import IO, Any

import cloudpickle
from pyspark import SparkFiles

from ._lru import BytesLRU
from ._session import spark_context_of
from ._versions import VersionRecord, check_worker, combine, dump_recording

#: Models kept alive per Python worker process; older ones are evicted first.
_CACHE_SIZE = 2

#: Largest model sent inside a task closure (Spark Connect): the plan carrying it must fit in one gRPC
#: message, ``spark.connect.grpc.maxInboundMessageSize`` (128 MiB by default), with room for the rest.
CLOSURE_MAX_BYTES = 96 << 20

#: Largest model broadcast on classic Spark; larger ones travel as a file.
BROADCAST_MAX_BYTES = 256 << 20
#: Pickled bytes of the keyed models (:class:`ShippedFleet`) a Python worker process keeps loaded, at most.
FLEET_CACHE_BYTES = 256 << 20

_cache: OrderedDict[str, Any] = OrderedDict()
_fleet_cache = BytesLRU()
_cache_lock = threading.Lock()
_staging_dir: str | None = None


def staging_path(name: str) -> str:
    """A path for a file to ship, in a temporary directory of the driver's removed when it exits.

    ``name`` must be unique for the application (e.g. built from a UUID): executors find the file
    under it with ``SparkFiles.get(name)``.
    """
    global _staging_dir
    if _staging_dir is None:
        _staging_dir = tempfile.mkdtemp(prefix="sklspark-ship-")
        atexit.register(shutil.rmtree, _staging_dir, ignore_errors=True)
    return os.path.join(_staging_dir, name)


def ship_file(spark: Any, path: str) -> None:
    """Make the driver's file ``path`` readable on every executor as ``SparkFiles.get(basename)``.

    Parameters
    ----------
    spark : SparkSession, DataFrame or SparkContext
        Where to ship: ``SparkContext.addFile`` on classic Spark, ``SparkSession.addArtifacts(file=True)``
        under Spark Connect (uploaded to the server in chunks, so no message-size limit applies).
    path : str
        The file, usually from :func:`staging_path`.
    """
    spark_context = spark_context_of(spark)
    if spark_context is not None:
        spark_context.addFile(path)
    else:
        spark = spark.sparkSession if hasattr(spark, "sparkSession") else spark
        spark.addArtifacts(path, file=True)


class _Shipment:
    """Serialised bytes made once on the driver, readable in every worker: how they travel is decided here.

    ``write(file)`` writes the bytes and returns the versions they were pickled with
    (:func:`~sklspark._versions.dump_recording`), which a worker checks before it unpickles anything
    (:func:`~sklspark._versions.check_worker`, once per process). A payload up to
    :data:`BROADCAST_MAX_BYTES` is broadcast (classic Spark) or, up to :data:`CLOSURE_MAX_BYTES`, carried
    in the closure (Spark Connect); a larger one is shipped as a file (see the module docstring).
    """

    def __init__(self, kind: str, write: Callable[[IO[bytes]], VersionRecord | None], spark: Any) -> None:
        self.token = uuid.uuid4().hex
        self._file_name = f"sklspark-{kind}-{self.token}.pkl"
        path = staging_path(self._file_name)
        with open(path, "wb") as f:
            self.versions = write(f)
        self.nbytes = os.path.getsize(path)
        self._broadcast = self._payload = None
        spark_context = spark_context_of(spark)
        if spark_context is not None and self.nbytes <= BROADCAST_MAX_BYTES:
            self.via, self._broadcast = "broadcast", spark_context.broadcast(_read_and_remove(path))
        elif spark_context is None and self.nbytes <= CLOSURE_MAX_BYTES:
            self.via, self._payload = "closure", _read_and_remove(path)
        else:
            self.via = "file"
            ship_file(spark, path)

    def _load(self, offset: int = 0, length: int | None = None) -> Any:
        """Unpickle the object stored at ``offset`` (the whole payload by default), in a worker.

        Raises
        ------
        VersionMismatch
            Before unpickling, if this process's versions cannot safely load what the driver pickled.
        """
        check_worker(self.versions, self.token)
        if self.via == "file":
            with open(SparkFiles.get(self._file_name), "rb") as f:
                f.seek(offset)
                return cloudpickle.loads(f.read(length if length is not None else -1))
        payload = self._broadcast.value if self._broadcast is not None else self._payload
        assert payload is not None
        end = None if length is None else offset + length
        return cloudpickle.loads(memoryview(payload)[offset:end])


class ShippedModel(_Shipment):
    """A picklable handle to an estimator that was serialised once on the driver.

    Parameters
    ----------
    estimator : object
        The fitted estimator. It is serialised with cloudpickle, so lambdas and
        locally defined functions inside it (e.g. ``FunctionTransformer(lambda x: ...)``) work.
        It is pickled straight to a file, so the driver never holds a second copy of a large model.
    spark : SparkSession, DataFrame or SparkContext
        The session the model is used in; decides how the bytes travel (see the module docstring).

    Attributes
    ----------
    nbytes : int
        Size of the serialised model.
    via : {"broadcast", "closure", "file"}
        How it travels.
    versions : VersionRecord
        The versions it was pickled with, checked by each worker before it unpickles the model.
    """

    def __init__(self, estimator: Any, spark: Any) -> None:
        super().__init__("model", functools.partial(dump_recording, estimator), spark)

    def get(self) -> Any:
        """The estimator, deserialised at most once per process."""
        with _cache_lock:
            if self.token in _cache:
                _cache.move_to_end(self.token)
                return _cache[self.token]
            estimator = self._load()
            _cache[self.token] = estimator
            while len(_cache) > _CACHE_SIZE:
                _cache.popitem(last=False)
            return estimator


class ShippedFleet(_Shipment):
    """Many fitted estimators keyed by a value, each serialised once on the driver, one after the other.

    A worker process unpickles a model only when it meets its key, and keeps the models it loaded
    while their pickled sizes add up to at most :data:`FLEET_CACHE_BYTES` (at least one), dropping the
    least recently used first. The whole mapping travels as one payload: broadcast, in the closure, or,
    above the limits, as one file from which a worker reads only the models it needs.

    Parameters
    ----------
    models : mapping
        Key value -> fitted estimator.
    spark : SparkSession, DataFrame or SparkContext

    Attributes
    ----------
    offsets : dict
        Key value -> ``(offset, length)`` of its pickle in the payload.
    """

    def __init__(self, models: Mapping[Any, Any], spark: Any) -> None:
        self.offsets: dict[Any, tuple[int, int]] = {}

        def write(f: IO[bytes]) -> VersionRecord | None:
            records = []
            for key, estimator in models.items():
                start = f.tell()
                records.append(dump_recording(estimator, f))
                self.offsets[key] = (start, f.tell() - start)
            return combine(records)

        super().__init__("fleet", write, spark)

    def __contains__(self, key: Any) -> bool:
        return key in self.offsets

    def get(self, key: Any) -> Any:
        """The estimator of ``key`` (which must be in :attr:`offsets`), deserialised at most once while cached."""
        offset, length = self.offsets[key]
        return _fleet_cache.get((self.token, key), lambda: (self._load(offset, length), length), FLEET_CACHE_BYTES)


def _read_and_remove(path: str) -> bytes:
    with open(path, "rb") as f:
        payload = f.read()
    os.remove(path)
    return payload
