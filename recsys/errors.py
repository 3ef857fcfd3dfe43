"""User-facing errors: each says what is wrong and what to fix, in one line.

The command-line entry point prints them without a traceback; the server turns them into 4xx.
"""

from __future__ import annotations


class RecsysError(Exception):
    """An error caused by input or configuration, with a message that says what to fix."""


class InputError(RecsysError):
    """A file, column or value the user supplied is missing or malformed."""


class StrictValidationError(InputError):
    """``--strict`` ingest met a bad row."""

    def __init__(self, path: str, row: int, column: str, value: object, reason: str):
        self.path, self.row, self.column, self.value, self.reason = path, row, column, value, reason
        super().__init__(
            f"{path}: row {row}, column {column!r}, value {value!r}: {reason} "
            "(fix the row or run without --strict to skip and count such rows)"
        )
