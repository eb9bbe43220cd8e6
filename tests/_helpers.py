"""Build every input kind distribute() takes from one matrix, and compare results with the in-process call."""

from __future__ import annotations

import contextlib
import uuid

import numpy as np
import pyarrow as pa
import scipy.sparse as sp
from numpy.testing import assert_allclose
from pyspark.ml.linalg import Vectors, VectorUDT
from pyspark.sql.types import LongType, StructField, StructType

DENSE_KINDS = ("rdd-ndarray", "rdd-list", "rdd-densevector", "df-vector", "df-array", "df-columns")
SPARSE_KINDS = ("rdd-sparsevector", "rdd-scipy", "df-sparsevector")

_UNSIGNED_TO_SIGNED = {
    np.dtype(np.uint8): np.dtype(np.int16),
    np.dtype(np.uint16): np.dtype(np.int32),
    np.dtype(np.uint32): np.dtype(np.int64),
    np.dtype(np.uint64): np.dtype(np.int64),
}


_VECTOR_SCHEMA = StructType([StructField("id", LongType()), StructField("features", VectorUDT())])


def make_input(spark, X, kind: str, n_partitions: int = 3):
    """``X`` (dense ndarray or CSR) as the input ``kind``; DataFrames get an ``id`` column for ordering."""
    sc = spark.sparkContext
    dense = X.toarray() if sp.issparse(X) else X
    csr = sp.csr_matrix(X)
    n = dense.shape[0]
    if kind == "rdd-ndarray":
        return sc.parallelize(list(dense), n_partitions)
    if kind == "rdd-list":
        return sc.parallelize(dense.tolist(), n_partitions)
    if kind == "rdd-densevector":
        return sc.parallelize([Vectors.dense(r) for r in dense], n_partitions)
    if kind == "rdd-sparsevector":
        return sc.parallelize([_sparse_vector(csr, i) for i in range(n)], n_partitions)
    if kind == "rdd-scipy":
        return sc.parallelize([csr[i] for i in range(n)], n_partitions)
    # DataFrames are built from driver-local data (a LocalRelation), as fast to read as a file.
    if kind == "df-vector":
        rows = [(i, Vectors.dense(r)) for i, r in enumerate(dense)]
        return spark.createDataFrame(rows, _VECTOR_SCHEMA).repartition(n_partitions)
    if kind == "df-sparsevector":
        rows = [(i, _sparse_vector(csr, i)) for i in range(n)]
        return spark.createDataFrame(rows, _VECTOR_SCHEMA).repartition(n_partitions)
    if kind == "df-array":
        width = dense.shape[1]
        values = pa.array(dense.ravel())
        column = pa.ListArray.from_arrays(pa.array(np.arange(n + 1) * width, type=pa.int32()), values)
        table = pa.table({"id": pa.array(np.arange(n)), "features": column})
        return spark.createDataFrame(table)
    if kind == "df-columns":
        table = pa.table({"id": np.arange(n), **{f"x{j}": dense[:, j] for j in range(dense.shape[1])}})
        return spark.createDataFrame(table)
    raise ValueError(kind)


def features_arg(kind: str, width: int):
    return [f"x{j}" for j in range(width)] if kind == "df-columns" else None


def _sparse_vector(csr, i):
    row = csr[i]
    return Vectors.sparse(csr.shape[1], row.indices.tolist(), row.data.tolist())


def collect_rdd(rdd, like):
    """Re-stack an RDD result (one element per row) into the shape of the in-process output ``like``."""
    return stack_results(rdd.collect(), like)


def stack_results(rows, like):
    if isinstance(like, (tuple, list)):
        assert all(isinstance(r, type(like)) and len(r) == len(like) for r in rows)
        parts = list(zip(*rows)) if rows else [[] for _ in like]
        return type(like)(stack_results(list(p), part) for p, part in zip(parts, like))
    if sp.issparse(like):
        assert all(sp.issparse(r) and r.shape[0] == 1 for r in rows)
        return sp.vstack(rows).tocsr()
    if like.dtype == object:
        out = np.empty(len(rows), dtype=object)
        out[:] = rows
        return out
    return np.array(rows, dtype=None) if like.ndim == 1 else np.stack(rows)


def collect_df(df, names, like):
    """The result columns ``names`` of a DataFrame result, in ``id`` order, as NumPy/SciPy values."""
    table = df.toArrow()
    table = table.take(np.argsort(table.column("id").to_numpy()))
    parts = like if isinstance(like, (tuple, list)) else [like]
    got = [column_values(table.column(name).combine_chunks(), p) for name, p in zip(names, parts)]
    return type(like)(got) if isinstance(like, (tuple, list)) else got[0]


def column_values(column: pa.Array, like):
    if pa.types.is_struct(column.type):  # a VectorUDT column
        assert sp.issparse(like)
        return sp.csr_matrix(np.stack([_vector_row(v) for v in column.to_pylist()]))
    if like.dtype == object and like.ndim == 1 and pa.types.is_list(column.type):  # ragged rows
        out = np.empty(len(column), dtype=object)
        out[:] = [np.asarray(row.values.to_numpy(zero_copy_only=False)) for row in column]
        return out
    while pa.types.is_list(column.type):
        column = column.flatten()
    values = column.to_numpy(zero_copy_only=False)
    return values.reshape(like.shape) if like.dtype.kind not in "OUS" else values


def _vector_row(v):
    if v["type"] == 1:
        return np.asarray(v["values"])
    out = np.zeros(v["size"])
    out[v["indices"]] = v["values"]
    return out


def assert_same(got, expected, *, check_dtype=True, rtol=None):
    """``got`` equals ``expected`` part by part: same shapes, same dtypes (Spark-widened), values to float tolerance."""
    if isinstance(expected, (tuple, list)):
        assert isinstance(got, type(expected)) and len(got) == len(expected)
        for g, e in zip(got, expected):
            assert_same(g, e, check_dtype=check_dtype, rtol=rtol)
        return
    if sp.issparse(expected):
        assert sp.issparse(got), f"expected a sparse result, got {type(got)}"
        assert_same(got.toarray(), expected.toarray(), check_dtype=False, rtol=rtol)
        return
    assert got.shape == expected.shape, (got.shape, expected.shape)
    if expected.dtype == object and expected.size and isinstance(expected.flat[0], np.ndarray):
        for g, e in zip(got, expected):
            assert_same(g, e, check_dtype=check_dtype, rtol=rtol)
        return
    if expected.dtype.kind in "OUS":
        assert got.tolist() == expected.tolist()
        return
    if check_dtype:
        assert got.dtype == _UNSIGNED_TO_SIGNED.get(expected.dtype, expected.dtype), (got.dtype, expected.dtype)
    if expected.dtype.kind == "f":
        tol = rtol if rtol is not None else (1e-4 if expected.dtype == np.float32 else 1e-7)
        assert_allclose(got, expected, rtol=tol, atol=tol * 1e-2)
    else:
        np.testing.assert_array_equal(got, expected)


@contextlib.contextmanager
def no_spark_job(sc):
    """Assert that the block starts no Spark job."""
    group = f"sklspark-no-job-{uuid.uuid4().hex}"
    sc.setJobGroup(group, "must stay empty")
    try:
        yield
    finally:
        jobs = sc.statusTracker().getJobIdsForGroup(group)
        sc.setLocalProperty("spark.jobGroup.id", None)
        assert list(jobs) == [], f"a Spark job ran: {jobs}"
