"""Shared core of the recommendation service: column names, schemas, id maps, interaction matrix,
metrics, the recommender contract and the serving bundle.

Import graph: ``recsys`` (core) <- ``features`` <- ``training``; ``serving`` imports only ``recsys``.
The command-line entry point ``recsys.cli`` is the composition root: it imports the layers lazily,
inside each command.
"""

__version__ = "0.1.0"
