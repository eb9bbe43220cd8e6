"""A study for sharded mode's next step: how many shards would a query need if shards held nearby rows?

    python benchmarks/shard_routing.py                 # 100,000 x 64, 4 shards, three data sets (about 2 minutes)
    python benchmarks/shard_routing.py --quick         # 5,000 rows: a smoke test

Not a benchmark of sklspark's code and not in ``run.py``: it measures, in one process, what an exact routing of
queries to shards would save, before it is built (issue 20, items 5 and 6). Sharded mode today gives row ``i``
to shard ``i mod S``, so every shard holds every region and every query searches all ``S`` shards. Here:

1. k-means with ``--cells`` cells on a sample of 20,000 rows; the cells, in the order of their centres along the
   sample's first principal axis, are cut into ``S`` runs of about equal row counts: a shard is a run of nearby
   cells, and every row goes to the shard of its nearest centre.
2. Each query searches its home shard (the shard of its nearest centre ``h``), which bounds its ``n``-th
   distance ``d`` from above.
3. A row ``x`` of a cell ``c`` is nearer to ``c`` than to ``h``, so it lies beyond the bisector of ``c`` and
   ``h``: ``|q - x| >= (|q - c|^2 - |q - h|^2) / (2 |c - h|)``. A shard none of whose cells is within ``d`` of
   the query by that bound (with a relative margin of 1e-9 for rounding) cannot hold one of its ``n`` nearest,
   and is not searched.

That needs two passes in Spark (the home shard's search, then the other shards for the few queries that need
them), whose first pass feeds both the second and the merge. A single pass bounds ``d`` before any search
instead:

4. The sample's rows are rows of the reference, so the ``n``-th distance from the query to the sample's rows
   bounds its ``n``-th distance to the reference from above too: the query is sent at once to the shards
   within that radius, and the search and the merge stay as they are.

It reports the shards searched per query either way (``S`` today), the share of queries needing more than
their home shard, and checks on a sample that the exact ``n`` nearest rows all lie in the shards searched.
"""

from __future__ import annotations

import argparse
import datetime
import sys
from typing import NamedTuple

import numpy as np
from _common import RESULTS, clustered, cpu_name
from kernel import mixture
from sklearn.cluster import KMeans
from sklearn.neighbors import NearestNeighbors

#: Rows the cells are fitted on.
SAMPLE = 20_000


class Routing(NamedTuple):
    """One way of routing: shards searched per query, the share searching more than one, and whether it is exact."""

    per_query: float
    more: float
    exact: bool


def shards_of_cells(sample: np.ndarray, kmeans: KMeans, shards: int) -> np.ndarray:
    """Each cell's shard: the cells along the sample's first principal axis, cut into runs of equal row counts."""
    counts = np.bincount(kmeans.labels_, minlength=kmeans.n_clusters)
    mean = sample.mean(axis=0)
    axis = np.linalg.svd(sample - mean, full_matrices=False)[2][0]
    order = np.argsort((kmeans.cluster_centers_ - mean) @ axis)
    middle = (np.cumsum(counts[order]) - counts[order] / 2) / counts.sum()  # each cell's middle row, as a share
    shard = np.empty(kmeans.n_clusters, dtype=np.int64)
    shard[order] = np.minimum(middle * shards, shards - 1).astype(np.int64)
    return shard


def shard_bounds(
    X: np.ndarray, home: np.ndarray, centres: np.ndarray, cell_shard: np.ndarray, shards: int
) -> np.ndarray:
    """``(rows, shards)``: a lower bound on the distance from each row to any row of each shard (0 for its own).

    ``home``: each row's cell. The bound holds for rows assigned to their nearest centre, whatever ``home`` is.
    """
    to_centre = (X**2).sum(axis=1)[:, None] - 2 * X @ centres.T + (centres**2).sum(axis=1)[None]  # squared
    apart = np.linalg.norm(centres[None] - centres[home][:, None], axis=-1)
    with np.errstate(divide="ignore", invalid="ignore"):
        bound = (to_centre - to_centre[np.arange(len(X)), home][:, None]) / (2 * apart)
    bound[np.arange(len(X)), home] = 0.0  # the home cell itself
    bound[~np.isfinite(bound)] = 0.0  # a twin of the home centre (apart == 0) bounds nothing
    return np.stack([bound[:, cell_shard == s].min(axis=1, initial=np.inf) for s in range(shards)], axis=1)


def study(X: np.ndarray, shards: int, cells: int, n: int, checked: int) -> tuple[np.ndarray, dict[str, Routing]]:
    """The shard sizes, and each routing of ``X``'s rows as queries of ``X`` itself (all neighbours)."""
    rng = np.random.default_rng(1)
    sample = X[rng.choice(len(X), min(len(X), SAMPLE), replace=False)]
    kmeans = KMeans(cells, n_init=1, random_state=0).fit(sample)
    cell_shard = shards_of_cells(sample, kmeans, shards)
    cell = kmeans.predict(X)
    shard = cell_shard[cell]
    home_distance = np.full(len(X), np.inf)  # the n-th distance within the home shard (none if it has fewer rows)
    for s in range(shards):
        rows = np.flatnonzero(shard == s)
        if len(rows) >= n:
            home_distance[rows] = NearestNeighbors(n_neighbors=n).fit(X[rows]).kneighbors(X[rows])[0][:, -1]
    sample_distance = NearestNeighbors(n_neighbors=min(n, len(sample))).fit(sample).kneighbors(X)[0][:, -1]
    bounds = shard_bounds(X, cell, kmeans.cluster_centers_, cell_shard, shards)
    checked_rows = rng.choice(len(X), min(len(X), checked), replace=False)
    nearest = NearestNeighbors(n_neighbors=n).fit(X).kneighbors(X[checked_rows], return_distance=False)
    routings = {}
    for name, radius in (("two passes", home_distance), ("one pass", sample_distance)):
        searched = bounds <= radius[:, None] * (1 + 1e-9)
        routings[name] = Routing(
            float(searched.sum(axis=1).mean()),
            float(np.mean(searched.sum(axis=1) > 1)),
            all(searched[i, shard[row]].all() for i, row in zip(checked_rows, nearest)),
        )
    return np.bincount(shard, minlength=shards), routings


def main(argv: list[str]) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rows", type=int, default=100_000)
    parser.add_argument("--dim", type=int, default=64)
    parser.add_argument("--shards", type=int, default=4)
    parser.add_argument("--cells", type=int, default=64, help="k-means cells, grouped into shards")
    parser.add_argument("-k", type=int, default=10)
    parser.add_argument("--checked", type=int, default=500, help="rows whose exact neighbours are checked")
    parser.add_argument("--quick", action="store_true", help="5,000 rows: a smoke test")
    parser.add_argument("--name", default="shard_routing")
    args = parser.parse_args(argv)
    if args.quick:
        args.rows, args.cells, args.checked = 5_000, 16, 100
    n, d = args.rows, args.dim
    data = {
        "50 clusters (the knn group's data)": lambda: clustered(n, d),
        f"Gaussian mixture of {int(n**0.5):,} clusters (the kernel group's)": lambda: mixture(n, d, int(n**0.5)),
        "uniform": lambda: np.random.default_rng(0).random((n, d)),
    }
    lines = [
        f"# Routing queries to shards of nearby rows: a study ({n:,} x {d}, {args.shards} shards, k={args.k})",
        "",
        f"{datetime.date.today()}, {cpu_name()}; `python benchmarks/shard_routing.py` (see its docstring). Today every "
        f"query searches all {args.shards} shards. Shards here: {args.cells} k-means cells cut into {args.shards} "
        "runs along the first principal axis. Two passes: a query searches its home shard, then each shard whose "
        f"bisector bound is within its {args.k + 1}-th distance there (all neighbours: itself and {args.k} others). "
        f"One pass: the shards within its {args.k + 1}-th distance to the {SAMPLE:,}-row sample, known before "
        "any search.",
        "",
        "| data | shard sizes | two passes: shards a query | needing more than the home shard "
        "| one pass: shards a query | needing more | exact neighbours all in searched shards |",
        "| --- | --- | ---: | ---: | ---: | ---: | :---: |",
    ]
    for label, make in data.items():
        sizes, routings = study(make().astype(np.float64), args.shards, args.cells, args.k + 1, args.checked)
        two, one = routings["two passes"], routings["one pass"]
        lines.append(
            f"| {label} | {', '.join(f'{s:,}' for s in sizes)} | {two.per_query:.3f} | {two.more:.1%} | "
            f"{one.per_query:.3f} | {one.more:.1%} | {'yes' if two.exact and one.exact else '**no**'} "
            f"({min(n, args.checked):,} rows) |"
        )
        print(lines[-1], flush=True)
    path = RESULTS / f"{args.name}.md"
    path.write_text("\n".join(lines) + "\n")
    print(f"written {path}")


if __name__ == "__main__":
    main(sys.argv[1:])
