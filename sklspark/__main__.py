"""``python -m sklspark``: the same as the ``sklspark`` command."""

from .cli import main

main()
