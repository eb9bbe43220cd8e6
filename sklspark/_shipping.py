"""Model shipping: serialise the fitted estimator once on the driver, load it once per worker process.

How the cloudpickle bytes travel depends on the session:

* classic Spark: a broadcast variable (BitTorrent-like, each executor fetches it once however many
  tasks run, whatever the model's size);
* Spark Connect, where there is no ``SparkContext`` and no broadcast: inside the task's closure for
  models up to :data:`CLOSURE_MAX_BYTES`, as an uploaded session artifact (a file every executor
  fetches once, read with ``SparkFiles.get``) for larger ones.

Either way, a Python worker process deserialises a given model once and keeps it for every later task
and chunk (Spark reuses Python workers by default, ``spark.python.worker.reuse=true``).
"""

from __future__ import annotations

import atexit
import os
import shutil
import tempfile
import threading
import uuid
from collections import OrderedDict
from typing import Any

import cloudpickle
from pyspark import SparkFiles

from ._session import spark_context_of

#: Models kept alive per Python worker process; older ones are evicted first.
_CACHE_SIZE = 2

#: Largest model sent inside a task closure (Spark Connect): the plan carrying it must fit in one gRPC
#: message, ``spark.connect.grpc.maxInboundMessageSize`` (128 MiB by default), with room for the rest.
#: Larger models travel as an uploaded artifact file.
CLOSURE_MAX_BYTES = 96 << 20
_cache: OrderedDict[str, Any] = OrderedDict()
_cache_lock = threading.Lock()
_ship_dir: str | None = None


def ship_file(spark: Any, name: str, write: Any) -> None:
    """Make a file the driver writes readable on every executor as ``SparkFiles.get(name)``.

    Parameters
    ----------
    spark : SparkSession, DataFrame or SparkContext
        Where to ship: ``SparkContext.addFile`` on classic Spark, ``SparkSession.addArtifacts(file=True)``
        under Spark Connect (uploaded to the server in chunks, so no message-size limit applies).
    name : str
        File name, unique for the application (e.g. built from a UUID).
    write : callable
        ``write(path)`` creates the file; it lives in a temporary directory removed when the driver exits.
    """
    global _ship_dir
    if _ship_dir is None:
        _ship_dir = tempfile.mkdtemp(prefix="sklspark-ship-")
        atexit.register(shutil.rmtree, _ship_dir, ignore_errors=True)
    path = os.path.join(_ship_dir, name)
    write(path)
    spark_context = spark_context_of(spark)
    if spark_context is not None:
        spark_context.addFile(path)
    else:
        spark = spark.sparkSession if hasattr(spark, "sparkSession") else spark
        spark.addArtifacts(path, file=True)


class ShippedModel:
    """A picklable handle to an estimator that was serialised once on the driver.

    Parameters
    ----------
    estimator : object
        The fitted estimator. It is serialised with cloudpickle, so lambdas and
        locally defined functions inside it (e.g. ``FunctionTransformer(lambda x: ...)``) work.
    spark : SparkSession, DataFrame or SparkContext
        The session the model is used in; decides how the bytes travel (see the module docstring).

    Attributes
    ----------
    nbytes : int
        Size of the serialised model.
    via : {"broadcast", "closure", "artifact"}
        How it travels.
    """

    def __init__(self, estimator: Any, spark: Any) -> None:
        payload = cloudpickle.dumps(estimator)
        self.token = uuid.uuid4().hex
        self.nbytes = len(payload)
        self._broadcast = self._payload = self._file_name = None
        spark_context = spark_context_of(spark)
        if spark_context is not None:
            self.via, self._broadcast = "broadcast", spark_context.broadcast(payload)
        elif self.nbytes <= CLOSURE_MAX_BYTES:
            self.via, self._payload = "closure", payload
        else:
            self.via, self._file_name = "artifact", f"sklspark-model-{self.token}.pkl"
            ship_file(spark, self._file_name, lambda path: _write_bytes(path, payload))

    def get(self) -> Any:
        """The estimator, deserialised at most once per process."""
        with _cache_lock:
            if self.token in _cache:
                _cache.move_to_end(self.token)
                return _cache[self.token]
            if self._file_name is not None:
                with open(SparkFiles.get(self._file_name), "rb") as f:
                    estimator = cloudpickle.load(f)
            else:
                estimator = cloudpickle.loads(self._broadcast.value if self._broadcast is not None else self._payload)
            _cache[self.token] = estimator
            while len(_cache) > _CACHE_SIZE:
                _cache.popitem(last=False)
            return estimator


def _write_bytes(path: str, payload: bytes) -> None:
    with open(path, "wb") as f:
        f.write(payload)
