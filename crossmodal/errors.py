"""Errors a user can fix.

The command line prints a :class:`CrossmodalError` as one line (no traceback) and
exits with status 2; anything else is a bug and keeps its traceback.
"""


class CrossmodalError(Exception):
    """A mistake in the user's input or set-up; the message names the file and the fix."""


class InputError(CrossmodalError, ValueError):
    """An input file or array is malformed: wrong size, channels, values or contents."""


def loader_worker_death(err: BaseException) -> CrossmodalError | None:
    """The one-line error for PyTorch's report of a DataLoader worker that died without an
    exception (``RuntimeError: DataLoader worker (pid N) is killed by signal: Killed.`` or
    ``... exited unexpectedly``): a fault of the machine (the out-of-memory killer), not a
    bug to trace. ``None`` for any other error. PyTorch raises it from its SIGCHLD handler,
    wherever the main process is, or from the loader's iterator."""
    text = str(err)
    if not (isinstance(err, RuntimeError) and text.startswith("DataLoader worker (pid")):
        return None
    return CrossmodalError(
        f"{text.rstrip('. ')}: a data-loading worker process died without an error (killed, "
        f"or out of memory); run again, with fewer workers if memory ran out (`crossmodal "
        f"train ... --resume` continues from the last checkpoint)")
