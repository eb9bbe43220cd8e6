"""Names the kNN modules share: the result columns, and the metrics the exact re-rank computes itself."""

#: The result columns: the neighbours' reference IDs (nearest first) and their distances (ascending).
NEIGHBOR_IDS = "neighbor_ids"
DISTANCES = "distances"

#: Internal: whether a query row has NaN or infinite features (flagged in the tasks, named by the join).
BAD_ROW = "__sklspark_bad"

#: Internal: a reference row's global position (the tie-break), in both modes.
POSITION = "__sklspark_position"

#: Internal, sharded mode: a row's query block and shard, and its roles in that group (:data:`AS_REFERENCE`,
#: :data:`AS_QUERY`, or both; :data:`ALONE` for a query that searches no other shard, whose list there is final)
#: when one frame carries both sides of a self-join.
BLOCK = "__sklspark_block"
SHARD = "__sklspark_shard"
ROLE = "__sklspark_role"
AS_REFERENCE = 1
AS_QUERY = 2
ALONE = 4

#: With ``on_error="null"``: why a query row has no neighbours (null where it was searched).
ERROR = "error"

EUCLIDEAN = "euclidean"
MANHATTAN = "manhattan"
COSINE = "cosine"
CHEBYSHEV = "chebyshev"

#: The inner product ``q . r`` as a metric (faiss's ``METRIC_INNER_PRODUCT``): the larger, the nearer. Its
#: distance is ``-q . r``, so that like every other distance it ascends from the nearest row.
INNER_PRODUCT = "inner_product"

#: Other names of the metrics the re-rank computes itself.
METRIC_ALIASES = {"l2": EUCLIDEAN, "l1": MANHATTAN, "cityblock": MANHATTAN, "infinity": CHEBYSHEV}
