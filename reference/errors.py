"""The error types of whisperkv. Every error a user can cause derives from `InputError`.

Backends (whisperkv.backends and third-party plug-ins) raise subclasses of these, so the command line
needs to know one type: an `InputError` is bad input or bad state, reported as one line
(`whisperkv: error: <message>`) with exit status 2 and no traceback. Messages are one line and name
the file or setting at fault first.
"""

from __future__ import annotations


class WhisperkvError(Exception):
    """Base of every error whisperkv raises on purpose."""


class InputError(WhisperkvError, ValueError):
    """Bad input or bad state: a file, folder, option or array that cannot be used, said in one line.

    A ValueError too, so that callers who caught ValueError before keep working.
    """


class BatchTooLarge(InputError):
    """More rows asked of a backend than it takes in one call (e.g. a library compiled for batch 1)."""
