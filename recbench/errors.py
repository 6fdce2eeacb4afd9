"""User-facing errors.

Every problem a user can fix (a bad knob, a missing file, a malformed line) raises one of these with a
single-line message that names the problem and the fix; the entry point prints it without a traceback
and exits non-zero.
"""

from __future__ import annotations


class RecbenchError(Exception):
    """A problem the user can fix; its message is one line: what is wrong, then how to fix it."""

    exit_code = 2

    def __init__(self, message: str) -> None:
        super().__init__(" ".join(str(message).split()))


class ConfigError(RecbenchError):
    """An impossible or unknown configuration value (raised before any data is loaded where possible)."""


class DataError(RecbenchError):
    """A missing, malformed or unusable data file."""
