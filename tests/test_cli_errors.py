"""Every subcommand's expected errors end the same way: exit 2, an ``error:`` line naming the
file, key or option at fault, and no traceback (issue #12).

The table :data:`CASES` lists, per subcommand, its error paths: missing paths, an empty
folder or a foreign folder given as a store, a store made with other settings, an unfinished
store, config typos and bad YAML, a bad ``--init``, a busy port, output paths that cannot be
written. :func:`test_every_subcommand_has_error_cases` fails when a subcommand is added to
the parser without rows here. Everything runs in-process through ``radengine.cli.main``
(a bug raises out of it and fails the test with its traceback); nothing trains longer than a
few steps (~1 min in all on 2 cores).
"""

from __future__ import annotations

import argparse
import errno
import os
import socket
import sys
from collections.abc import Iterator
from dataclasses import dataclass

import pytest
import torch

from radengine.cli import build_parser, main
from radengine.data.builtin import write_synthetic_ct_store
from radengine.data.store import ArraySpec, StoreWriter

# Pretraining settings small enough for a few steps on a CPU (as tests/engine/test_pretrain_cli).
TINY = [
    "augment.size=32",
    "optim.batch_size=16",
    "optim.epochs=1",
    "data.workers=0",
    "train.progress=false",
    "train.checkpoint_every=2",
]

# Subcommands that take nothing from the user that could be wrong.
NO_INPUT = {"info": "reads only the installation", "study list": "lists the shipped studies"}


@dataclass(frozen=True)
class Case:
    """One error path: ``argv`` (``{name}`` placeholders filled from the ``paths`` fixture),
    and what stderr must contain."""

    command: str  # the parser's subcommand path, e.g. "eval knn"
    what: str
    argv: tuple[str, ...]
    expect: tuple[str, ...]
    # make os.mkdir fail with this errno under paths["ro"] (a read-only or forbidden folder:
    # chmod does not stop root, who runs the tests)
    mkdir_errno: int | None = None


def _case(command: str, what: str, argv: str, *expect: str, mkdir_errno: int | None = None):
    return Case(command, what, tuple(argv.split()), expect, mkdir_errno)


SMALL = {"ct": "--patients 2 --slices 2 --size 32", "natural": "--images 8 --classes 2 --size 32"}
EVAL = ("knn", "linear", "finetune", "segment")
TRACKING_NONE = "--tracking none"

CASES: list[Case] = [
    # ------------------------------------------------------------------ synth
    *[
        c
        for domain in ("ct", "natural")
        for c in (
            _case(
                f"synth {domain}",
                "out under a file",
                f"synth {domain} {SMALL[domain]} --out {{file}}/s",
                "{file}/s",
                "not a folder",
            ),
            _case(
                f"synth {domain}",
                "out read-only",
                f"synth {domain} {SMALL[domain]} --out {{ro}}/s",
                "{ro}/s",
                "read-only",
                mkdir_errno=errno.EROFS,
            ),
            _case(
                f"synth {domain}",
                "out forbidden",
                f"synth {domain} {SMALL[domain]} --out {{ro}}/s",
                "{ro}/s",
                "permission denied",
                mkdir_errno=errno.EACCES,
            ),
        )
    ],
    _case(
        "synth ct",
        "store made with other settings",
        "synth ct --out {store} --patients 1 --slices 2 --size 64",
        "{store}/store.json",
        "other settings",
    ),
    _case(
        "synth natural",
        "a CT store as out",
        "synth natural --images 8 --classes 2 --size 32 --out {store}",
        "{store}/store.json",
        "other settings",
    ),
    _case("synth ct", "size too small", "synth ct --out {tmp}/s --size 4", "--size"),
    _case(
        "synth ct",
        "DICOM with too few slices",
        "synth ct --dicom --slices 2 --patients 1 --out {tmp}/d",
        "--slices 2",
    ),
    _case("synth natural", "one class", "synth natural --out {tmp}/n --classes 1", "--classes"),
    # ------------------------------------------------------------------ ingest
    _case("ingest ct", "missing source", "ingest ct {missing} --out {tmp}/o", "{missing}"),
    _case("ingest ct", "missing @list", "ingest ct @{missing} --out {tmp}/o", "{missing}"),
    _case("ingest ct", "out under a file", "ingest ct {empty} --out {file}/o", "{file}/o"),
    _case("ingest ct", "size too small", "ingest ct {empty} --out {tmp}/o --size 4", "--size"),
    _case(
        "ingest ct",
        "store made with other settings",
        "ingest ct {dicom} --out {store} --workers 1",
        "{store}",
        "other settings",
    ),
    _case("ingest images", "missing source", "ingest images {missing} --out {tmp}/o", "{missing}"),
    _case(
        "ingest images",
        "folder without classes",
        "ingest images {empty} --out {tmp}/o",
        "{empty}",
        "class",
    ),
    _case("ingest images", "out under a file", "ingest images {images} --out {file}/o", "{file}/o"),
    _case(
        "ingest images",
        "store made with other settings",
        "ingest images {images} --out {store} --workers 1",
        "{store}",
        "other settings",
    ),
    _case(
        "ingest images",
        "out read-only",
        "ingest images {images} --out {ro}/o --workers 1",
        "{ro}/o",
        "read-only",
        mkdir_errno=errno.EROFS,
    ),
    # ------------------------------------------------------------------ store
    *[
        c
        for action in ("info", "verify", "upgrade")
        for c in (
            _case(f"store {action}", "missing", f"store {action} {{missing}}", "{missing}"),
            _case(f"store {action}", "empty folder", f"store {action} {{empty}}", "{empty}"),
            _case(f"store {action}", "foreign folder", f"store {action} {{foreign}}", "{foreign}"),
            _case(f"store {action}", "a file", f"store {action} {{file}}", "{file}"),
        )
    ],
    # ------------------------------------------------------------------ pretrain
    _case("pretrain", "missing store", "pretrain --tracking none --data {missing}", "{missing}"),
    _case(
        "pretrain", "empty folder as store", "pretrain --tracking none --data {empty}", "{empty}"
    ),
    _case(
        "pretrain",
        "foreign folder as store",
        "pretrain --tracking none --data {foreign}",
        "{foreign}",
    ),
    _case(
        "pretrain",
        "unfinished store",
        "pretrain --tracking none --data {unfinished}",
        "{unfinished}",
        "unfinished",
    ),
    _case(
        "pretrain", "store without samples", "pretrain --tracking none --data {hollow}", "{hollow}"
    ),
    _case(
        "pretrain",
        "config key typo",
        "pretrain --tracking none optim.epoch=3",
        "optim.epoch",
        "optim.epochs",
    ),
    _case("pretrain", "bad value", "pretrain --tracking none optim.epochs=many", "optim.epochs"),
    _case(
        "pretrain",
        "print-config with a key typo",
        "pretrain --print-config optim.epoch=3",
        "optim.epoch",
        "optim.epochs",
    ),
    _case(
        "pretrain",
        "print-config with a bad value",
        "pretrain --print-config optim.epochs=0",
        "optim.epochs",
    ),
    _case("pretrain", "bad YAML", "pretrain --tracking none --config {bad_yaml}", "{bad_yaml}"),
    _case(
        "pretrain",
        "missing YAML",
        "pretrain --tracking none --config {missing}.yaml",
        "{missing}.yaml",
    ),
    _case("pretrain", "missing resume", "pretrain --tracking none --resume {missing}", "{missing}"),
    _case(
        "pretrain",
        "out under a file",
        "pretrain --tracking none --data {store} --out {file}/run " + " ".join(TINY),
        "{file}/run",
    ),
    _case(
        "pretrain",
        "out forbidden",
        "pretrain --tracking none --data {store} --out {ro}/run " + " ".join(TINY),
        "{ro}/run",
        "permission denied",
        mkdir_errno=errno.EACCES,
    ),
    _case(
        "pretrain",
        "unknown arch",
        "pretrain --tracking none --data {store} model.arch=resnet9 " + " ".join(TINY),
        "model.arch",
        "resnet9",
    ),
    _case(
        "pretrain",
        "unknown device",
        "pretrain --tracking none --data {store} --device tpu " + " ".join(TINY),
        "tpu",
    ),
    pytest.param(
        _case(
            "pretrain",
            "cuda without a GPU",
            "pretrain --tracking none --data {store} --device cuda " + " ".join(TINY),
            "cuda",
        ),
        marks=pytest.mark.skipif(torch.cuda.is_available(), reason="a GPU is present"),
    ),
    # ------------------------------------------------------------------ bench
    _case("bench", "missing store", "bench pipeline --data {missing}", "{missing}"),
    _case("bench", "foreign folder as store", "bench pipeline --data {foreign}", "{foreign}"),
    _case("bench", "steps 0", "bench pipeline --steps 0", "--steps"),
    pytest.param(
        _case("bench", "cuda without a GPU", "bench pipeline --device cuda", "cuda"),
        marks=pytest.mark.skipif(torch.cuda.is_available(), reason="a GPU is present"),
    ),
    # ------------------------------------------------------------------ eval
    *[
        c
        for p in EVAL
        for c in (
            _case(
                f"eval {p}",
                "missing store",
                f"eval {p} {TRACKING_NONE} --init scratch --data {{missing}}",
                "{missing}",
            ),
            _case(
                f"eval {p}",
                "empty folder as store",
                f"eval {p} {TRACKING_NONE} --init scratch --data {{empty}}",
                "{empty}",
            ),
            _case(
                f"eval {p}",
                "foreign folder as store",
                f"eval {p} {TRACKING_NONE} --init scratch --data {{foreign}}",
                "{foreign}",
            ),
            _case(
                f"eval {p}",
                "unfinished store",
                f"eval {p} {TRACKING_NONE} --init scratch --data {{unfinished}}",
                "{unfinished}",
            ),
            _case(
                f"eval {p}",
                "config key typo",
                f"eval {p} {TRACKING_NONE} --init scratch --data {{store}} {p}.epochz=3",
                f"{p}.epochz",
            ),
            _case(
                f"eval {p}",
                "print-config with a key typo",
                f"eval {p} --print-config {p}.epochz=3",
                f"{p}.epochz",
            ),
            _case(
                f"eval {p}",
                "bad YAML",
                f"eval {p} {TRACKING_NONE} --config {{bad_yaml}}",
                "{bad_yaml}",
            ),
            _case(
                f"eval {p}",
                "missing init",
                f"eval {p} {TRACKING_NONE} --data {{store}} --init {{missing}}.pt",
                "--init",
                "{missing}.pt",
            ),
            _case(
                f"eval {p}",
                "unknown run id as init",
                f"eval {p} --tracking sqlite:///{{tmp}}/none.db --data {{store}} "
                "--init 0123456789abcdef0123456789abcdef",
                "--init",
                "0123456789abcdef0123456789abcdef",
            ),
            _case(
                f"eval {p}",
                "garbage checkpoint as init",
                f"eval {p} {TRACKING_NONE} --data {{store}} --init {{garbage}}",
                "{garbage}",
            ),
            _case(
                f"eval {p}",
                "out under a file",
                f"eval {p} {TRACKING_NONE} --init scratch --data {{store}} --out {{file}}/e",
                "{file}/e",
            ),
        )
    ],
    # ------------------------------------------------------------------ weights
    _case(
        "weights import",
        "missing file",
        "weights import {missing}.pt --tracking sqlite:///{tmp}/w.db",
        "{missing}.pt",
    ),
    _case(
        "weights import",
        "garbage file",
        "weights import {garbage} --tracking sqlite:///{tmp}/w.db",
        "{garbage}",
    ),
    _case(
        "weights import",
        "folder",
        "weights import {empty} --tracking sqlite:///{tmp}/w.db",
        "{empty}",
    ),
    # ------------------------------------------------------------------ report
    _case("report", "missing results", "report --tracking none --results {missing}", "{missing}"),
    _case("report", "empty results", "report --tracking none --results {empty}", "{empty}"),
    _case("report", "foreign results", "report --tracking none --results {foreign}", "{foreign}"),
    _case("report", "results is a file", "report --tracking none --results {file}", "{file}"),
    # ------------------------------------------------------------------ analyze
    _case(
        "analyze cka",
        "missing init",
        "analyze cka --tracking none --data {store} --a scratch --b {missing}.pt",
        "{missing}.pt",
    ),
    _case(
        "analyze cka",
        "foreign folder as store",
        "analyze cka --tracking none --data {foreign} --a scratch --b scratch",
        "{foreign}",
    ),
    _case(
        "analyze cka",
        "unknown layer",
        "analyze cka --tracking none --data {store} --a scratch --b scratch --samples 8 "
        "--size 32 --layers nope",
        "nope",
    ),
    _case(
        "analyze cka",
        "out under a file",
        "analyze cka --tracking none --data {store} --a scratch --b scratch --samples 8 "
        "--size 32 --out {file}/a",
        "{file}/a",
    ),
    _case(
        "analyze domain",
        "missing CT store",
        "analyze domain --tracking none --init scratch --ct {missing}",
        "{missing}",
    ),
    _case(
        "analyze domain",
        "empty natural store",
        "analyze domain --tracking none --init scratch --ct {store} --natural {empty}",
        "{empty}",
    ),
    _case(
        "analyze embed",
        "foreign folder as store",
        "analyze embed --tracking none --init scratch --data {foreign}",
        "{foreign}",
    ),
    _case(
        "analyze embed",
        "missing init",
        "analyze embed --tracking none --init {missing}.pt --data {store}",
        "{missing}.pt",
    ),
    # ------------------------------------------------------------------ list
    _case(
        "list",
        "unknown kind",
        "list nope",
        "'nope'",
        "methods, archs, presets, windows, tasks, configs",
    ),
    _case("list", "kind typo", "list method", "'method'", "did you mean 'methods'?"),
    _case("list", "unknown option", "list --jsn", "--jsn"),
    # ------------------------------------------------------------------ study
    _case("study run", "missing spec", "study run {missing}.yaml --dry-run", "{missing}.yaml"),
    _case("study run", "bad YAML", "study run {bad_yaml} --dry-run", "{bad_yaml}"),
    _case(
        "study run",
        "spec key typo",
        "study run mini --dry-run evals.0.protocol=knn",
        "evals[0].protocol",
        "evals[0].protocols",
    ),
    _case(
        "study run",
        "store name typo",
        "study run mini --dry-run stores.cct={store}",
        "stores.cct",
        "stores.ct",
    ),
    _case(
        "study run",
        "required store not given",
        "study run study_a --tracking none",
        "stores.ct=PATH",
    ),
    _case(
        "study run",
        "missing store",
        "study run study_b --tracking none stores.medical={missing}",
        "{missing}",
    ),
    _case(
        "study run",
        "foreign folder as store",
        "study run study_b --tracking none stores.medical={foreign}",
        "{foreign}",
    ),
    _case(
        "study run", "out under a file", "study run mini --tracking none --out {file}/s", "{file}/s"
    ),
    _case("study status", "missing spec", "study status {missing}.yaml", "{missing}.yaml"),
    _case("study status", "spec key typo", "study status mini evals.0.seed=1", "evals[0].seeds"),
    _case("selftest", "no such GPU", "selftest --device cuda:99", "--device cuda:99"),
    _case("selftest", "unknown device", "selftest --device tpu", "--device 'tpu'"),
    _case("selftest", "unknown check", "selftest --only nope", "--only nope", "hu_window"),
    _case("ui", "port in use", "ui --port {busy_port}", "{busy_port}", "--port"),
    _case("ui", "port out of range", "ui --port 70000", "--port 70000"),
    _case("ui", "unknown host", "ui --host no-such-host.invalid", "--host no-such-host.invalid"),
]


def _case_of(c: Case | object) -> Case:
    return c.values[0] if hasattr(c, "values") else c  # type: ignore[attr-defined]


def _leaf_commands(parser: argparse.ArgumentParser, prefix: tuple[str, ...] = ()) -> Iterator[str]:
    for action in parser._actions:
        if isinstance(action, argparse._SubParsersAction):
            for name, sub in action.choices.items():
                yield from _leaf_commands(sub, (*prefix, name))
            return
    yield " ".join(prefix)


def test_every_subcommand_has_error_cases():
    """A subcommand added to the parser needs its error paths in CASES (or NO_INPUT)."""
    commands = set(_leaf_commands(build_parser()))
    covered = {_case_of(c).command for c in CASES}
    assert commands - covered - set(NO_INPUT) == set(), "subcommands without error cases"
    assert covered - commands == set(), "cases for subcommands that do not exist"


@pytest.fixture(scope="module")
def paths(tmp_path_factory) -> Iterator[dict[str, str]]:
    """Folders and files the cases point at, and a port something listens on."""
    root = tmp_path_factory.mktemp("cli-errors")
    (root / "afile").write_text("a regular file, not a folder\n")
    (root / "empty").mkdir()
    (root / "foreign").mkdir()
    (root / "foreign" / "notes.txt").write_text("someone else's folder\n")
    (root / "bad.yaml").write_text("optim: [1, 2\n")
    (root / "garbage.pt").write_bytes(bytes(range(256)) * 4)
    write_synthetic_ct_store(root / "store", patients=10, slices=2, size=32)
    # an unfinished store (ingest killed before any shard) and a finished one with no samples
    arrays = {"image": ArraySpec("int16", (32, 32))}
    StoreWriter(root / "unfinished", "ct", arrays, {"classes": ["a"]})
    hollow = StoreWriter(root / "hollow", "ct", arrays, {"classes": ["a"]})
    _finish_empty(hollow)
    # a one-class ImageFolder and a one-series DICOM folder, valid inputs for ingest
    from PIL import Image

    (root / "images" / "cat").mkdir(parents=True)
    for i in range(2):
        Image.new("RGB", (16, 16), (i * 50, 0, 0)).save(root / "images" / "cat" / f"{i}.png")
    from radengine.data.dicom_synth import write_synthetic_dicom

    write_synthetic_dicom(root / "dicom", 1, 2, 32, 0, ["plain"])
    (root / "ro").mkdir()
    with socket.socket() as busy:
        busy.bind(("127.0.0.1", 0))
        busy.listen()
        yield {
            "tmp": str(root),
            "file": str(root / "afile"),
            "empty": str(root / "empty"),
            "foreign": str(root / "foreign"),
            "missing": str(root / "no-such-thing"),
            "bad_yaml": str(root / "bad.yaml"),
            "garbage": str(root / "garbage.pt"),
            "store": str(root / "store"),
            "unfinished": str(root / "unfinished"),
            "hollow": str(root / "hollow"),
            "images": str(root / "images"),
            "dicom": str(root / "dicom"),
            "ro": str(root / "ro"),
            "busy_port": str(busy.getsockname()[1]),
        }


def _finish_empty(writer: StoreWriter) -> None:
    """Mark a store with no shard finished, as a writer that finds nothing usable would."""
    import json

    meta_path = writer.path / "store.json"
    meta = json.loads(meta_path.read_text())
    meta["finished"] = True
    meta_path.write_text(json.dumps(meta))


def _forbid_mkdir(monkeypatch, under: str, code: int) -> None:
    """os.mkdir under ``under`` fails with ``code`` (EROFS, EACCES), as on a read-only or
    forbidden folder; elsewhere it works."""
    real = os.mkdir

    def mkdir(path, *args, **kwargs):
        if os.path.abspath(os.fspath(path)).startswith(under + os.sep):
            raise OSError(code, os.strerror(code), os.fspath(path))
        return real(path, *args, **kwargs)

    monkeypatch.setattr(os, "mkdir", mkdir)


def run_cli(argv: list[str], capsys) -> tuple[int, str]:
    """``radengine ARGV`` in-process -> (exit code, stderr). A bug's exception propagates."""
    try:
        code = main(argv)
    except SystemExit as exc:  # argparse's usage errors
        code = exc.code
    return code, capsys.readouterr().err


@pytest.fixture
def quiet_env(monkeypatch, tmp_path):
    """Run where nothing leaks into the repository: cwd, MLflow store, the secret."""
    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("MLFLOW_TRACKING_URI", f"sqlite:///{tmp_path / 'mlflow.db'}")
    monkeypatch.setenv("RADENGINE_SECRET", str(tmp_path / "secret"))
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield tmp_path
    torch.set_num_threads(before)


@pytest.mark.parametrize(
    "case",
    CASES,
    ids=[f"{_case_of(c).command}: {_case_of(c).what}" for c in CASES],
)
def test_error_exits_2_with_a_message_and_no_traceback(case, paths, capsys, monkeypatch, quiet_env):
    argv = [a.format(**paths) for a in case.argv]
    if case.mkdir_errno is not None:
        _forbid_mkdir(monkeypatch, paths["ro"], case.mkdir_errno)
    code, err = run_cli(argv, capsys)
    assert "Traceback" not in err, err
    assert code == 2, f"exit {code}, stderr:\n{err}"
    assert "error:" in err, err
    for text in case.expect:
        assert text.format(**paths) in err, f"{text.format(**paths)!r} not in:\n{err}"


def _full_disk_fsync(real_fsync):
    """``os.fsync`` once the disk fills up, between the run folder's first files and its
    first checkpoint: fsync of a file under checkpoints/ fails with ENOSPC (its data did not
    reach the disk); every other fsync is the real one. Patched on ``os`` itself, so it
    holds whichever module does the write."""

    def fsync(fd: int) -> None:
        if f"{os.sep}checkpoints{os.sep}" in os.readlink(f"/proc/self/fd/{fd}"):
            raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))
        real_fsync(fd)

    return fsync


@pytest.mark.skipif(not os.path.isdir("/proc/self/fd"), reason="needs Linux's /proc")
def test_full_disk_while_checkpointing(paths, capsys, monkeypatch, quiet_env):
    """A checkpoint that cannot be written ends the run with exit 2 and a message naming
    the checkpoint, the full disk and --resume; no traceback (a few steps, ~10 s)."""
    monkeypatch.setattr(os, "fsync", _full_disk_fsync(os.fsync))
    out = quiet_env / "run"
    argv = ["pretrain", "--tracking", "none", "--data", paths["store"], "--out", str(out)]
    code, err = run_cli([*argv, *TINY, "train.max_steps=4"], capsys)
    assert "Traceback" not in err, err
    assert code == 2, f"exit {code}, stderr:\n{err}"
    assert "no space left" in err and str(out / "checkpoints") in err, err
    assert "--resume" in err, err
    assert not [p for p in (out / "checkpoints").glob("*") if ".tmp" in p.name]


def _raiser(exc: BaseException):
    def func(args: argparse.Namespace) -> int:
        raise exc

    return func


@pytest.mark.parametrize(
    "exc, message",
    [
        (FileNotFoundError("/data/x: no such file or directory"), "/data/x: no such file"),
        (NotADirectoryError("/data/f: not a directory"), "/data/f: not a directory"),
        (
            OSError(errno.ENOSPC, "No space left on device", "/runs/a/step-1.pt"),
            "/runs/a/step-1.pt: no space left on the device (free space there",
        ),
        (
            PermissionError(errno.EACCES, "Permission denied", "/srv/out"),
            "/srv/out: permission denied (choose a folder you can write to",
        ),
        (OSError(errno.EADDRINUSE, "Address already in use"), "address already in use"),
    ],
)
def test_environment_os_errors_are_messages(exc, message, capsys):
    """An OSError about the user's machine, with an errno or only a message: exit 2."""
    from radengine.cli import run_command

    assert run_command(_raiser(exc), argparse.Namespace()) == 2
    err = capsys.readouterr().err
    assert err.startswith("error: ") and message in err and "Traceback" not in err


def test_bugs_keep_their_traceback_and_ctrl_c_is_130(capsys):
    from radengine.cli import run_command

    for bug in (ValueError("a bug"), KeyError("k"), OSError(errno.EBADF, "Bad file descriptor")):
        with pytest.raises(type(bug)):
            run_command(_raiser(bug), argparse.Namespace())
    assert run_command(_raiser(KeyboardInterrupt()), argparse.Namespace()) == 130
    assert "interrupted" in capsys.readouterr().err


@pytest.mark.parametrize("args", [["info"], ["list"], ["study", "list"]])
def test_a_reader_that_stops_early_gets_no_traceback(args):
    """`radengine info | head -1`: the closed pipe ends the command quietly (any command
    that prints more than the reader takes), not with a BrokenPipeError traceback."""
    import subprocess

    cmd = [sys.executable, "-m", "radengine.cli", *args]
    proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    proc.stdout.close()  # the reader is gone before the command writes (it imports first)
    err = proc.stderr.read().decode()
    assert proc.wait(timeout=60) == 141, err
    assert "Traceback" not in err and "BrokenPipe" not in err, err
