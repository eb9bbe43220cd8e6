"""sklspark: run any fitted scikit-learn estimator's prediction-time method over Spark data, in stacked chunks."""

from ._distribute import distribute
from ._runner import ChunkError
from ._session import spark_session
from ._udf import ScoringUDF, udf

__version__ = "0.1.0"

__all__ = ["ChunkError", "ScoringUDF", "__version__", "distribute", "spark_session", "udf"]
