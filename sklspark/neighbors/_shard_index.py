"""Shard indexes built once: a shard's built backend and its rows as files, loaded once per worker process.

In sharded mode, a backend that writes its index to a file (:attr:`~sklspark.neighbors._backends.Backend.ships_as_file`:
``faiss``, ``hnsw``, ``annoy``) is built by one task per shard, which writes the shard as three files
under a directory every executor can read (a shard's *stem* names them):

* ``<stem>.<backend>``: the index, written by :meth:`Backend.save` (loaded with :meth:`Backend.load`,
  memory-mapped where the format allows, as in broadcast mode);
* ``<stem>.rows.npy``: the shard's feature matrix, in the index's position order, memory-mapped by the
  exact re-rank;
* ``<stem>.keys.arrow``: each row's global reference position (the tie-break key) and its ID (Arrow IPC).

Every task that searches a query block in that shard loads these files through :func:`load_shard`,
which keeps the shards it loaded per Python worker process (Spark reuses its Python workers), the
least recently used dropped first past :data:`SHARD_CACHE_BYTES`. Indexes are built on the executors,
so they cannot travel like the driver's files (``SparkContext.addFile``, :mod:`sklspark._shipping`):
the directory is shared instead. By default it is a directory in the driver's staging directory
(:func:`sklspark._shipping.staging_path`, removed when the driver exits), which executors on the
driver's machine can read (``local[*]``, a standalone cluster on one host); on a cluster of several
machines ``index_dir=`` names a directory of a shared file system.
"""

from __future__ import annotations

import os
import uuid
from dataclasses import dataclass
from typing import Any, NamedTuple

import numpy as np
import pyarrow as pa
import pyarrow.ipc

from .._lru import BytesLRU
from .._shipping import staging_path
from ._backends import Backend

#: Bytes of shard files (index and rows) a Python worker process keeps loaded, at most (at least one shard).
SHARD_CACHE_BYTES = 1 << 30

_ROWS = ".rows.npy"
_KEYS = ".keys.arrow"

_cache = BytesLRU()


class LoadedShard(NamedTuple):
    """A shard ready to search: the built backend (``None`` for a shard without rows), its rows, keys and IDs."""

    backend: Backend | None
    R: Any
    keys: np.ndarray
    ids: pa.Array


@dataclass(frozen=True)
class ShardFiles:
    """Where one call's shard indexes are (picklable: the tasks take it).

    Attributes
    ----------
    directory : str
        Readable by every executor and by the driver.
    token : str
        Unique to the call: the prefix of its files' names.
    template : Backend
        An unbuilt copy of the backend, to build on or to load into.
    metric : str
    """

    directory: str
    token: str
    template: Backend
    metric: str

    @classmethod
    def create(cls, index_dir: str | None, template: Backend, metric: str) -> ShardFiles:
        """A new call's files: under ``index_dir``, by default a new directory in the driver's staging directory."""
        token = uuid.uuid4().hex
        directory = index_dir if index_dir is not None else staging_path(f"sklspark-shards-{token}")
        os.makedirs(directory, exist_ok=True)
        return cls(directory, token, template, metric)

    def index_path(self, stem: str) -> str:
        return f"{stem}.{self.template.name}"

    def write(self, shard: int, built: LoadedShard) -> str:
        """Write a built shard (in a task); returns its stem, unique to this attempt, so a retried task never
        overwrites a file another attempt may be reading."""
        os.makedirs(self.directory, exist_ok=True)  # on an executor of another machine (no shared directory)
        stem = os.path.join(self.directory, f"sklspark-shard-{self.token}-{shard}-{uuid.uuid4().hex[:8]}")
        assert built.backend is not None
        built.backend.save(self.index_path(stem))
        np.save(stem + _ROWS, np.ascontiguousarray(built.R), allow_pickle=False)
        table = pa.table({"key": pa.array(built.keys, type=pa.int64()), "id": built.ids})
        with pa.OSFile(stem + _KEYS, "wb") as sink, pa.ipc.new_file(sink, table.schema) as writer:
            writer.write_table(table)
        return stem

    def paths(self, stem: str) -> list[str]:
        """The files of a shard."""
        return [self.index_path(stem), stem + _ROWS, stem + _KEYS]

    def missing(self, stems: list[str]) -> list[str]:
        """The files of these shards that the driver cannot see."""
        return [path for stem in stems for path in self.paths(stem) if not os.path.exists(path)]


def load_shard(files: ShardFiles, stem: str) -> LoadedShard:
    """The shard written under ``stem``, loaded once per process while cached (least recently used out first)."""

    def load() -> tuple[LoadedShard, int]:
        backend = files.template.fresh()
        R = np.load(stem + _ROWS, mmap_mode="r")
        backend.load(files.index_path(stem), files.metric, R.shape[1])
        with pa.memory_map(stem + _KEYS) as source:
            table = pa.ipc.open_file(source).read_all()
        loaded = LoadedShard(backend, R, table.column("key").to_numpy(), table.column("id").combine_chunks())
        return loaded, sum(os.path.getsize(path) for path in files.paths(stem))

    return _cache.get(stem, load, SHARD_CACHE_BYTES)
