"""File listings of archive size: millions of paths without a Python object per path.

A CT archive the size of RadNet-12M is some 12 million files. Held as Python strings (or
``pathlib.Path`` objects) their paths alone cost several GB before a single header is read.
:class:`PathTable` keeps each folder once and each file as its folder's number and its name's
UTF-8 bytes in flat arrays (about 35 bytes a file for names of 20 characters); a path becomes
a ``str`` only while someone reads it. :class:`PathList` is a sequence of some of a table's
files (a series), which pickles as a plain list: a worker process gets only its own paths.
:func:`walk` fills a table from folders and files, deterministically.
"""

from __future__ import annotations

import os
from array import array
from collections.abc import Callable, Iterable, Iterator, Sequence
from pathlib import Path
from typing import Any, overload

__all__ = ["PathList", "PathTable", "walk"]


class PathTable:
    """An append-only list of file paths, stored by folder and name (see the module doc)."""

    def __init__(self) -> None:
        self._folders: list[str] = []
        self._folder_of = array("i")  # per file: index into _folders
        self._names = bytearray()  # every file name, UTF-8 (surrogateescape), back to back
        self._ends = array("q")  # per file: end of its name in _names

    def add(self, folder: str, names: Iterable[str]) -> None:
        """Append the files ``names`` of ``folder``, in the given order."""
        code = len(self._folders)
        count = 0
        for name in names:
            self._names += name.encode("utf-8", "surrogateescape")
            self._ends.append(len(self._names))
            count += 1
        if count:
            self._folders.append(folder)
            self._folder_of.extend([code] * count)

    def __len__(self) -> int:
        return len(self._ends)

    def __getitem__(self, i: int) -> str:
        i = range(len(self))[i]  # negative indices, IndexError
        start = self._ends[i - 1] if i else 0
        name = self._names[start : self._ends[i]].decode("utf-8", "surrogateescape")
        return os.path.join(self._folders[self._folder_of[i]], name)

    def take(self, indices: Iterable[int]) -> list[str]:
        """The paths at ``indices``, as strings."""
        return [self[int(i)] for i in indices]

    def slice(self, start: int, stop: int) -> list[str]:
        """The paths ``start`` to ``stop`` (a chunk to scan), as strings."""
        return [self[i] for i in range(start, min(stop, len(self)))]

    def __iter__(self) -> Iterator[str]:
        return (self[i] for i in range(len(self)))

    def nbytes(self) -> int:
        """Bytes held: the arrays and the folder strings."""
        folders = sum(len(f) + 49 for f in self._folders)
        return (
            len(self._names)
            + self._ends.itemsize * len(self._ends)
            + folders
            + (self._folder_of.itemsize * len(self._folder_of))
        )


class PathList(Sequence[str]):
    """Some files of a :class:`PathTable`, in a given order; equal to a list of the same
    paths, and pickled as one (so a worker process gets only these paths, not the table)."""

    def __init__(self, table: PathTable, indices: Sequence[int]) -> None:
        self._table = table
        self._indices = array("q", indices)

    def __len__(self) -> int:
        return len(self._indices)

    @overload
    def __getitem__(self, i: int) -> str: ...
    @overload
    def __getitem__(self, i: slice) -> list[str]: ...
    def __getitem__(self, i: int | slice) -> str | list[str]:
        if isinstance(i, slice):
            return self._table.take(self._indices[i])
        return self._table[self._indices[i]]

    def __eq__(self, other: object) -> bool:
        if isinstance(other, (PathList, list, tuple)):
            return len(self) == len(other) and all(a == b for a, b in zip(self, other, strict=True))
        return NotImplemented

    def __hash__(self) -> int:  # equal to a list, which is unhashable
        raise TypeError("unhashable type: 'PathList'")

    def __repr__(self) -> str:
        return repr(list(self))

    def __reduce__(self) -> tuple[Any, ...]:
        return (list, (list(self),))


def walk(
    paths: Iterable[str | Path],
    on_error: Callable[[str, OSError | None], None],
    *,
    exclude: Callable[[str], bool] | None = None,
    excluded: list[tuple[str, str]] | None = None,
) -> PathTable:
    """Every file under ``paths`` (folders, walked recursively; files), each once, in the
    order of their path strings.

    Entries are made absolute; an entry inside a folder that is also given is dropped (that
    folder's walk finds it), so overlapping inputs give each file once. Files come out sorted
    as ``sorted()`` sorts their paths (each folder's entries are visited by name, a folder's
    as ``name/``, which is where its paths sort), so whatever follows a file's position (the
    scan's skipped entries) is in path order without a sort of the whole listing. Symbolic
    links to folders are not followed (a link cycle cannot hang the walk).

    Args:
        paths: Folders and files.
        on_error: Called with a path and the OSError for a folder that cannot be listed (or
            vanished) during the walk, and with ``None`` for an entry that does not exist.
        exclude: Files whose name it accepts go to ``excluded`` instead of the table.
        excluded: Receives ``(entry, path)`` for each excluded file: the given entry it was
            found under (for paths relative to it) and its path.
    """
    absolute = {os.path.abspath(os.fspath(p)) for p in paths}
    folders = {e for e in absolute if os.path.isdir(e)}
    entries = sorted(absolute, key=lambda e: e + os.sep if e in folders else e)
    table = PathTable()

    def inside_another(entry: str) -> bool:
        parent = os.path.dirname(entry)
        while parent and parent != entry:
            if parent in folders:
                return True
            entry, parent = parent, os.path.dirname(parent)
        return False

    def take(entry: str, folder: str, names: list[str]) -> None:
        if exclude is not None:
            keep = []
            for name in names:
                if exclude(name):
                    if excluded is not None:
                        excluded.append((entry, os.path.join(folder, name)))
                else:
                    keep.append(name)
            names = keep
        table.add(folder, names)

    def visit(entry: str, folder: str) -> None:
        try:
            with os.scandir(folder) as listing:
                items = []
                for e in listing:
                    try:
                        is_folder = e.is_dir()  # a link to a folder is one, but not walked
                        walk_in = is_folder and not e.is_symlink()
                    except OSError:
                        is_folder = walk_in = False
                    items.append((e.name + os.sep if is_folder else e.name, e.name, walk_in))
        except OSError as exc:
            on_error(exc.filename or folder, exc)
            return
        items.sort()
        run: list[str] = []
        for key, name, walk_in in items:
            if key.endswith(os.sep):
                take(entry, folder, run)
                run = []
                if walk_in:
                    visit(entry, os.path.join(folder, name))
            else:
                run.append(name)
        take(entry, folder, run)

    for entry in entries:
        if inside_another(entry) and os.path.lexists(entry):
            continue  # that folder's walk lists it (a missing one is still reported)
        if entry in folders:
            visit(entry, entry)
        elif os.path.isfile(entry):
            take(entry, os.path.dirname(entry), [os.path.basename(entry)])
        else:
            on_error(entry, None)
    return table
