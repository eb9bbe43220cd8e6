"""The ``sklspark`` command line: ``sklspark knn``, ``sklspark apply``, ``sklspark demo``."""

from ._app import main

__all__ = ["main"]
