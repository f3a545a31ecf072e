"""The one error type the CLI shows as a message (exit 2, no traceback).

Every expected failure, caused by the user's input, config or environment rather than by a
bug in radengine, is a :class:`UserError`. Each area keeps its own subclass (``StoreError``,
``ConfigError``, ``PretrainError`` ...) so callers can catch narrowly, and ``radengine.cli``
catches the base once for every subcommand. Messages name the file, key or option at fault
and say what to do. This module imports nothing heavy.
"""

from __future__ import annotations

import errno
import os

__all__ = ["UserError", "describe_os_error", "is_environment_os_error"]


class UserError(Exception):
    """An expected failure with a message that names what is wrong and what to do."""


# OSErrors that say something about the user's files or machine, not about radengine.
_ENV_ERRNOS = {
    errno.ENOENT: "no such file or folder",
    errno.EACCES: "permission denied",
    errno.EPERM: "operation not permitted",
    errno.EROFS: "read-only file system",
    errno.ENOSPC: "no space left on the device",
    errno.EDQUOT: "disk quota exceeded",
    errno.EISDIR: "is a folder, a file was expected",
    errno.ENOTDIR: "a path component is not a folder",
    errno.EEXIST: "already exists",
    errno.ENAMETOOLONG: "file name too long",
    errno.EMFILE: "too many open files",
    errno.EADDRINUSE: "address already in use",
}

_ADVICE = {
    errno.ENOENT: "check the path",
    errno.EACCES: "choose a folder you can write to, or fix its permissions",
    errno.EPERM: "choose a folder you can write to, or fix its permissions",
    errno.EROFS: "choose a writable folder",
    errno.ENOSPC: "free space there or choose another folder, then rerun (finished work is kept)",
    errno.EDQUOT: "free space there or choose another folder, then rerun (finished work is kept)",
    errno.EMFILE: "raise the open-file limit (ulimit -n)",
    errno.ENOTDIR: "check the path: a part of it is a file",
    errno.EADDRINUSE: "choose another port, or stop what uses it",
}


# OSError subclasses that name an environment problem by their type alone, raised by code
# (``raise FileNotFoundError("...: no such file")``) without an errno.
_ENV_TYPES = (
    FileNotFoundError,
    PermissionError,
    IsADirectoryError,
    NotADirectoryError,
    FileExistsError,
)


def is_environment_os_error(exc: BaseException) -> bool:
    """Whether ``exc`` is an OSError about the user's files or machine.

    Args:
        exc: Any exception.

    Returns:
        True for an OSError whose errno is one of the environment errnos (missing path, no
        permission, no space, read-only disk, address in use...), or for a
        FileNotFoundError, PermissionError, IsADirectoryError, NotADirectoryError or
        FileExistsError raised by code with only a message.
    """
    if not isinstance(exc, OSError):
        return False
    if exc.errno is None:
        return isinstance(exc, _ENV_TYPES)
    return exc.errno in _ENV_ERRNOS


def describe_os_error(exc: OSError) -> str:
    """One line naming the path, what went wrong and what to do.

    Args:
        exc: An OSError for which :func:`is_environment_os_error` is true.

    Returns:
        ``PATH: what (advice)``; for an OSError raised with only a message, the message.
    """
    if exc.errno is None and exc.filename is None:
        return str(exc)
    what = _ENV_ERRNOS.get(exc.errno or 0) or (exc.strerror or type(exc).__name__)
    paths = [os.fspath(p) for p in (exc.filename, exc.filename2) if p is not None]
    where = " -> ".join(paths)
    text = f"{where}: {what}" if where else what
    advice = _ADVICE.get(exc.errno or 0)
    return f"{text} ({advice})" if advice else text
