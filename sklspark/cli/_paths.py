"""Reading any path Spark can read, and writing output so that it is never left half-written."""

from __future__ import annotations

import uuid
from typing import Any

FORMATS = ("parquet", "csv", "json", "orc")


def input_format(path: str, explicit: str | None) -> str:
    """``explicit`` if given, else the format named by the path's extension, else Parquet."""
    if explicit:
        return explicit
    name = path.rstrip("/").rsplit("/", 1)[-1].lower()
    for fmt in FORMATS:
        if name.endswith(f".{fmt}") or (fmt == "json" and name.endswith(".jsonl")):
            return fmt
    return "parquet"


def read_input(spark: Any, path: str, fmt: str):
    reader = spark.read.format(fmt)
    if fmt == "csv":
        reader = reader.option("header", "true").option("inferSchema", "true")
    return reader.load(path)


class HadoopPaths:
    """Existence checks, renames and deletes through Hadoop's FileSystem API (file://, hdfs://, s3a://...).

    Under Spark Connect the client has no JVM; ``available`` is then False and callers fall back to
    Spark's own output committer.
    """

    def __init__(self, spark: Any) -> None:
        try:
            self._jvm = spark._jvm
            self._conf = spark._jsc.hadoopConfiguration()
        except Exception:  # noqa: BLE001 - Spark Connect or no JVM: no Hadoop file system to ask
            self._jvm = None

    @property
    def available(self) -> bool:
        return self._jvm is not None

    def _fs(self, path: str):
        jpath = self._jvm.org.apache.hadoop.fs.Path(path)
        return jpath.getFileSystem(self._conf), jpath

    def exists(self, path: str) -> bool:
        fs, jpath = self._fs(path)
        matches = fs.globStatus(jpath)
        return matches is not None and len(matches) > 0

    def delete(self, path: str) -> None:
        fs, jpath = self._fs(path)
        fs.delete(jpath, True)

    def rename(self, src: str, dst: str) -> None:
        fs, jsrc = self._fs(src)
        if not fs.rename(jsrc, self._fs(dst)[1]):
            raise OSError(f"could not rename {src} to {dst}")


def write_atomically(df: Any, output: str, fmt: str, overwrite: bool, paths: HadoopPaths) -> None:
    """Write ``df`` to ``output`` so that ``output`` holds either the complete result or nothing new.

    The result is written next to ``output`` under a temporary name and renamed into place once Spark
    has committed every task; a failed or killed job leaves only the temporary directory, which is
    removed when the failure reaches this function. Without Hadoop access (Spark Connect) Spark's
    committer writes ``output`` directly and only a complete job leaves its ``_SUCCESS`` marker.
    """
    writer = df.write.format(fmt)
    if not paths.available:
        writer.mode("overwrite" if overwrite else "errorifexists").save(output)
        return
    tmp = f"{output.rstrip('/')}.sklspark-tmp-{uuid.uuid4().hex[:12]}"
    try:
        writer.save(tmp)
        if paths.exists(output):
            paths.delete(output)
        paths.rename(tmp, output)
    except BaseException:
        if paths.exists(tmp):
            paths.delete(tmp)
        raise
