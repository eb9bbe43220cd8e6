"""``to_edges``: a neighbours result as one row per (query, neighbour) edge."""

from __future__ import annotations

from pyspark.sql import DataFrame
from pyspark.sql import functions as F

from .._features import quote_column
from ._names import DISTANCES, NEIGHBOR_IDS


def to_edges(
    result: DataFrame,
    *,
    id_col: str = "id",
    neighbors_col: str = NEIGHBOR_IDS,
    distances_col: str = DISTANCES,
) -> DataFrame:
    """Explode a :func:`kneighbors_join` / :func:`all_neighbors` result into a graph's edge list.

    Parameters
    ----------
    result : DataFrame
        One row per query with its ID and the arrays of neighbour IDs and distances.
    id_col, neighbors_col, distances_col : str
        Names of those three columns.

    Returns
    -------
    DataFrame
        Columns ``src`` (query ID), ``dst`` (neighbour ID), ``distance`` (double) and ``rank``
        (int, 1 for the nearest), one row per neighbour.

    Examples
    --------
    >>> schema = "id long, neighbor_ids array<long>, distances array<double>"
    >>> result = spark.createDataFrame([(1, [2, 3], [0.5, 2.0])], schema)
    >>> to_edges(result).collect()
    [Row(src=1, dst=2, distance=0.5, rank=1), Row(src=1, dst=3, distance=2.0, rank=2)]
    """
    missing = [c for c in (id_col, neighbors_col, distances_col) if c not in result.columns]
    if missing:
        raise ValueError(f"column(s) {missing} not found; the result has columns {result.columns}")
    neighbors, distances = F.col(quote_column(neighbors_col)), F.col(quote_column(distances_col))
    pairs = F.zip_with(neighbors, distances, lambda i, d: F.struct(i.alias("dst"), d.alias("distance")))
    exploded = result.select(F.col(quote_column(id_col)).alias("src"), F.posexplode(pairs).alias("position", "edge"))
    return exploded.select("src", "edge.dst", "edge.distance", (F.col("position") + 1).cast("int").alias("rank"))
