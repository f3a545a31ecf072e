"""Ingest never dies of one input, leaves no stray or empty store, and readers refuse what
they cannot use.

- Every stage that reads one file or one series (header scan, file decode, fast-path
  pixel read, series load, resampling, NIfTI load and depth, image decode and resize) is
  hit by every kind of exception (empty message, multi-line message, MemoryError, OSError,
  a BaseException such as pyo3's PanicException): the ingest returns, and the file is in
  errors.jsonl with a readable reason.
- Files and folders that vanish or become unreadable during the scan are skipped.
- A kill during the finishing step leaves temporary files; the rerun removes them and
  the store is byte-identical to an uninterrupted one; verify() reports stray files.
- verify() is clean on stores whose index holds NaN (no kVp, no SliceThickness).
- An ingest that stores nothing leaves no store; every reader refuses an unfinished or
  empty store with one message; a CT source of JPEG/PNG files points to `ingest images`;
  a bad source path creates no pseudonymisation secret.
"""

from __future__ import annotations

import errno
import json
import os
import shutil
import signal
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from radengine.cli import main
from radengine.data import ingest
from radengine.data.store import ArraySpec, Store, StoreError, StoreWriter
from tests.data.util import tree_bytes


class Panic(BaseException):
    """Like pyo3's PanicException: a BaseException that is not an Exception."""


# Every kind of exception a decoder, a parser or the OS raises on bad input.
EXCEPTIONS = {
    "empty-message": lambda: IndexError(),
    "empty-runtime": lambda: RuntimeError(""),
    "multi-line": lambda: ValueError("\n\nfirst fact\nsecond line of advice"),
    "memory": lambda: MemoryError(),
    "vanished": lambda: FileNotFoundError(errno.ENOENT, "No such file or directory"),
    "panic": lambda: Panic(),
    "stop-iteration": lambda: StopIteration(),
}


def _errors(summary: ingest.IngestSummary) -> list[dict]:
    text = Path(summary.errors_file).read_text()
    return [json.loads(line) for line in text.splitlines() if line]


def _check_reasons(errors: list[dict], exc: BaseException, victims: set[str]) -> None:
    """Each victim file is listed, with a reason that names the exception readably."""
    listed = {e["path"]: e["reason"] for e in errors}
    for path in victims:
        assert path in listed, f"{path} not in errors.jsonl: {sorted(listed)}"
        reason = listed[path]
        assert reason.strip() and "Traceback" not in reason and "\n" not in reason
        assert type(exc).__name__ in reason or getattr(exc, "strerror", None) in reason, reason


@pytest.fixture(scope="module")
def archive(tmp_path_factory):
    pytest.importorskip("pydicom")
    from radengine.data.dicom_synth import write_synthetic_dicom

    root = tmp_path_factory.mktemp("archive")
    # Two patients, two plain series each (classic files: the fast path takes them).
    write_synthetic_dicom(root / "dicom", 2, 4, 32, seed=3, variants=("plain", "intercept"))
    return root


@pytest.fixture(scope="module")
def nifti_and_images(tmp_path_factory):
    nib = pytest.importorskip("nibabel")
    pil = pytest.importorskip("PIL.Image")
    root = tmp_path_factory.mktemp("other")
    rng = np.random.default_rng(0)
    (root / "nii").mkdir()
    for i in range(2):
        vol = rng.integers(-1000, 1000, size=(12, 12, 3)).astype(np.int16)
        nib.save(nib.Nifti1Image(vol, np.eye(4)), root / "nii" / f"case{i}.nii.gz")
    for cls in ("a", "b"):
        (root / "img" / cls).mkdir(parents=True)
        for i in range(2):
            arr = rng.integers(0, 255, size=(20, 24, 3), dtype=np.uint8)
            pil.fromarray(arr).save(root / "img" / cls / f"{i}.png")
    return root


def _ct(sources, tmp_path, **kw):
    return ingest.ingest_ct(
        sources, tmp_path / "store", size=16, workers=1, secret=tmp_path / "secret",
        progress=False, **kw,
    )  # fmt: skip


def _raise_for(victim, exc_factory, real):
    """``real``, except that it raises a fresh exception when ``victim(args)`` is true."""

    def wrapped(*args, **kwargs):
        if victim(*args):
            raise exc_factory()
        return real(*args, **kwargs)

    return wrapped


def _first_patient(path) -> bool:
    return "p0001" in str(path)


# Stage name -> (module attribute to patch, victim predicate on its arguments, fast path on).
DICOM_STAGES = {
    "scan-classify": ("_classify", lambda path, ds: _first_patient(path), True),
    "file-decode": ("_read_frames", _first_patient, False),
    "fast-pixels": ("_read_pixels", lambda path, px, out: _first_patient(path), True),
    "series-load": ("load_series", lambda ref, pseudo: _first_patient(ref.files[0]), True),
}


@pytest.mark.parametrize("kind", sorted(EXCEPTIONS))
@pytest.mark.parametrize("stage", sorted(DICOM_STAGES))
def test_any_exception_in_any_dicom_stage_skips_only_its_input(
    archive, tmp_path, monkeypatch, stage, kind
):
    from radengine.data import dicom

    name, victim, fast = DICOM_STAGES[stage]
    monkeypatch.setattr(dicom, "_FAST_PATH", fast)
    monkeypatch.setattr(dicom, name, _raise_for(victim, EXCEPTIONS[kind], getattr(dicom, name)))
    summary = _ct([archive], tmp_path)
    store = Store(tmp_path / "store")
    assert summary.error is None and store.verify() == []
    if stage == "fast-pixels" and issubclass(type(EXCEPTIONS[kind]()), OSError):
        # A file that changed under the fast path is read again the reference way.
        assert summary.slices == 4 * 4 and _errors(summary) == []
        return
    assert summary.slices == 2 * 4 and len(np.unique(store.index["patient"])) == 1
    victims = {str(p) for p in (archive / "dicom").rglob("*.dcm") if _first_patient(p)}
    _check_reasons(_errors(summary), EXCEPTIONS[kind](), victims)


@pytest.mark.parametrize("kind", sorted(EXCEPTIONS))
def test_any_exception_while_resampling_skips_the_series(archive, tmp_path, monkeypatch, kind):
    calls = []
    real = ingest._resize_slices

    def resize(images, size):
        calls.append(1)
        if len(calls) == 1:  # the first series of the plan
            raise EXCEPTIONS[kind]()
        return real(images, size)

    monkeypatch.setattr(ingest, "_resize_slices", resize)
    summary = _ct([archive], tmp_path)
    assert summary.error is None and summary.slices == 3 * 4
    assert Store(tmp_path / "store").verify() == []
    errors = [e for e in _errors(summary) if e["reason"].startswith("series could not be")]
    assert len(errors) == 4  # every file of the failed series is accounted for
    _check_reasons(errors, EXCEPTIONS[kind](), {e["path"] for e in errors})


@pytest.mark.parametrize("kind", sorted(EXCEPTIONS))
@pytest.mark.parametrize("stage", ["load_nifti", "_nifti_depth"])
def test_any_exception_in_a_nifti_stage_skips_only_its_volume(
    nifti_and_images, tmp_path, monkeypatch, stage, kind
):
    from radengine.data import nifti

    module = nifti if stage == "load_nifti" else ingest
    victim = lambda path, *a, **k: "case0" in str(path)  # noqa: E731
    monkeypatch.setattr(module, stage, _raise_for(victim, EXCEPTIONS[kind], getattr(module, stage)))
    summary = _ct([nifti_and_images / "nii"], tmp_path)
    assert summary.error is None and summary.slices == 3
    assert Store(tmp_path / "store").verify() == []
    victims = {str(p) for p in (nifti_and_images / "nii").glob("case0*")}
    _check_reasons(_errors(summary), EXCEPTIONS[kind](), victims)


@pytest.mark.parametrize("kind", sorted(EXCEPTIONS))
@pytest.mark.parametrize("stage", ["load_image", "resize_shorter_center_crop"])
def test_any_exception_in_an_image_stage_skips_only_its_file(
    nifti_and_images, tmp_path, monkeypatch, stage, kind
):
    from radengine.data import images

    victim = lambda img, *a, **k: isinstance(img, str) and img.endswith("a/0.png")  # noqa: E731
    if stage == "resize_shorter_center_crop":
        seen = []

        def victim(img, *a, **k):  # the first image resampled
            seen.append(1)
            return len(seen) == 1

    monkeypatch.setattr(images, stage, _raise_for(victim, EXCEPTIONS[kind], getattr(images, stage)))
    summary = ingest.ingest_images(
        nifti_and_images / "img", tmp_path / "store", size=8, workers=1, progress=False
    )
    assert summary.error is None and summary.slices == 3
    assert Store(tmp_path / "store").verify() == []
    errors = _errors(summary)
    assert len(errors) == 1
    _check_reasons(errors, EXCEPTIONS[kind](), {errors[0]["path"]})


def test_decoder_error_with_an_empty_message_is_a_readable_reason(tmp_path):
    """The issue's case, unmocked: JPEG 2000 with NumberOfFrames beyond its fragments makes
    the decoder raise with an empty message."""
    pydicom = pytest.importorskip("pydicom")
    from radengine.data.dicom_synth import available_variants, write_synthetic_dicom

    if "jpeg2000" not in available_variants():
        pytest.skip("no JPEG 2000 encoder installed")
    files = write_synthetic_dicom(tmp_path / "dcm", 1, 4, 32, seed=1, variants=("jpeg2000",))
    ds = pydicom.dcmread(files[0])
    ds.NumberOfFrames = 3
    ds.save_as(files[0])
    summary = _ct([tmp_path / "dcm"], tmp_path)
    assert summary.slices == 3
    (error,) = _errors(summary)
    assert error["path"] == str(files[0]) and error["reason"].startswith("cannot decode pixel")
    # After the syntax's name, the decoder's failure: at least its type, never nothing.
    assert error["reason"].split("): ", 1)[1].strip()


_ABORTING_READER = """
import os

if os.environ.get("RADENGINE_TEST_ABORT_ON"):
    import radengine.data.dicom as dicom

    real = dicom.load_series

    def load_series(ref, pseudo):
        # What a native decoder's assertion does: the process dies, no exception is raised.
        if any(os.environ["RADENGINE_TEST_ABORT_ON"] in f for f in ref.files):
            os.abort()
        return real(ref, pseudo)

    dicom.load_series = load_series
"""


def test_a_reader_that_kills_its_worker_process_skips_only_its_series(
    archive, tmp_path, monkeypatch
):
    """A native crash cannot be caught in the process it happens in: with worker processes,
    the ingest redoes the shard in isolation and leaves out only the series that crashes."""
    # Worker processes are spawned: a sitecustomize on their path plants the crash there.
    site = tmp_path / "site"
    site.mkdir()
    (site / "sitecustomize.py").write_text(_ABORTING_READER)
    monkeypatch.setenv("PYTHONPATH", os.pathsep.join([str(site), *sys.path]))
    monkeypatch.setenv("RADENGINE_TEST_ABORT_ON", f"p0001{os.sep}01_plain")
    args = dict(size=16, secret=tmp_path / "secret", progress=False, shard_slices=8)
    summary = ingest.ingest_ct([archive], tmp_path / "store", workers=2, **args)
    assert summary.error is None and summary.slices == 3 * 4
    assert Store(tmp_path / "store").verify() == []
    crashed = [e for e in _errors(summary) if e["reason"] == ingest._CRASH_REASON]
    assert sorted(e["path"] for e in crashed) == sorted(
        str(p) for p in (archive / "dicom" / "p0001" / "01_plain").glob("*.dcm")
    )
    # The same store as an ingest that never saw the series (the resume plan is unchanged).
    monkeypatch.delenv("RADENGINE_TEST_ABORT_ON")
    again = ingest.ingest_ct([archive], tmp_path / "store", workers=1, **args)
    assert again.shards_written == 0 and again.slices == 3 * 4


# --------------------------------------------------------------------------- vanishing files


def test_files_that_vanish_or_turn_unreadable_during_the_scan_are_skipped(
    archive, tmp_path, monkeypatch
):
    from radengine.data import dicom

    src = tmp_path / "busy"
    shutil.copytree(archive / "dicom", src)
    (src / "p0001" / "gone-dir").mkdir()
    (src / "p0001" / "gone-dir" / "x.dcm").write_bytes(b"x")
    files = sorted(str(p) for p in src.rglob("*.dcm"))
    vanished, locked, later = files[0], files[5], files[9]

    # A folder deleted between its listing and its walk (a walk's own race).
    real_scandir = os.scandir

    class Listed(list):  # os.scandir's result: iterable and a context manager
        def __enter__(self):
            return self

        def __exit__(self, *exc):
            return False

    def racing_scandir(path="."):
        if isinstance(path, int):  # shutil.rmtree lists by file descriptor
            return real_scandir(path)
        entries = Listed(real_scandir(path))
        if os.fspath(path) == str(src / "p0001"):  # listed, not yet walked into
            shutil.rmtree(src / "p0001" / "gone-dir")
        return entries

    monkeypatch.setattr(os, "scandir", racing_scandir)

    # A file deleted and one made unreadable after the walk, before its header is read
    # (root reads files whatever their mode, so the permission error is raised directly).
    real_open = open

    def racing_open(path, *args, **kwargs):
        if str(path) == locked:
            raise PermissionError(errno.EACCES, "Permission denied", str(path))
        return real_open(path, *args, **kwargs)

    real_scan = dicom._scan_chunk

    def scan(paths):
        Path(vanished).unlink(missing_ok=True)
        return real_scan(paths)

    monkeypatch.setattr(dicom, "open", racing_open, raising=False)
    monkeypatch.setattr(dicom, "_scan_chunk", scan)
    # A file deleted after the scan, before its pixels are read.
    real_scan_dicom = dicom.scan_dicom

    def scan_then_delete(*args, **kwargs):
        out = real_scan_dicom(*args, **kwargs)
        Path(later).unlink()
        return out

    monkeypatch.setattr(dicom, "scan_dicom", scan_then_delete)
    summary = _ct([src], tmp_path)
    assert summary.error is None and summary.slices > 0
    assert Store(tmp_path / "store").verify() == []
    reasons = {e["path"]: e["reason"] for e in _errors(summary)}
    assert reasons[vanished].startswith("unreadable: ") and "No such file" in reasons[vanished]
    assert reasons[locked].startswith("unreadable: ") and "Permission denied" in reasons[locked]
    assert reasons[later].startswith("unreadable: ")
    assert any(p.endswith("gone-dir") and r.startswith("unreadable") for p, r in reasons.items())


# --------------------------------------------------------------------------- kill while finishing

_KILL_AT = r"""
import os, signal, sys
from radengine.data import ingest

target, nth = sys.argv[1], int(sys.argv[2])
seen = []
real = os.replace

def replace(src, dst, *args, **kwargs):
    # SIGKILL just before the nth rename onto `target`: its temporary file stays behind.
    if os.path.basename(dst) == target:
        seen.append(1)
        if len(seen) == nth:
            os.kill(os.getpid(), signal.SIGKILL)
    return real(src, dst, *args, **kwargs)

os.replace = replace
ingest.ingest_ct([sys.argv[3]], sys.argv[4], size=16, workers=1, secret=sys.argv[5],
                 progress=False)
"""


@pytest.mark.parametrize(
    "target, nth",
    [
        ("patient.npy", 1),  # writing the consolidated index
        ("manifest.json", 1),  # writing the consolidated manifest
        ("store.json", 2),  # marking the store finished (the 1st write creates it)
        ("errors.jsonl", 1),  # the ingest's error list, beside the store
        ("000000.json", 1),  # committing the first shard's manifest
    ],
)
def test_kill_while_finishing_then_rerun_equals_an_uninterrupted_ingest(
    archive, tmp_path, target, nth
):
    secret = tmp_path / "secret"
    ref = tmp_path / "ref"
    ingest.ingest_ct([archive], ref, size=16, workers=1, secret=secret, progress=False)
    out = tmp_path / "killed"
    args = [target, str(nth), str(archive), str(out), str(secret)]
    proc = subprocess.run([sys.executable, "-c", _KILL_AT, *args], cwd=Path.cwd())
    assert proc.returncode == -signal.SIGKILL, "the ingest was not killed where planned"
    leftovers = [p for p in [*out.rglob(".*.tmp-*"), *ingest.work_dir(out).glob(".*.tmp-*")]]
    assert leftovers, "a kill before a rename leaves its temporary file"
    if any(p.parent in (out, out / "shards", out / "index") for p in leftovers):
        problems = Store(out, inspect=True).verify()
        assert any("stray file" in p for p in problems), problems

    ingest.ingest_ct([archive], out, size=16, workers=1, secret=secret, progress=False)
    assert tree_bytes(out) == tree_bytes(ref)
    assert tree_bytes(ingest.work_dir(out)) == tree_bytes(ingest.work_dir(ref))
    assert Store(out).info()["bytes"] == Store(ref).info()["bytes"]
    assert Store(out).verify() == []


def test_verify_reports_stray_files(tmp_path):
    w = StoreWriter(tmp_path / "s", "ct", {"image": ArraySpec("int16", (4, 4))}, {})
    w.write_shard(0, *_rows(3))
    store = w.finish()
    (tmp_path / "s" / ".index.npz.tmp-99").write_bytes(b"x")
    (tmp_path / "s" / "shards" / "000007.image.bin").write_bytes(b"x")
    problems = store.verify()
    assert len(problems) == 2 and all("stray file" in p for p in problems)
    StoreWriter(tmp_path / "s", "ct", {"image": ArraySpec("int16", (4, 4))}, {})  # reopen
    assert Store(tmp_path / "s").verify() == []


# --------------------------------------------------------------------------- NaN in the index


def _rows(n: int, nan: bool = False):
    cols = {
        "label": np.zeros(n, np.int64),
        "patient": np.array(["p"] * n),
        "study": np.array(["s"] * n),
        "series": np.array(["x"] * n),
        "region": np.zeros(n, np.int8),
        "lesion": np.full(n, -1, np.int8),
        "slice_position": np.arange(n, dtype=np.float32),
        "pixel_spacing": np.full((n, 2), np.nan if nan else 0.5, np.float32),
        "thickness": np.full(n, np.nan if nan else 1.0, np.float32),
        "kvp": np.full(n, np.nan if nan else 120.0, np.float32),
        "manufacturer": np.array([""] * n),
    }
    return {"image": np.zeros((n, 4, 4), np.int16)}, cols


def test_verify_is_clean_when_index_columns_hold_nan(tmp_path):
    w = StoreWriter(tmp_path / "s", "ct", {"image": ArraySpec("int16", (4, 4))}, {})
    w.write_shard(0, *_rows(3, nan=True))
    w.write_shard(1, *_rows(2, nan=False))
    assert w.finish().verify() == []


def test_verify_is_clean_on_an_ingest_without_kvp_or_thickness(nifti_and_images, tmp_path):
    """NIfTI has no kVp: a real ingest whose index holds NaN."""
    _ct([nifti_and_images / "nii"], tmp_path)
    store = Store(tmp_path / "store")
    assert np.isnan(store.index["kvp"]).all() and store.verify() == []
    assert main(["store", "verify", str(tmp_path / "store")]) == 0


# --------------------------------------------------------------------------- empty stores


def test_an_ingest_of_nothing_leaves_no_store(tmp_path, capsys):
    src = tmp_path / "junk"
    src.mkdir()
    (src / "a.dcm").write_bytes(b"not dicom at all")
    (src / "b.txt").write_text("notes")
    summary = _ct([src], tmp_path)
    assert summary.slices == 0 and "nothing could be ingested" in summary.error
    assert "2 file(s) were skipped" in summary.error and summary.errors_file in summary.error
    assert not (tmp_path / "store").exists()
    assert len(_errors(summary)) == 2  # the reasons stay, beside where the store would be
    with pytest.raises(StoreError, match="does not exist"):
        Store(tmp_path / "store")
    code = main(["ingest", "ct", str(src), "--out", str(tmp_path / "s2"), "--size", "16",
                 "--secret", str(tmp_path / "secret"), "--workers", "1"])  # fmt: skip
    assert code == 2 and not (tmp_path / "s2").exists()
    assert "nothing could be ingested" in capsys.readouterr().err


def test_a_ct_source_of_photos_points_to_ingest_images(nifti_and_images, tmp_path):
    summary = _ct([nifti_and_images / "img"], tmp_path)
    assert summary.slices == 0 and "radengine ingest images" in summary.error
    assert all(e["hint"] == ingest.IMAGES_HINT for e in _errors(summary))


def test_an_image_folder_of_broken_files_leaves_no_store(tmp_path):
    (tmp_path / "f" / "cls").mkdir(parents=True)
    (tmp_path / "f" / "cls" / "x.png").write_bytes(b"not a png")
    summary = ingest.ingest_images(tmp_path / "f", tmp_path / "store", size=8, workers=1,
                                   progress=False)  # fmt: skip
    assert summary.slices == 0 and summary.error and not (tmp_path / "store").exists()


def test_an_empty_store_is_never_finished(tmp_path):
    w = StoreWriter(tmp_path / "s", "ct", {"image": ArraySpec("int16", (4, 4))}, {})
    w.write_shard(0, *_rows(0))
    with pytest.raises(StoreError, match="no slice"):
        w.finish()
    w.discard()
    assert not (tmp_path / "s").exists()


def _unfinished(path: Path) -> Path:
    w = StoreWriter(path, "ct", {"image": ArraySpec("int16", (4, 4))}, {})
    w.write_shard(0, *_rows(2))
    return path


def _empty_finished(path: Path) -> Path:
    """An empty store marked finished, as older radengine versions left them."""
    w = StoreWriter(path, "ct", {"image": ArraySpec("int16", (4, 4))}, {})
    meta = json.loads((path / "store.json").read_text())
    finished = {**meta, "version": 1, "finished": True, "count": 0}
    (path / "store.json").write_text(json.dumps(finished))
    del w
    return path


def _open_with(reader: str, path: Path):
    if reader == "store":
        return Store(path)
    if reader == "loader":
        from radengine.data.loader import StoreLoader

        return StoreLoader(path, batch_size=1)
    if reader == "pretrain":
        from radengine.engine.stages import open_store

        return open_store("ct", str(path), progress=False)
    if reader == "analysis":
        from radengine.analysis.common import open_store

        return open_store(str(path), "ct")
    raise AssertionError(reader)


@pytest.mark.parametrize("reader", ["store", "loader", "pretrain", "analysis"])
@pytest.mark.parametrize(
    "make, message", [(_unfinished, "unfinished"), (_empty_finished, "holds no samples")]
)
def test_every_reader_refuses_an_unfinished_or_empty_store(tmp_path, reader, make, message):
    from radengine.errors import UserError

    path = make(tmp_path / "s")
    with pytest.raises(UserError, match=message):
        _open_with(reader, path)
    assert Store(path, inspect=True).verify()  # inspection still works, and says what is wrong


def test_pretrain_on_an_empty_store_is_a_clean_error(tmp_path, capsys):
    path = _empty_finished(tmp_path / "s")
    code = main(["pretrain", "--data", str(path), "--out", str(tmp_path / "run")])
    assert code == 2
    err = capsys.readouterr().err
    assert "holds no samples" in err and "Traceback" not in err and "KeyError" not in err


# --------------------------------------------------------------------------- the secret


def test_a_bad_source_creates_no_secret(tmp_path, monkeypatch, capsys):
    monkeypatch.delenv("RADENGINE_SECRET", raising=False)
    monkeypatch.setenv("XDG_CONFIG_HOME", str(tmp_path / "config"))
    default = tmp_path / "config" / "radengine" / "secret"
    with pytest.raises(FileNotFoundError, match="no such file"):
        ingest.ingest_ct([tmp_path / "nope"], tmp_path / "store", workers=1, progress=False)
    with pytest.raises(FileNotFoundError, match="file list not found"):
        ingest.ingest_ct(["@" + str(tmp_path / "nope.txt")], tmp_path / "store", workers=1)
    code = main(["ingest", "ct", str(tmp_path / "nope"), "--out", str(tmp_path / "store")])
    assert code == 2 and "no such file" in capsys.readouterr().err
    assert not default.exists() and not (tmp_path / "config").exists()
    assert not (tmp_path / "store").exists()
    # A secret inside the store is refused before it is created, too.
    with pytest.raises(ValueError, match="inside the store"):
        ingest.ingest_ct([tmp_path], tmp_path / "store", secret=tmp_path / "store" / "k")
    assert not (tmp_path / "store").exists()


def test_errors_file_is_the_same_when_the_scans_skipped_entries_spill(
    archive, tmp_path, monkeypatch
):
    """Beyond dicom.SKIPPED_IN_MEMORY the scan's skipped entries go to a temporary file and
    errors.jsonl is streamed: the same file, entry for entry, as when they fit in memory."""
    from radengine.data import dicom

    (archive / "notes").mkdir(exist_ok=True)
    for i in range(5):
        (archive / "notes" / f"n{i}.txt").write_text("not an image")
    try:
        secret = tmp_path / "secret"
        a, b = tmp_path / "a", tmp_path / "b"
        ingest.ingest_ct([archive], a, size=16, workers=1, secret=secret, progress=False)
        monkeypatch.setattr(dicom, "SKIPPED_IN_MEMORY", 2)
        summary = ingest.ingest_ct([archive], b, size=16, workers=1, secret=secret, progress=False)
    finally:
        shutil.rmtree(archive / "notes")
    errors = (ingest.work_dir(a) / "errors.jsonl").read_bytes()
    assert errors == (ingest.work_dir(b) / "errors.jsonl").read_bytes()
    assert summary.skipped == len(errors.splitlines()) >= 5
    assert sum(summary.skipped_by_reason.values()) == summary.skipped
