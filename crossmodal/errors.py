"""Errors a user can fix.

The command line prints a :class:`CrossmodalError` as one line (no traceback) and
exits with status 2; anything else is a bug and keeps its traceback.
"""


class CrossmodalError(Exception):
    """A mistake in the user's input or set-up; the message names the file and the fix."""


class InputError(CrossmodalError, ValueError):
    """An input file or array is malformed: wrong size, channels, values or contents."""
