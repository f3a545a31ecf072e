#!/usr/bin/env python3
"""Set up radengine's development environment and run its main jobs: two commands.

    python3 dev.py quickstart   # .venv + install, pretrain on synthetic CT, linear eval, report
    python3 dev.py test         # .venv + install, what CI runs: info, ruff, pytest

Needs only Python >= 3.10, pip and a C++ compiler. Each command creates ``.venv`` in the
repository root when it is missing, installs torch there (``RADENGINE_TORCH``, default
``torch==2.13.0``, the CPU wheel: a pinned spec, never an unpinned resolve), then
``pip install -e ".[test]" ruff==0.17.6`` (which builds the native modules), and runs the job.
The install is skipped on reruns while nothing it depends on changed (a stamp in ``.venv``
keyed by pyproject.toml, setup.py, csrc/, the torch spec and the build variables).

Standard library only, so that it runs before anything is installed. The environment is
passed through to every step (RADENGINE_SKIP_CUDA, RADENGINE_REQUIRE_CUDA, CUDA_HOME, MAX_JOBS,
MLFLOW_TRACKING_URI, PIP_* ...). Exit status: 0 done, 1 a check of ``test`` failed (ruff or
pytest), 2 anything else failed (what failed and what to do are printed; no traceback).
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import shlex
import shutil
import subprocess
import sys
import sysconfig
import time
from collections.abc import Sequence
from pathlib import Path

ROOT = Path(__file__).resolve().parent
VENV = ROOT / ".venv"
STAMP_NAME = ".radengine-dev-stamp"
DEFAULT_TORCH = "torch==2.13.0"
RUFF = "ruff==0.17.6"  # as in pyproject's dev extra
MIN_PYTHON = (3, 10)
# What the install depends on besides the torch spec: the package metadata and the native
# sources (an editable install compiles csrc/ once; Python files need no reinstall).
STAMP_FILES = ("pyproject.toml", "setup.py")
STAMP_DIRS = ("csrc",)
# Build variables that change what gets built (RADENGINE_SKIP_CUDA and RADENGINE_REQUIRE_CUDA
# are checked against radengine/_build_info.json instead, so that `RADENGINE_REQUIRE_CUDA=1
# dev.py setup` followed by `dev.py test` does not build twice).
STAMP_ENV = ("RADENGINE_CUDA_ARCHS", "CUDA_HOME", "CUDA_PATH")
# The quickstart's evaluations: the mini study's recipes on organ presence, 4 seeds, for the
# new pretraining run and for scratch: a linear probe with every label (where the two are
# level) and finetuning with 1% of them (where pretraining pays: docs/builtin-data.md).
EVAL_ARGS = ("--task", "organs", "--seeds", "42,1,2,3", "input.size=96",
             "input.intensity=minmax", "input.repeat=3")  # fmt: skip
EVALS = (
    ("linear", "with every label", ("linear.epochs=50",)),
    ("finetune", "with 1% of the labels", ("--label-fraction", "0.01", "finetune.epochs=5",
                                           "finetune.batch_size=64")),
)  # fmt: skip

# pip install options that take the next word as their value.
PIP_VALUE_OPTIONS = frozenset((
    "-i", "--index-url", "--extra-index-url", "-f", "--find-links", "-c", "--constraint",
    "-r", "--requirement", "--trusted-host", "--cert", "--client-cert", "--proxy", "--timeout",
    "--retries", "--cache-dir", "--src", "--platform", "--python-version", "--implementation",
    "--abi", "--progress-bar", "-C", "--config-settings", "--only-binary", "--no-binary",
    "--upgrade-strategy", "--root", "--prefix", "--target", "-t",
))  # fmt: skip
TORCH_HELP = (
    "RADENGINE_TORCH is what `pip install` gets for torch, default "
    f"{DEFAULT_TORCH!r} (the CPU wheel). For a GPU, a pinned CUDA build, e.g. "
    "RADENGINE_TORCH='torch==2.13.0 --index-url https://download.pytorch.org/whl/cu130'."
)


class BootstrapError(Exception):
    """A step failed: the message says what, and what to do. Exit status ``code``."""

    def __init__(self, message: str, code: int = 2) -> None:
        super().__init__(message)
        self.code = code


# ---------------------------------------------------------------------------------------------
# What to install


def torch_args(environ: dict[str, str] | os._Environ | None = None) -> list[str]:
    """The pip arguments that install torch, from RADENGINE_TORCH (shell-style words).

    A requirement must pin torch (``==``, ``===`` or ``~=``); a wheel file or URL is taken as
    is; pip options (``--index-url URL``, ``--extra-index-url URL`` ...) may follow. Anything
    else, an unpinned ``torch`` or ``torch>=2.5`` above all, is refused: pip would resolve it
    to the newest CUDA build, several GB.
    """
    env = os.environ if environ is None else environ
    raw = env.get("RADENGINE_TORCH", "").strip()
    if not raw:
        return [DEFAULT_TORCH]
    try:
        words = shlex.split(raw)
    except ValueError as e:
        raise BootstrapError(f"RADENGINE_TORCH={raw!r} does not parse ({e}). {TORCH_HELP}") from e
    targets = []
    requirement_file = False
    words_iter = iter(words)
    for w in words_iter:
        if w.startswith("-"):
            if w in PIP_VALUE_OPTIONS:  # --index-url URL: skip the URL
                requirement_file |= w in ("-r", "--requirement")
                next(words_iter, None)
            continue
        targets.append(w)
    if not targets and not requirement_file:
        raise BootstrapError(f"RADENGINE_TORCH={raw!r} names nothing to install. {TORCH_HELP}")
    for t in targets:
        if t.endswith(".whl") or "://" in t or t.startswith(("/", ".")):
            continue
        name = t
        for op in ("===", "==", "~=", ">=", "<=", "!=", ">", "<", "@", ";", "["):
            name = name.split(op, 1)[0]
        name = name.strip().lower().replace("_", "-")
        pinned = any(op in t for op in ("==", "~=")) and not any(
            op in t for op in (">=", "<", ">", "!=", "*")
        )
        if name == "torch" and not pinned:
            raise BootstrapError(
                f"RADENGINE_TORCH={raw!r} does not pin torch: pip would resolve it to the "
                f"newest build (on Linux a multi-GB CUDA one). Pin a version. {TORCH_HELP}"
            )
    return words


def stamp_key(root: Path, torch: Sequence[str], environ: dict[str, str] | None = None) -> str:
    """A digest of everything the install depends on (see STAMP_FILES, STAMP_DIRS, STAMP_ENV)."""
    env = os.environ if environ is None else environ
    h = hashlib.sha256()

    def add(label: str, data: bytes) -> None:
        h.update(label.encode() + b"\0" + hashlib.sha256(data).digest())

    for name in STAMP_FILES:
        p = root / name
        add(name, p.read_bytes() if p.is_file() else b"<missing>")
    for d in STAMP_DIRS:
        for p in sorted((root / d).rglob("*")):
            if p.is_file() and "__pycache__" not in p.parts:
                add(p.relative_to(root).as_posix(), p.read_bytes())
    add("torch", json.dumps(list(torch)).encode())
    add("ruff", RUFF.encode())
    for name in STAMP_ENV:
        add(name, env.get(name, "").encode())
    return h.hexdigest()


def _truthy(value: str | None) -> bool:
    return (value or "").strip().lower() in {"1", "true", "yes", "on"}


def stale_reason(
    root: Path, venv: Path, key: str, environ: dict[str, str] | None = None
) -> str | None:
    """Why the install must run (again), or None when ``venv`` is up to date for ``key``."""
    env = os.environ if environ is None else environ
    stamp = venv / STAMP_NAME
    if not venv_python(venv).exists():
        return "no .venv yet"
    if not stamp.is_file():
        return "no record of an install by dev.py in .venv yet"
    if stamp.read_text().strip() != key:
        return "pyproject.toml, setup.py, csrc/, RADENGINE_TORCH or a build variable changed"
    info_file = root / "radengine" / "_build_info.json"
    try:
        cuda = json.loads(info_file.read_text()).get("cuda", {})
    except (OSError, ValueError):
        return "the native modules' build record (radengine/_build_info.json) is missing"
    if _truthy(env.get("RADENGINE_REQUIRE_CUDA")) and not cuda.get("built"):
        return "RADENGINE_REQUIRE_CUDA=1 and radengine._cuda was not built"
    if (
        not cuda.get("built")
        and "RADENGINE_SKIP_CUDA" in str(cuda.get("reason", ""))
        and not _truthy(env.get("RADENGINE_SKIP_CUDA"))
    ):
        return "radengine._cuda was skipped (RADENGINE_SKIP_CUDA=1) and is wanted now"
    return None


def venv_python(venv: Path) -> Path:
    if os.name == "nt":
        return venv / "Scripts" / "python.exe"
    return venv / "bin" / "python"


def venv_bin(venv: Path, name: str) -> Path:
    return venv_python(venv).parent / (name + (".exe" if os.name == "nt" else ""))


# ---------------------------------------------------------------------------------------------
# Running steps


def say(text: str) -> None:
    print(text, flush=True)


def _duration(seconds: float) -> str:
    seconds = round(seconds)
    return f"{seconds // 60} min {seconds % 60} s" if seconds >= 60 else f"{seconds} s"


def _env() -> dict[str, str]:
    """The caller's environment, as if .venv were activated (PATH, VIRTUAL_ENV)."""
    env = dict(os.environ)
    env.setdefault("PIP_DISABLE_PIP_VERSION_CHECK", "1")
    env.pop("PYTHONHOME", None)
    env["VIRTUAL_ENV"] = str(VENV)
    env["PATH"] = os.pathsep.join([str(venv_python(VENV).parent), env.get("PATH", "")])
    return env


def _show(arg: str | Path) -> str:
    """An argument as printed: paths inside the repository relative to it (the steps' cwd)."""
    text = str(arg)
    prefix = str(ROOT) + os.sep
    return text[len(prefix) :] if text.startswith(prefix) else text


def run_step(title: str, cmd: Sequence[str], *, dry_run: bool, hint: str, code: int = 2) -> float:
    """Run one step in the repository root, its output going to the terminal.

    Returns the seconds it took; raises BootstrapError (exit ``code``, with ``hint``) when
    the command fails."""
    shown = " ".join(shlex.quote(_show(c)) for c in cmd)
    say(f"==> {title}")
    say(f"    $ {shown}")
    if dry_run:
        return 0.0
    t0 = time.monotonic()
    try:
        rc = subprocess.run([str(c) for c in cmd], cwd=ROOT, env=_env()).returncode
    except OSError as e:
        raise BootstrapError(f"{title}: could not run {cmd[0]} ({e}). {hint}", code) from e
    dt = time.monotonic() - t0
    if rc != 0:
        raise BootstrapError(f"{title} failed (exit {rc}): {shown}\n{hint}", code)
    say(f"    ok ({_duration(dt)})")
    return dt


def _preflight_build() -> None:
    """A C++ compiler and Python's headers, before pip spends minutes finding out."""
    major, minor = sys.version_info[:2]
    cxx = os.environ.get("CXX", "").split()
    if not (cxx and shutil.which(cxx[0])) and not any(
        shutil.which(c) for c in ("c++", "g++", "clang++")
    ):
        raise BootstrapError(
            "no C++ compiler found (c++, g++, clang++ or $CXX): radengine builds a C++17 "
            "module. Debian/Ubuntu: sudo apt-get install build-essential; Fedora: sudo dnf "
            "install gcc-c++; macOS: xcode-select --install."
        )
    include = sysconfig.get_path("include")
    if include and not (Path(include) / "Python.h").is_file():
        raise BootstrapError(
            f"Python's headers are missing ({include}/Python.h): the native module needs "
            f"them. Debian/Ubuntu: sudo apt-get install python{major}.{minor}-dev; Fedora: "
            f"sudo dnf install python{major}.{minor}-devel."
        )


def _system_pip_ok() -> bool:
    """Whether this interpreter's pip can install into another one (pip >= 22.3: --python)."""
    try:
        out = subprocess.run(
            [sys.executable, "-m", "pip", "--version"], capture_output=True, text=True
        )
    except OSError:
        return False
    if out.returncode != 0:
        return False
    try:
        version = tuple(int(x) for x in out.stdout.split()[1].split(".")[:2])
    except (IndexError, ValueError):
        return False
    return version >= (22, 3)


def ensure_venv(venv: Path, *, dry_run: bool) -> Path:
    """``venv`` with pip in it, created when missing; returns its python."""
    py = venv_python(venv)
    major, minor = sys.version_info[:2]
    apt_hint = (
        f"Debian/Ubuntu: sudo apt-get install python{major}.{minor}-venv (or python3-venv), "
        f"then rerun; or remove the half-made {venv.name} first: rm -rf {venv}"
    )
    if py.exists():
        if dry_run:
            say(f"==> {venv.name} exists")
            return py
        ok = subprocess.run([str(py), "-c", "import sys"], capture_output=True).returncode == 0
        if not ok:
            raise BootstrapError(
                f"{py} does not run (made by a Python that is gone?). Remove it and rerun: "
                f"rm -rf {venv}"
            )
        has_pip = (
            subprocess.run([str(py), "-m", "pip", "--version"], capture_output=True).returncode == 0
        )
        if has_pip:
            say(f"==> {venv.name} exists ({_show(py)})")
            return py
    else:
        say(f"==> create {venv.name} (python {major}.{minor}: {sys.executable})")
        if dry_run:
            return py
        made = subprocess.run(
            [sys.executable, "-m", "venv", str(venv)], env=_env(), capture_output=True, text=True
        )
        if made.returncode == 0:
            return py
        # Debian/Ubuntu's python3 lacks ensurepip unless python3-venv is installed: make the
        # venv without pip, then this interpreter's own pip installs pip into it (below).
        say("    no ensurepip here: creating it without pip")
        cmd = [sys.executable, "-m", "venv", "--without-pip", str(venv)]
        if subprocess.run(cmd, env=_env()).returncode != 0 or not py.exists():
            detail = (made.stderr or made.stdout).strip().splitlines()
            raise BootstrapError(
                f"could not create {venv}: {detail[-1] if detail else 'python -m venv failed'}"
                f". {apt_hint}"
            )
    # A venv without pip (no ensurepip here): this interpreter's pip installs pip into it.
    if not _system_pip_ok():
        raise BootstrapError(
            f"{venv} has no pip, this Python has no ensurepip, and its own pip is missing or "
            f"older than 22.3 (pip --python). {apt_hint}"
        )
    run_step(
        f"pip into {venv.name} (this Python has no ensurepip)",
        [sys.executable, "-m", "pip", "--python", str(py), "install", "-q", "pip"],
        dry_run=dry_run,
        hint=apt_hint,
    )
    return py


def setup(*, reinstall: bool = False, dry_run: bool = False) -> Path:
    """Create .venv and install torch + radengine[test] + ruff unless up to date; its python."""
    torch = torch_args()
    key = stamp_key(ROOT, torch)
    reason = "--reinstall" if reinstall else stale_reason(ROOT, VENV, key)
    if reason is None:
        say(f"==> {VENV.name} is up to date (torch: {' '.join(torch)}; --reinstall to redo)")
        return venv_python(VENV)
    say(f"==> set up {VENV.name}: {reason}")
    if not dry_run:
        _preflight_build()
    py = ensure_venv(VENV, dry_run=dry_run)
    stamp = VENV / STAMP_NAME
    if not dry_run:
        stamp.unlink(missing_ok=True)
    pip = [str(py), "-m", "pip", "install", "-q"]
    run_step(
        f"install torch ({' '.join(torch)}; set RADENGINE_TORCH to change)",
        [*pip, *torch],
        dry_run=dry_run,
        hint=f"Check the network or the spec. {TORCH_HELP}",
    )
    run_step(
        "install radengine[test] + ruff, building the native modules (C++; CUDA too when "
        "nvcc is found: a few minutes; RADENGINE_SKIP_CUDA=1 skips it)",
        [*pip, "-e", ".[test]", RUFF],
        dry_run=dry_run,
        hint="The build's error is above. A C++17 compiler is needed; a CUDA compile "
        "error can be bypassed with RADENGINE_SKIP_CUDA=1 (docs/install.md).",
    )
    if not dry_run:
        tmp = stamp.with_suffix(".tmp")
        tmp.write_text(key + "\n")
        tmp.replace(stamp)
    return py


# ---------------------------------------------------------------------------------------------
# The jobs


def quickstart(*, reinstall: bool = False, dry_run: bool = False) -> int:
    t0 = time.monotonic()
    setup(reinstall=reinstall, dry_run=dry_run)
    rad = str(venv_bin(VENV, "radengine"))
    study = time.strftime("quickstart-%Y%m%d-%H%M%S")
    report_dir = Path("runs") / "report" / study
    hint = "Its error is above; `radengine <command> --help` lists the options."
    run_step(
        "pretrain: SimCLR, ResNet-18, on the built-in synthetic CT set (a few minutes on a CPU)",
        [rad, "pretrain", "--domain", "ct"],
        dry_run=dry_run,
        hint=hint,
    )
    for init in (None, "scratch"):
        for protocol, labels, extra in EVALS:
            what = "a random ResNet-18 (the baseline)" if init else "that pretraining run"
            run_step(
                f"{protocol} evaluation of {what} {labels}: organ presence, 4 seeds",
                [rad, "eval", protocol, *(["--init", init] if init else []), *EVAL_ARGS,
                 *extra, f"study={study}"],
                dry_run=dry_run,
                hint=hint,
            )  # fmt: skip
    run_step(
        "transfer table: pretrained vs scratch",
        [rad, "report", "--study", study, "--out", str(report_dir)],
        dry_run=dry_run,
        hint=hint,
    )
    if dry_run:
        say("\n(dry run: nothing was run)")
        return 0
    store = os.environ.get("MLFLOW_TRACKING_URI") or "./mlflow.db"
    venv = os.path.relpath(VENV)
    cd = "" if Path.cwd().resolve() == ROOT else f"cd {shlex.quote(str(ROOT))} && "
    say(
        f"\nDone in {_duration(time.monotonic() - t0)}. The pretraining run (metrics, "
        f"checkpoints, the encoder) and the 16 evaluation runs are in {store}; the table is in "
        f"{report_dir}/ (report.html, report.md, report.csv).\n"
        f"Next, the MLflow UI: {cd}{venv}/bin/radengine ui   (it prints the URL to open)\n"
        f"or activate the venv first: source {venv}/bin/activate && radengine ui"
    )
    return 0


def usable_cores() -> int:
    """The cores this process may run on (its affinity mask; os.cpu_count() off Linux)."""
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:
        return os.cpu_count() or 1


def pytest_parallel() -> list[str]:
    """pytest-xdist workers, one per usable core up to 4 (`dev.py test -n 0` turns them off,
    e.g. for --pdb: pytest takes the last -n), and the 15 slowest tests listed at the end."""
    workers = min(4, usable_cores())
    return [*(["-n", str(workers)] if workers > 1 else []), "--durations=15"]


def test(pytest_args: Sequence[str], *, reinstall: bool = False, dry_run: bool = False) -> int:
    """What CI runs: radengine info, ruff check, ruff format --check, python -m pytest -q."""
    t0 = time.monotonic()
    py = str(setup(reinstall=reinstall, dry_run=dry_run))
    run_step(
        "radengine info",
        [str(venv_bin(VENV, "radengine")), "info"],
        dry_run=dry_run,
        hint="radengine does not run in .venv: `python3 dev.py setup --reinstall`.",
    )
    ruff = str(venv_bin(VENV, "ruff"))
    checks = [
        ("ruff check", [ruff, "check", "."], f"{ruff} check --fix . fixes most"),
        ("ruff format --check", [ruff, "format", "--check", "."], f"{ruff} format . fixes it"),
        (
            "pytest",
            [py, "-m", "pytest", "-q", *pytest_parallel(), *pytest_args],
            "the failures are listed above",
        ),
    ]
    failed = []
    for title, cmd, fix in checks:
        try:
            run_step(title, cmd, dry_run=dry_run, hint=fix, code=1)
        except BootstrapError as e:
            say(f"    FAILED: {e}")
            failed.append(f"{title} ({fix})")
    if dry_run:
        say("\n(dry run: nothing was run)")
        return 0
    took = _duration(time.monotonic() - t0)
    if failed:
        raise BootstrapError(f"failed after {took}: " + "; ".join(failed), code=1)
    say(f"\nAll checks passed in {took}: radengine info, ruff check, ruff format, pytest.")
    return 0


# ---------------------------------------------------------------------------------------------
# Command line


def _parser() -> argparse.ArgumentParser:
    common = argparse.ArgumentParser(add_help=False)
    common.add_argument(
        "--reinstall", action="store_true", help="install again even if .venv is up to date"
    )
    common.add_argument(
        "--dry-run", action="store_true", help="print the steps without running anything"
    )
    parser = argparse.ArgumentParser(
        prog="dev.py",
        description="Set up .venv (torch, radengine[test], ruff) and run a job. Needs Python "
        ">= 3.10, pip and a C++ compiler; installs are skipped when .venv is up to date.",
        epilog=f"{TORCH_HELP} Build variables (RADENGINE_SKIP_CUDA, RADENGINE_REQUIRE_CUDA, "
        "RADENGINE_CUDA_ARCHS, CUDA_HOME, MAX_JOBS) pass through: docs/install.md.",
    )
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    sub.add_parser(
        "quickstart",
        parents=[common],
        help="pretrain on synthetic CT, evaluate it against scratch, the report",
        description="Set up, then: radengine pretrain --domain ct; radengine eval linear "
        f"{' '.join(EVAL_ARGS)} {' '.join(EVALS[0][2])} and radengine eval finetune "
        f"{' '.join(EVAL_ARGS)} {' '.join(EVALS[1][2])}, for that run and with --init scratch; "
        "radengine report. "
        "Everything is logged to ./mlflow.db (MLFLOW_TRACKING_URI overrides); `radengine ui` "
        "shows it.",
    )
    sub.add_parser(
        "test",
        parents=[common],
        usage="dev.py test [-h] [--reinstall] [--dry-run] [PYTEST ARGUMENTS ...]",
        help="what CI runs: radengine info, ruff check, ruff format --check, pytest -q",
        description="Set up, then radengine info, ruff check ., ruff format --check ., "
        "python -m pytest -q. Other arguments go to pytest, in order (e.g. tests/eval -x -k "
        "linear; after -- for pytest's own -h). Exit 1 when a check fails.",
    )
    sub.add_parser(
        "setup",
        parents=[common],
        help="only create .venv and install",
        description="Create .venv and install torch (RADENGINE_TORCH), radengine[test] and "
        "ruff, unless already done for this pyproject.toml, setup.py, csrc/ and torch spec.",
    )
    return parser


OWN_OPTIONS = ("--reinstall", "--dry-run", "-h", "--help")


def split_test_args(argv: Sequence[str]) -> tuple[list[str], list[str]]:
    """``dev.py test ...``: (dev.py's arguments, pytest's), pytest's in their order.

    After ``test``, dev.py keeps its own options (--reinstall, --dry-run, -h); the rest, and
    everything after ``--``, goes to pytest."""
    argv = list(argv)
    if "test" not in argv:
        return argv, []
    i = argv.index("test")
    if not all(a.startswith("-") for a in argv[:i]):
        return argv, []  # `test` is not the command here
    own, passed = argv[: i + 1], []
    rest = argv[i + 1 :]
    for j, a in enumerate(rest):
        if a == "--":
            passed.extend(rest[j + 1 :])
            break
        (own if a in OWN_OPTIONS else passed).append(a)
    return own, passed


def main(argv: Sequence[str] | None = None) -> int:
    if sys.version_info < MIN_PYTHON:
        say_err(
            f"dev.py: radengine needs Python >= {MIN_PYTHON[0]}.{MIN_PYTHON[1]}; this is "
            f"{sys.version.split()[0]} ({sys.executable}). Run dev.py with a newer python3."
        )
        return 2
    own, pytest_args = split_test_args(sys.argv[1:] if argv is None else argv)
    parser = _parser()
    args = parser.parse_args(own)
    if args.command is None:
        parser.print_usage(sys.stderr)
        say_err("dev.py: name a command: quickstart, test or setup (dev.py --help)")
        return 2
    try:
        if args.command == "quickstart":
            return quickstart(reinstall=args.reinstall, dry_run=args.dry_run)
        if args.command == "test":
            return test(pytest_args, reinstall=args.reinstall, dry_run=args.dry_run)
        setup(reinstall=args.reinstall, dry_run=args.dry_run)
        return 0
    except BootstrapError as e:
        say_err(f"\ndev.py {args.command}: {e}")
        return e.code
    except KeyboardInterrupt:
        say_err(f"\ndev.py {args.command}: interrupted")
        return 130


def say_err(text: str) -> None:
    print(text, file=sys.stderr, flush=True)


if __name__ == "__main__":
    sys.exit(main())
