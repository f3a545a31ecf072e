"""Compact file listings: PathTable, PathList and walk (what the ingest planner holds per
file at archive scale)."""

from __future__ import annotations

import os
import pickle

import pytest

from radengine.data.paths import PathList, PathTable, walk


def test_table_round_trips_paths_and_stays_compact():
    t = PathTable()
    names = [f"IM{k:06d}.dcm" for k in range(1000)]
    t.add("/archive/p1/s1", names)
    t.add("/archive/p1/s2", ["ä-ö.dcm", "bad-\udcff.dcm"])  # non-ASCII, undecodable bytes
    t.add("/empty", [])
    assert len(t) == 1002
    assert t[0] == "/archive/p1/s1/IM000000.dcm" and t[-1] == "/archive/p1/s2/bad-\udcff.dcm"
    assert t.take([1001, 3]) == ["/archive/p1/s2/bad-\udcff.dcm", "/archive/p1/s1/IM000003.dcm"]
    assert t.slice(998, 5000) == [t[998], t[999], t[1000], t[1001]]
    assert list(t)[:2] == [t[0], t[1]]
    with pytest.raises(IndexError):
        t[1002]
    # about the names' bytes plus 12 bytes a file, not a Python string per path
    assert t.nbytes() < 1002 * (12 + 13) + 200


def test_path_list_is_a_list_to_readers_and_to_pickle():
    t = PathTable()
    t.add("/a", ["x", "y", "z"])
    files = PathList(t, [2, 0])
    assert files == ["/a/z", "/a/x"] and files != ["/a/x", "/a/z"] and len(files) == 2
    assert files[1] == "/a/x" and files[:1] == ["/a/z"] and repr(files) == "['/a/z', '/a/x']"
    again = pickle.loads(pickle.dumps(files))
    assert type(again) is list and again == ["/a/z", "/a/x"]  # a worker gets only these


def test_walk_lists_each_file_once_whatever_the_entries(tmp_path):
    for rel in ("a/1.dcm", "a/b/2.dcm", "a/b/3.nii.gz", "c/4.dcm"):
        (tmp_path / rel).parent.mkdir(parents=True, exist_ok=True)
        (tmp_path / rel).write_bytes(b"x")
    errors = []

    def on_error(path, exc):
        errors.append((path, exc))

    nifti: list = []
    forward = walk(
        [tmp_path / "a", tmp_path / "a" / "b" / "2.dcm", tmp_path / "c", tmp_path / "missing"],
        on_error,
        exclude=lambda n: n.endswith(".nii.gz"),
        excluded=nifti,
    )
    backward = walk([tmp_path / "c", tmp_path / "a" / "b", tmp_path / "a"], lambda p, e: None,
                    exclude=lambda n: n.endswith(".nii.gz"))  # fmt: skip
    expected = [str(tmp_path / r) for r in ("a/1.dcm", "a/b/2.dcm", "c/4.dcm")]
    assert sorted(forward) == sorted(backward) == expected
    assert nifti == [(str(tmp_path / "a"), str(tmp_path / "a" / "b" / "3.nii.gz"))]
    assert errors == [(str(tmp_path / "missing"), None)]


def test_walk_reports_a_folder_it_cannot_list(tmp_path, monkeypatch):
    (tmp_path / "locked").mkdir()
    (tmp_path / "locked" / "f").write_bytes(b"x")
    (tmp_path / "open").mkdir()
    (tmp_path / "open" / "g").write_bytes(b"x")
    real = os.scandir

    def scandir(path="."):  # what a folder without read permission does (even for root)
        if os.fspath(path).endswith("locked"):
            raise PermissionError(13, "Permission denied", os.fspath(path))
        return real(path)

    monkeypatch.setattr(os, "scandir", scandir)
    errors = []
    table = walk([tmp_path], lambda p, e: errors.append((p, e)))
    assert list(table) == [str(tmp_path / "open" / "g")]
    assert [(p, type(e)) for p, e in errors] == [(str(tmp_path / "locked"), PermissionError)]


def test_walk_order_is_the_sorted_order_of_the_paths(tmp_path):
    """Folders whose names share a prefix with files or other folders ("a", "a.txt",
    "a-b", "a b"): the walk still lists every path where sorted() puts it."""
    rels = ["a/x", "a/b/y", "a.txt", "a-b/z", "a b/w", "ab", "a/b-c/v", "a/b.c", "Z/q", "é/r"]
    for rel in rels:
        (tmp_path / rel).parent.mkdir(parents=True, exist_ok=True)
        (tmp_path / rel).write_bytes(b"x")
    listed = list(walk([tmp_path], lambda p, e: None))
    assert listed == sorted(str(tmp_path / r) for r in rels)
    two = list(walk([tmp_path / "a-b", tmp_path / "a", tmp_path / "a.txt"], lambda p, e: None))
    assert two == sorted(two) and len(two) == 6
