"""Candidate-search backends: a plugin interface and the ``gemm``, ``sklearn``, ``faiss``, ``hnsw``, ``annoy`` backends.

A backend only proposes candidates: :func:`sklspark.neighbors._rerank.exact_top_k` recomputes every
candidate's distance exactly and decides the final order, so a backend's own distances need only be
close (exact backends) or plausible (approximate ones).

Writing a backend
-----------------
Subclass :class:`Backend` and implement four methods::

    class HnswlibBackend(Backend):
        name = "hnswlib"
        metrics = ("euclidean", "cosine")
        exact = False                      # candidates may miss true neighbours
        precision = np.dtype(np.float32)   # arithmetic of the distances search() returns
        ships_as_file = True               # broadcast mode sends save()'s file, not a pickle

        def __init__(self, ef=200, M=16):
            self.ef, self.M = ef, M

        def build(self, X, metric):
            import hnswlib
            self._space = {"euclidean": "l2", "cosine": "cosine"}[metric]
            self._index = hnswlib.Index(space=self._space, dim=X.shape[1])
            self._index.init_index(max_elements=len(X), M=self.M)
            self._index.add_items(X, np.arange(len(X)))
            self._index.set_ef(self.ef)

        def search(self, Q, n):
            labels, dist = self._index.knn_query(Q, k=n)
            return (np.sqrt(dist) if self._space == "l2" else dist), labels.astype(np.int64)

        def save(self, path): ...          # self._index.save_index(path)
        def load(self, path, metric, n_features): ...

and pass an unbuilt instance: ``kneighbors_join(q, ref, 10, backend=HnswlibBackend(ef=400))``. The instance is
copied before it is built, so one instance can serve many calls. ``save``/``load`` are needed only when
``ships_as_file`` is true; otherwise the built backend is pickled into the broadcast.
"""

from __future__ import annotations

import copy
import os
import sys
from abc import ABC, abstractmethod
from typing import Any, ClassVar, NamedTuple

import numpy as np
import scipy.sparse as sp
from sklearn.neighbors import NearestNeighbors
from sklearn.preprocessing import normalize

from .._validation import check_scalar
from ._clustered import Partition, partition
from ._gemm import Scored, own_scores, top_scores
from ._names import INNER_PRODUCT, METRIC_ALIASES


class Backend(ABC):
    """Interface of a candidate-search backend (see the module docstring for an example).

    Attributes
    ----------
    name : str
        Name accepted by ``backend=``.
    metrics : tuple of str or None
        Metrics the backend supports; ``None`` means it validates them itself in :meth:`check_metric`.
    exact : bool
        Whether :meth:`search` returns the true ``n`` nearest rows (up to rounding in ``precision``).
        Exact backends get missing ties filled in by widening the search; approximate ones do not.
    precision : numpy dtype
        Floating-point type of the arithmetic behind the distances :meth:`search` returns.
    sparse : bool
        Whether :meth:`build` and :meth:`search` take CSR matrices; a sparse reference is made dense
        for backends that do not.
    ships_as_file : bool
        In broadcast mode, send the index as the file :meth:`save` writes (``SparkContext.addFile``,
        loaded once per worker process with :meth:`load`, memory-mapped where the format allows)
        instead of pickling the built backend.
    """

    name: ClassVar[str]
    metrics: ClassVar[tuple[str, ...] | None] = None
    exact: ClassVar[bool] = True
    precision: ClassVar[np.dtype] = np.dtype(np.float64)
    ships_as_file: ClassVar[bool] = False
    sparse: ClassVar[bool] = False

    def check_metric(self, metric: str) -> str:
        """Return the canonical name of ``metric``, or raise ``ValueError`` if the backend cannot use it."""
        return check_scalar(metric, "metric", f"backend {self.name!r}", kind=str, options=self.metrics)

    def fresh(self) -> Backend:
        """An unbuilt copy to build on, leaving this instance untouched."""
        return copy.deepcopy(self)

    @abstractmethod
    def build(self, X: np.ndarray, metric: str) -> None:
        """Index the rows of ``X`` (``n_ref x n_features``; CSR if :attr:`sparse`); row ``i`` is position ``i``."""

    @abstractmethod
    def search(self, Q: np.ndarray, n: int) -> tuple[np.ndarray, np.ndarray]:
        """The ``n`` (``<= n_ref``) nearest indexed rows of each row of ``Q``.

        Returns
        -------
        distances : ndarray of shape (n_queries, n), ascending along each row
        positions : ndarray of int of shape (n_queries, n)
            ``-1`` where fewer than ``n`` rows were found (approximate backends).
        """

    def search_own(self, R: Any, rows: slice, n: int) -> tuple[np.ndarray, np.ndarray]:
        """:meth:`search` of the indexed rows ``R[rows]`` themselves (a self-join); ``R`` holds the rows built on.

        A backend that can score each pair of its own rows once overrides it.
        """
        return self.search(R[rows], n)

    def save(self, path: str) -> None:
        """Write the built index to ``path`` (only when ``ships_as_file``)."""
        raise NotImplementedError(f"backend {self.name!r} does not ship as a file")

    def load(self, path: str, metric: str, n_features: int) -> None:
        """Load (memory-map where possible) an index that :meth:`save` wrote (only when ``ships_as_file``)."""
        raise NotImplementedError(f"backend {self.name!r} does not ship as a file")


class SklearnBackend(Backend):
    """Exact brute-force search with :class:`sklearn.neighbors.NearestNeighbors`; any metric it accepts."""

    name = "sklearn"
    sparse = True

    def __init__(self) -> None:
        self._nn: Any = None

    @classmethod
    def from_fitted(cls, nn: NearestNeighbors) -> SklearnBackend:
        """Wrap an already fitted ``NearestNeighbors`` (any algorithm) without refitting it."""
        backend = cls()
        backend._nn = nn
        return backend

    def check_metric(self, metric: str) -> str:
        check_scalar(metric, "metric", kind=str)
        if metric == INNER_PRODUCT:
            raise ValueError(
                f"backend 'sklearn' cannot use metric {INNER_PRODUCT!r}: NearestNeighbors has no inner-product "
                "metric; use backend='gemm' (the default with backend='auto')"
            )
        try:  # NearestNeighbors validates the name and resolves minkowski (p=1: manhattan, p=2: euclidean)
            effective = NearestNeighbors(algorithm="brute", metric=metric).fit(np.zeros((1, 1))).effective_metric_
        except ValueError as exc:
            raise ValueError(f"backend 'sklearn' cannot use metric {metric!r}: {exc}") from exc
        return METRIC_ALIASES.get(effective, effective)

    def build(self, X: np.ndarray, metric: str) -> None:
        self._nn = NearestNeighbors(algorithm="brute", metric=metric).fit(X)

    def search(self, Q: np.ndarray, n: int) -> tuple[np.ndarray, np.ndarray]:
        return self._nn.kneighbors(Q, n_neighbors=n)


class GemmBackend(Backend):
    """Exact search by float32 matrix products in cache-sized tiles (numpy's BLAS); euclidean, cosine, inner product.

    No extra install. Scores come from :func:`sklspark.neighbors._gemm.top_scores`; the exact
    re-rank then recomputes every candidate's distance in float64, so results equal the other exact
    backends'. Cosine rows are normalised once (zero rows stay zero: distance 1, as in scikit-learn).
    The inner product's distance is ``-q . r`` (largest inner product first).
    A CSR reference (``SparseVector`` features) stays CSR: tiles are sparse-sparse products.

    Clustered data: for a dense euclidean reference of at least
    :data:`sklspark.neighbors._clustered.MIN_ROWS` rows, :meth:`build` partitions it with k-means and tries
    a search on a sample of its rows; when the partition's triangle-inequality bounds skip enough pairs,
    searches visit only the clusters that can hold a neighbour (:mod:`sklspark.neighbors._clustered`,
    exact like brute force), else they stay brute force. :attr:`pairs_scored` counts the
    (query, reference row) pairs scored by :meth:`search` so far.

    Parameters
    ----------
    clustered : {"auto", True, False}, default="auto"
        ``"auto"``: decide in :meth:`build` as above; ``True``: always search a partition (euclidean, dense
        references); ``False``: always brute force.
    """

    name = "gemm"
    metrics = ("euclidean", "cosine", INNER_PRODUCT)
    precision = np.dtype(np.float32)
    sparse = True

    def __init__(self, clustered: bool | str = "auto") -> None:
        if not (isinstance(clustered, bool) or (isinstance(clustered, str) and clustered == "auto")):
            raise ValueError(f"GemmBackend: clustered must be 'auto', True or False, got {clustered!r}")
        self.clustered_search = clustered
        self._ref: Scored | None = None
        self._partition: Partition | None = None
        self._metric = "euclidean"
        self.pairs_scored = 0

    def build(self, X: Any, metric: str) -> None:
        self._metric = metric
        R = float32_rows(X, metric)
        eligible = metric == "euclidean" and not sp.issparse(R) and self.clustered_search is not False
        self._partition = self._partitioned(R) if eligible else None
        if self._partition is not None:  # clustered: the partition holds the rows, cluster by cluster
            self._ref = None
        else:
            self._ref = Scored(R, _squared_norms(R) if metric == "euclidean" else np.zeros(X.shape[0], np.float32))

    def _partitioned(self, R: np.ndarray) -> Partition | None:
        """The k-means partition of the dense euclidean rows ``R``, if it pays (:func:`partition`)."""
        return partition(R, force=self.clustered_search is True)

    @property
    def clustered(self) -> bool:
        """Whether :meth:`build` found the reference clustered enough to search it cluster by cluster."""
        return self._partition is not None

    def search(self, Q: Any, n: int) -> tuple[np.ndarray, np.ndarray]:
        assert self._ref is not None or self._partition is not None, "build() first"
        sparse = self._ref is not None and self._ref.sparse
        Q = float32_rows(sp.csr_matrix(Q) if sparse else Q.toarray() if sp.issparse(Q) else Q, self._metric)
        if self._metric != "euclidean":
            return self._distances(Q, *self._top_scores(-Q, n))  # -q . r
        if self._partition is not None:
            scores, positions, pairs = self._partition.search(Q, n)
            self.pairs_scored += int(pairs)
        else:
            scores, positions = self._top_scores(Q * np.float32(-2), n)
        return self._distances(Q, scores, positions)

    def search_own(self, R: Any, rows: slice, n: int) -> tuple[np.ndarray, np.ndarray]:
        """Brute force over dense rows scores each pair of the own rows ``rows`` once (:func:`own_scores`)."""
        if self._ref is None or self._ref.sparse:
            return super().search_own(R, rows, n)
        scores, positions = own_scores(self._ref, rows, n, -2.0 if self._metric == "euclidean" else -1.0)
        own = self._ref.features()[rows]
        self.pairs_scored += own.shape[0] * len(self._ref)
        return self._distances(own, scores, positions)

    def _distances(self, Q: np.ndarray, scores: np.ndarray, positions: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """The metric's distances from the scores of the float32 (normalised for cosine) queries ``Q``."""
        if self._metric == INNER_PRODUCT:
            return scores.astype(np.float64), positions
        if self._metric == "cosine":
            return np.clip(1.0 + scores.astype(np.float64), 0.0, 2.0), positions
        squared = scores.astype(np.float64) + _squared_norms(Q).astype(np.float64)[:, None]
        return np.sqrt(np.maximum(squared, 0)), positions

    def _top_scores(self, Q: Any, n: int) -> tuple[np.ndarray, np.ndarray]:
        """Brute force over every reference row; ``Q`` already scaled."""
        assert self._ref is not None
        self.pairs_scored += Q.shape[0] * len(self._ref)
        return top_scores(Q, self._ref, n)


def float32_rows(X: Any, metric: str) -> Any:
    """``X`` as C-contiguous float32 rows (CSR stays CSR), each scaled to unit length for cosine.

    Zero rows stay zero. On unit rows ``|q - r|^2 = 2 (1 - q . r) = 2 x`` the cosine distance, so
    euclidean indexes search cosine too.
    """
    if sp.issparse(X):
        X = sp.csr_matrix(X, dtype=np.float32)
        return normalize(X) if metric == "cosine" else X
    X = np.ascontiguousarray(X, dtype=np.float32)
    if metric == "cosine":
        norms = np.sqrt(np.einsum("ij,ij->i", X, X))
        X = X / np.where(norms > 0, norms, 1)[:, None]
    return X


def _squared_norms(X: Any) -> np.ndarray:
    """Squared norm of each row of a dense or CSR float32 matrix, in float32."""
    if sp.issparse(X):
        return np.asarray(X.multiply(X).sum(axis=1), dtype=np.float32).ravel()
    return np.einsum("ij,ij->i", X, X)


def _import_extra(module: str, extra: str, package: str) -> Any:
    try:
        return __import__(module)
    except ImportError as exc:
        raise ImportError(
            f"backend {extra!r} needs the {package} package: pip install 'sklspark[{extra}]' (or pip install {package})"
        ) from exc


def _cpu_flags() -> set[str]:
    try:
        with open("/proc/cpuinfo") as cpuinfo:
            return next((set(line.split(":", 1)[1].split()) for line in cpuinfo if line.startswith("flags")), set())
    except OSError:
        return set()


def blas_coretype(flags: set[str]) -> str | None:
    """The OpenBLAS kernel for a CPU with these ``/proc/cpuinfo`` flags, or ``None`` to let OpenBLAS choose."""
    if {"avx512f", "avx512bw", "avx512dq", "avx512vl"} <= flags:
        return "SkylakeX"
    if {"avx2", "fma"} <= flags:
        return "Haswell"
    return None


def import_faiss() -> Any:
    """Import faiss so that its bundled OpenBLAS runs the CPU's kernel.

    faiss-cpu wheels bundle an old OpenBLAS that does not know recent CPUs and falls back to its
    *Prescott* (SSE3) kernels, about 3x slower. OpenBLAS reads ``OPENBLAS_CORETYPE`` when it loads, so
    it is set from the CPU flags for the import alone (unless already set) and then removed again:
    numpy's own OpenBLAS, loaded earlier, and processes started later are left as they were.
    """
    if "faiss" in sys.modules or "OPENBLAS_CORETYPE" in os.environ:
        return _import_extra("faiss", "faiss", "faiss-cpu")
    coretype = blas_coretype(_cpu_flags())
    if coretype is not None:
        os.environ["OPENBLAS_CORETYPE"] = coretype
    try:
        return _import_extra("faiss", "faiss", "faiss-cpu")
    finally:
        os.environ.pop("OPENBLAS_CORETYPE", None)


class FaissBackend(Backend):
    """Exact search with a FAISS flat index (``IndexFlatL2``), computed in float32; euclidean only.

    Needs the optional extra: ``pip install 'sklspark[faiss]'`` (``faiss-cpu``).
    """

    name = "faiss"
    metrics = ("euclidean",)
    precision = np.dtype(np.float32)
    ships_as_file = True

    def __init__(self) -> None:
        import_faiss()
        self._index: Any = None

    def build(self, X: np.ndarray, metric: str) -> None:
        faiss = import_faiss()
        self._index = faiss.IndexFlatL2(X.shape[1])
        self._index.add(np.ascontiguousarray(X, dtype=np.float32))

    def search(self, Q: np.ndarray, n: int) -> tuple[np.ndarray, np.ndarray]:
        squared, positions = self._index.search(np.ascontiguousarray(Q, dtype=np.float32), n)
        return np.sqrt(np.maximum(squared, 0, dtype=np.float64)), positions.astype(np.int64)

    def save(self, path: str) -> None:
        import_faiss().write_index(self._index, path)

    def load(self, path: str, metric: str, n_features: int) -> None:
        self._index = read_faiss_index(path)


def read_faiss_index(path: str) -> Any:
    """Read a faiss index file read-only, its vectors memory-mapped where faiss can (``IO_FLAG_MMAP_IFC``).

    Memory-mapped vectors stay in the page cache, shared by the worker processes of a machine, instead
    of being copied into each one (faiss before 1.11 has no ``IO_FLAG_MMAP_IFC`` and reads them in).
    """
    faiss = import_faiss()
    return faiss.read_index(path, getattr(faiss, "IO_FLAG_MMAP_IFC", faiss.IO_FLAG_MMAP) | faiss.IO_FLAG_READ_ONLY)


class HnswBackend(Backend):
    """Approximate search with a FAISS HNSW graph (``IndexHNSWFlat``); euclidean and cosine.

    A hierarchical navigable small-world graph: every row is linked to about ``M`` near rows, and a
    search walks the graph greedily from an entry point, keeping the ``ef_search`` best rows seen so
    far. It visits a few thousand rows instead of all of them, so it scales to millions of rows, but
    it may miss a true neighbour: *recall@k* (the fraction of the true ``k`` nearest rows found) is
    below 1. What it finds is re-ranked exactly, so the distances returned are exact.

    Cosine searches the euclidean graph of the rows scaled to unit length (same order). Needs the
    optional extra: ``pip install 'sklspark[faiss]'`` (``faiss-cpu``). The index travels as a file,
    its vectors memory-mapped by the workers where faiss allows. Building uses every core of the
    driver (broadcast mode); a search runs one thread per task, like every backend.

    Parameters
    ----------
    M : int, default=32
        Graph links per row (twice as many on the bottom layer). More links: better recall at the same
        ``ef_search``, a slower build and about ``8 * M`` more bytes per row (besides ``4 * n_features``
        for the row itself).
    ef_construction : int, default=40
        Candidates kept while linking a new row: a better graph (recall) for a slower build.
    ef_search : int, default=128
        Candidates kept while searching, at least the number the exact re-rank asks for
        (``2 * n + 16`` for ``n`` neighbours). The search time grows about linearly with it and recall
        approaches 1: the knob that trades speed for recall.

    Examples
    --------
    >>> backend = HnswBackend(M=16, ef_search=128)
    >>> HnswBackend(ef_search=0)
    Traceback (most recent call last):
    ...
    ValueError: The 'ef_search' parameter of HnswBackend must be an int in the range [1, inf). Got 0 instead.
    """

    name = "hnsw"
    metrics = ("euclidean", "cosine")
    exact = False
    precision = np.dtype(np.float32)
    ships_as_file = True

    def __init__(self, M: int = 32, ef_construction: int = 40, ef_search: int = 128) -> None:
        import_faiss()
        self.M = check_scalar(M, "M", "HnswBackend", low=2)
        self.ef_construction = check_scalar(ef_construction, "ef_construction", "HnswBackend", low=1)
        self.ef_search = check_scalar(ef_search, "ef_search", "HnswBackend", low=1)
        self._index: Any = None
        self._metric = "euclidean"

    def build(self, X: np.ndarray, metric: str) -> None:
        faiss = import_faiss()
        self._metric = metric
        self._index = faiss.IndexHNSWFlat(X.shape[1], self.M)
        self._index.hnsw.efConstruction = self.ef_construction
        self._index.add(float32_rows(X, metric))
        self._index.hnsw.efSearch = self.ef_search

    def search(self, Q: np.ndarray, n: int) -> tuple[np.ndarray, np.ndarray]:
        squared, positions = self._index.search(float32_rows(Q, self._metric), n)  # ef: max(ef_search, n)
        found = positions >= 0
        squared = np.where(found, np.maximum(squared, 0, dtype=np.float64), np.inf)
        return (np.sqrt(squared) if self._metric == "euclidean" else squared / 2), positions.astype(np.int64)

    def save(self, path: str) -> None:
        import_faiss().write_index(self._index, path)

    def load(self, path: str, metric: str, n_features: int) -> None:
        self._metric = metric
        self._index = read_faiss_index(path)
        self._index.hnsw.efSearch = self.ef_search


class AnnoyBackend(Backend):
    """Approximate search with Annoy random-projection forests (euclidean, manhattan, cosine).

    Needs the optional extra: ``pip install 'sklspark[annoy]'``. The index file is memory-mapped, so the
    worker processes of one machine share one copy in the page cache.

    Parameters
    ----------
    n_trees : int, default=50
        Trees built; more trees give better recall and a bigger index.
    search_k : int, default=-1
        Nodes inspected per query; ``-1`` means Annoy's default (``n_trees * n``).
    """

    name = "annoy"
    metrics = ("euclidean", "manhattan", "cosine")
    exact = False
    precision = np.dtype(np.float32)
    ships_as_file = True
    _ANNOY_METRIC: ClassVar[dict[str, str]] = {"euclidean": "euclidean", "manhattan": "manhattan", "cosine": "angular"}

    def __init__(self, n_trees: int = 50, search_k: int = -1) -> None:
        _import_extra("annoy", "annoy", "annoy")
        self.n_trees = check_scalar(n_trees, "n_trees", "AnnoyBackend", low=1)
        self.search_k = check_scalar(search_k, "search_k", "AnnoyBackend", low=-1)
        self._index: Any = None

    def _new_index(self, metric: str, n_features: int):
        from annoy import AnnoyIndex

        return AnnoyIndex(n_features, self._ANNOY_METRIC[metric])  # type: ignore[arg-type]

    def build(self, X: np.ndarray, metric: str) -> None:
        self._index = self._new_index(metric, X.shape[1])
        for i, row in enumerate(np.asarray(X, dtype=np.float32)):
            self._index.add_item(i, row)
        self._index.build(self.n_trees, n_jobs=1)

    def search(self, Q: np.ndarray, n: int) -> tuple[np.ndarray, np.ndarray]:
        positions = np.full((Q.shape[0], n), -1, dtype=np.int64)  # Annoy may find fewer than n: -1 pads
        distances = np.full((Q.shape[0], n), np.inf)
        for i, q in enumerate(np.asarray(Q, dtype=np.float32)):
            found, dist = self._index.get_nns_by_vector(q, n, search_k=self.search_k, include_distances=True)
            positions[i, : len(found)], distances[i, : len(found)] = found, dist
        return distances, positions

    def save(self, path: str) -> None:
        self._index.save(path)

    def load(self, path: str, metric: str, n_features: int) -> None:
        self._index = self._new_index(metric, n_features)
        self._index.load(path)  # memory-mapped


#: Backends by the name ``backend=`` accepts.
BACKENDS: dict[str, type[Backend]] = {
    b.name: b for b in (GemmBackend, SklearnBackend, FaissBackend, HnswBackend, AnnoyBackend)
}


class BackendChoice(NamedTuple):
    """The backend a call searches with, the canonical name of its metric, and why that backend."""

    engine: Backend
    metric: str
    reason: str


def choose_backend(backend: str | Backend, metric: str, caller: str | None = None) -> BackendChoice:
    """Resolve ``backend=`` (``"auto"``, a name from :data:`BACKENDS` or an unbuilt :class:`Backend` instance)
    and check ``metric`` against it, once.

    ``"auto"`` is ``gemm`` for the metrics it computes (euclidean, cosine, inner product) and ``sklearn``
    for any other.

    Raises
    ------
    TypeError, ValueError
        For anything else than ``"auto"``, a backend instance or the name of one; for a metric the backend
        cannot use (with ``"auto"``: one scikit-learn does not know).
    ImportError
        If the backend's optional package is not installed.
    """
    if isinstance(backend, Backend):
        engine = backend.fresh()
        return BackendChoice(engine, engine.check_metric(metric), "the instance passed")
    options = ["auto", *BACKENDS]
    name = check_scalar(backend, "backend", caller, kind=str, options=options, also=["an instance of 'Backend'"])
    if name != "auto":
        engine = BACKENDS[name]()
        return BackendChoice(engine, engine.check_metric(metric), "named by backend=")
    canonical = INNER_PRODUCT if metric == INNER_PRODUCT else SklearnBackend().check_metric(metric)
    if canonical in GemmBackend.metrics:
        return BackendChoice(GemmBackend(), canonical, f"auto: gemm computes metric {canonical!r}")
    return BackendChoice(SklearnBackend(), canonical, f"auto: gemm does not compute metric {canonical!r}")


def get_backend(backend: str | Backend, metric: str, caller: str | None = None) -> Backend:
    """The engine of :func:`choose_backend`."""
    return choose_backend(backend, metric, caller).engine
