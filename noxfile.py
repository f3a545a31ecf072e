"""nox sessions: `nox` (lint + tests), `nox -s bench`.

Sessions see the interpreter's site-packages so an installed torch (CPU or CUDA) is reused;
where there is none, RADENGINE_TORCH (default torch==2.13.0, the CPU wheel) is installed
before radengine, so nothing ever resolves an unpinned torch to a multi-GB CUDA build.
"""

from __future__ import annotations

import os
from pathlib import Path

import nox

nox.options.sessions = ["lint", "tests"]
nox.options.reuse_existing_virtualenvs = True

ROOT = Path(__file__).resolve().parent
VENV = ["--system-site-packages"]


def _install_radengine(session: nox.Session, extras: str) -> None:
    has_torch = session.run(
        "python", "-c", "import importlib.util as u; print(u.find_spec('torch') is not None)",
        silent=True,
    ).strip().endswith("True")  # fmt: skip
    if not has_torch:
        session.install(os.environ.get("RADENGINE_TORCH", "torch==2.13.0"))
    session.install("-e", f".[{extras}]")


@nox.session(venv_params=VENV)
def tests(session: nox.Session) -> None:
    """The README's test command: python -m pytest."""
    _install_radengine(session, "test")
    session.run("python", "-m", "pytest", *session.posargs)


@nox.session
def lint(session: nox.Session) -> None:
    """ruff check + ruff format --check."""
    session.install("ruff==0.17.6")
    session.run("ruff", "check", ".")
    session.run("ruff", "format", "--check", ".")


@nox.session(venv_params=VENV)
def bench(session: nox.Session) -> None:
    """Every benchmarks/bench_*.py; arguments after `--` go to each script.

    bench_pipeline.py (end-to-end pretraining, radengine against the study-style baseline)
    trains for a few minutes on a CPU; it runs last, after the per-op benchmarks."""
    _install_radengine(session, "triton,dicom,images")
    scripts = sorted((ROOT / "benchmarks").glob("bench_*.py"))
    pipeline = ROOT / "benchmarks" / "bench_pipeline.py"
    for script in [s for s in scripts if s != pipeline] + [pipeline]:
        session.run("python", str(script), *session.posargs)
