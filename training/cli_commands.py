"""Bodies of training-side ``recsys`` commands, as plain functions the CLI wires in.

Each returns the one-line message the command prints and raises :class:`recsys.errors.RecsysError`
for anything the user can fix (the CLI prints those without a traceback).
"""

from __future__ import annotations

from training.tracking import CHAMPION, promote


def promote_command(
    registered_model: str,
    version: str | None,
    alias: str = CHAMPION,
    tracking_uri: str | None = None,
) -> str:
    """``recsys promote``: point ``alias`` (default ``champion``) at ``version`` by hand
    (``None``: the latest version), overriding the automatic gate.

    Examples
    --------
    >>> promote_command("recsys-default", "3", "champion", None)  # doctest: +SKIP
    "recsys-default v3 is now 'champion'"
    """
    chosen = promote(registered_model, version, alias=alias, tracking_uri=tracking_uri)
    latest = " (the latest version)" if version is None else ""
    return f"{registered_model} v{chosen}{latest} is now {alias!r}"
