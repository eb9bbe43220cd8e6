"""Side-by-side benchmarks of sklspark against its peers, in one run, on one machine.

    python benchmarks/run.py            # default sizes (about 10-15 minutes on 2 cores)
    python benchmarks/run.py --quick    # tiny sizes, every group, fewer variants (CI smoke test)
    python benchmarks/run.py --only approximate --name approximate   # 1,000,000 points, hnsw (about 10 minutes)

Each group is a module of its own, runnable alone with the same options (``python benchmarks/knn.py``):
``sparse``, ``approximate``, ``knn``, ``cheap``, ``memory``; what they share is in ``_common.py``.
Writes ``benchmarks/results/<name>.md`` (tables of times and ratios, and the targets) and
``benchmarks/results/<name>.png`` (a bar chart of the ratios). Ratios, not absolute times, are the point:
the machines are shared and noisy. Every Spark variant reads its input from Parquet and ends with an
action that computes every row (``write.format("noop")`` for DataFrames, ``count()`` for RDDs), so all
variants do the same work. Slow variants (row-per-call) run on a sample and are extrapolated, and the
table says so.
"""

from __future__ import annotations

import approximate
import cheap
import knn
import memory
import sparse
from _common import main

#: In this order, groups on the same master and conf share a session (knn ends on local[1]).
GROUPS = (sparse, approximate, knn, cheap, memory)

if __name__ == "__main__":
    main(GROUPS)
