"""Model shipping: serialise the fitted estimator once on the driver, load it once per worker process.

On a classic Spark session the cloudpickle bytes travel as a broadcast variable, so each executor
fetches them once however many tasks run. Under Spark Connect there is no ``SparkContext`` and no
broadcast; the bytes then travel inside the task's closure. Either way, a Python worker process
deserialises a given model once and keeps it for every later task and chunk (Spark reuses Python
workers by default, ``spark.python.worker.reuse=true``).
"""

from __future__ import annotations

import threading
import uuid
from collections import OrderedDict
from typing import Any

import cloudpickle

#: Models kept alive per Python worker process; older ones are evicted first.
_CACHE_SIZE = 2
_cache: OrderedDict[str, Any] = OrderedDict()
_cache_lock = threading.Lock()


class ShippedModel:
    """A picklable handle to an estimator that was serialised once on the driver.

    Parameters
    ----------
    estimator : object
        The fitted estimator. It is serialised with cloudpickle, so lambdas and
        locally defined functions inside it (e.g. ``FunctionTransformer(lambda x: ...)``) work.
    spark_context : SparkContext or None
        Broadcast through this context; ``None`` (Spark Connect) ships the bytes in the closure.
    """

    def __init__(self, estimator: Any, spark_context: Any | None) -> None:
        payload = cloudpickle.dumps(estimator)
        self.token = uuid.uuid4().hex
        self.nbytes = len(payload)
        self._broadcast = spark_context.broadcast(payload) if spark_context is not None else None
        self._payload = None if spark_context is not None else payload

    def get(self) -> Any:
        """The estimator, deserialised at most once per process."""
        with _cache_lock:
            if self.token in _cache:
                _cache.move_to_end(self.token)
                return _cache[self.token]
            payload = self._broadcast.value if self._broadcast is not None else self._payload
            estimator = _cache[self.token] = cloudpickle.loads(payload)
            while len(_cache) > _CACHE_SIZE:
                _cache.popitem(last=False)
            return estimator
