"""The whole GPU check in one command (`nox -s gpu` runs it): build, selftest, the CUDA and
Triton op tests, the GPU benchmarks, and a summary against the performance targets.

    python benchmarks/gpu_check.py --device cuda --build    # on the GPU machine (no network)
    python benchmarks/gpu_check.py --device cpu             # the same steps, tiny sizes

Steps, each a subprocess with a time budget (cut further to what is left of --budget; a
step with too little time left is skipped and its targets read NOT MEASURED):

1. build (--build): ``pip install --no-build-isolation --no-deps -e .`` into the running
   virtual environment (no network: nothing is resolved), for this GPU's architecture only
   (RADENGINE_CUDA_ARCHS from torch.cuda.get_device_capability). Outside a virtual
   environment it first makes one that sees the system's site-packages (build/gpu-venv)
   and reruns itself there.
2. ``radengine selftest --device cuda`` (every op x backend against its reference).
3. ``pytest tests/ops/ -k "cuda or triton"``.
4. benchmarks: bench_hu_window.py, bench_augment.py, bench_contrastive_loss.py (N = 8192
   against eager and torch.compile; N = 65536 ours only, for peak memory) and
   ``radengine bench pipeline`` (ResNet-50, 224 px, batch 256, ours only: img/s and the
   data-wait fraction), each appending rows to benchmarks/results/<device>.csv (--csv).
5. the targets (benchmarks/gpu_summary.py) from the rows this run appended.

Exit 0 when every step ran and passed and no target failed; 1 otherwise. --report writes
the steps and targets as JSON.
"""

from __future__ import annotations

import argparse
import contextlib
import importlib.util
import json
import os
import re
import shlex
import signal
import subprocess
import sys
import threading
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path

HERE = Path(__file__).resolve().parent
ROOT = HERE.parent
sys.path.insert(0, str(HERE))
import gpu_summary  # noqa: E402

TOTAL_BUDGET_S = 470  # the 8 minutes on one H100, build included, with a margin
MIN_STEP_S = 10  # a step with less time than this left is skipped
DRY_CSV = ROOT / "build" / "gpu-check-cpu-dry.csv"
# Modules the steps use beyond torch/triton/numpy, and what goes without them.
PREFLIGHT = {
    "yaml": "pyyaml: the selftest's pretraining run and the pipeline benchmark need it",
    "tqdm": "tqdm: the pipeline benchmark's store builder needs it",
    "pytest": "pytest: the op tests step is skipped",
    "kornia": "kornia: the augmentation >= 3x kornia target is NOT MEASURED",
}


@dataclass
class Step:
    """One command of the check: its time budget (s) and, once run, what happened."""

    name: str
    cmd: list[str]
    budget_s: float
    env: dict[str, str] = field(default_factory=dict)
    status: str = "not run"  # ok | failed (exit N) | timed out | skipped (...)
    seconds: float = 0.0
    output: str = ""

    def as_dict(self) -> dict:
        d = asdict(self)
        d["output"] = self.output[-4000:]
        return d


@dataclass(frozen=True)
class Sizes:
    """What the benchmarks measure: the real thing on a GPU, tiny on a CPU (a dry run)."""

    hu: list[str]
    augment: list[str]
    loss: list[str]
    loss_memory: list[str]
    pipeline: list[str]
    pytest_k: str
    selftest: list[str]
    loss_n: int
    loss_d: int
    memory_n: int


GPU_SIZES = Sizes(
    hu=["--batch", "256", "--size", "512", "--repeat", "20", "--no-compile"],
    augment=["--batch", "256", "--repeat", "5", "--eager-repeat", "1"],
    loss=["--sizes", "8192", "--dims", "256", "--impls", "ours,torch-eager,torch-compile",
          "--repeat", "5", "--max-seconds", "60"],
    loss_memory=["--sizes", "65536", "--dims", "256", "--impls", "ours", "--repeat", "2",
                 "--max-seconds", "60"],
    pipeline=["--arch", "resnet50", "--size", "224", "--batch", "256", "--steps", "20",
              "--warmup", "5", "--only", "ours"],
    pytest_k="cuda or triton",
    selftest=[],
    loss_n=8192, loss_d=256, memory_n=65536,
)  # fmt: skip
CPU_SIZES = Sizes(
    hu=["--batch", "2", "--size", "64", "--repeat", "3", "--no-compile"],
    augment=["--batch", "2", "--size", "64", "--rgb-size", "48", "--out", "32", "--repeat", "2",
             "--eager-repeat", "1", "--peers", "eager,batched"],
    loss=["--sizes", "256", "--dims", "32", "--impls", "ours,torch-eager", "--repeat", "2",
          "--max-seconds", "20"],
    loss_memory=["--sizes", "1024", "--dims", "32", "--impls", "ours", "--repeat", "1",
                 "--max-seconds", "20"],
    pipeline=["--arch", "resnet18", "--size", "32", "--batch", "8", "--steps", "2",
              "--warmup", "1", "--workers", "0", "--only", "ours"],
    pytest_k="triton and math_by_hand",
    selftest=["--quick"],
    loss_n=256, loss_d=32, memory_n=1024,
)  # fmt: skip
# Seconds per step on one H100 (expected in docs/gpu.md); a CPU dry run gets the same caps.
BUDGETS = {
    "build": 150,
    "selftest": 90,
    "bench hu_window": 20,
    "bench augment": 40,
    "bench loss N=8192": 40,
    "bench loss N=65536": 25,
    "bench pipeline": 75,
    "op tests": 90,  # last: it gets what is left (the selftest covered the same kernels)
}


def cuda_arch() -> str:
    """This GPU's SM architecture for RADENGINE_CUDA_ARCHS, e.g. '90' on an H100."""
    import torch

    major, minor = torch.cuda.get_device_capability()
    return f"{major}{minor}"


def in_virtualenv() -> bool:
    return sys.prefix != sys.base_prefix


def build_steps(python: str, arch: str | None) -> list[Step]:
    env = {"MAX_JOBS": str(os.cpu_count() or 1)}
    if arch:
        env["RADENGINE_CUDA_ARCHS"] = arch
    else:
        env["RADENGINE_SKIP_CUDA"] = "1"
    cmd = [python, "-m", "pip", "install", "--no-build-isolation", "--no-deps", "--no-index"]
    return [Step("build", [*cmd, "-e", str(ROOT)], BUDGETS["build"], env)]


def check_steps(python: str, device: str, sizes: Sizes, csv_path: Path) -> list[Step]:
    dev = ["--device", device]
    bench = [python, "-u"]
    out = [str(csv_path)]
    return [
        Step(
            "selftest",
            [python, "-m", "radengine.cli", "selftest", *dev, *sizes.selftest],
            BUDGETS["selftest"],
        ),
        Step(
            "bench hu_window",
            [*bench, str(HERE / "bench_hu_window.py"), *dev, *sizes.hu, "--out", *out],
            BUDGETS["bench hu_window"],
        ),
        Step(
            "bench augment",
            [*bench, str(HERE / "bench_augment.py"), *dev, *sizes.augment, "--csv", *out],
            BUDGETS["bench augment"],
        ),
        Step(
            "bench loss N=8192",
            [*bench, str(HERE / "bench_contrastive_loss.py"), *dev, *sizes.loss, "--csv", *out],
            BUDGETS["bench loss N=8192"],
        ),
        Step(
            "bench loss N=65536",
            [
                *bench,
                str(HERE / "bench_contrastive_loss.py"),
                *dev,
                *sizes.loss_memory,
                "--csv",
                *out,
            ],
            BUDGETS["bench loss N=65536"],
        ),
        Step(
            "bench pipeline",
            [
                python,
                "-m",
                "radengine.cli",
                "bench",
                "pipeline",
                *dev,
                *sizes.pipeline,
                "--csv",
                *out,
            ],
            BUDGETS["bench pipeline"],
        ),
        Step(
            "op tests",
            [
                python,
                "-m",
                "pytest",
                "tests/ops/",
                "-k",
                sizes.pytest_k,
                "-q",
                "-p",
                "no:cacheprovider",
            ],
            BUDGETS["op tests"],
        ),
    ]


def run_step(step: Step, time_left: float, echo=print) -> None:
    """Run ``step`` (output streamed through ``echo`` and kept), within its budget and what
    is left of the total."""
    limit = min(step.budget_s, time_left)
    if limit < MIN_STEP_S:
        step.status = f"skipped (only {max(time_left, 0):.0f} s of the total budget left)"
        echo(f"\n=== {step.name}: {step.status}")
        return
    echo(f"\n=== {step.name} (budget {limit:.0f} s): {shlex.join(step.cmd)}")
    env = {**os.environ, **step.env, "PYTHONUNBUFFERED": "1"}
    t0 = time.monotonic()
    proc = subprocess.Popen(  # its own process group: a timeout ends its children too
        step.cmd, cwd=ROOT, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
        text=True, start_new_session=True,
    )  # fmt: skip
    lines: list[str] = []

    def pump() -> None:
        assert proc.stdout is not None
        for line in proc.stdout:
            lines.append(line)
            echo(line.rstrip("\n"))

    reader = threading.Thread(target=pump, daemon=True)
    reader.start()
    try:
        code = proc.wait(timeout=limit)
        timed_out = False
    except subprocess.TimeoutExpired:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(proc.pid, signal.SIGKILL)
        code = proc.wait()
        timed_out = True
    reader.join(timeout=5)
    step.seconds = time.monotonic() - t0
    step.output = "".join(lines)
    if timed_out:
        step.status = f"timed out after {limit:.0f} s"
    else:
        step.status = "ok" if code == 0 else f"failed (exit {code})"
    echo(f"=== {step.name}: {step.status} in {step.seconds:.0f} s")


SELFTEST_LINE = re.compile(r"^(PASS|FAIL|SKIP)\s+(\S+)\s+(\S+)", re.M)


def selftest_problems(output: str, device: str) -> list[str]:
    """What the selftest output says is wrong beyond its own exit code: on CUDA, a kernel
    backend that did not run (a missing or stale build)."""
    seen = {(m[1], m[2]): m[0] for m in SELFTEST_LINE.findall(output)}
    if not device.startswith("cuda"):
        return []
    wanted = [("hu_window", "cuda"), ("hu_window", "triton"), ("augment_views", "cuda"),
              ("augment_views", "triton"), ("nt_xent", "triton"), ("info_nce", "triton")]  # fmt: skip
    return [f"{op}/{b} did not run ({seen.get((op, b), 'no line')})" for op, b in wanted
            if seen.get((op, b)) != "PASS"]  # fmt: skip


def csv_rows_after(path: Path, before: int) -> list[dict[str, str]]:
    return gpu_summary.read_rows(path)[before:]


def default_csv(device: str) -> Path:
    import torch
    from _common import RESULTS, device_name

    return RESULTS / f"{device_name(torch.device(device))}.csv"


def make_venv(path: Path) -> str:
    """A virtual environment that sees the system's packages (torch, triton, numpy...)."""
    python = path / "bin" / "python"
    if not python.exists():
        subprocess.run(
            [sys.executable, "-m", "venv", "--system-site-packages", str(path)], check=True
        )
    return str(python)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--device", default="cuda", help="cuda, cuda:N, or cpu (a dry run)")
    parser.add_argument("--build", action="store_true", help="build radengine in place first")
    parser.add_argument("--csv", type=Path, help="rows go here (default results/<device>.csv)")
    parser.add_argument("--budget", type=float, default=TOTAL_BUDGET_S, help="total seconds")
    parser.add_argument(
        "--skip", default="", help="comma list of steps to leave out (e.g. 'op tests')"
    )
    parser.add_argument("--report", type=Path, help="write the steps and targets as JSON here")
    parser.add_argument("--python", default=sys.executable, help=argparse.SUPPRESS)
    args = parser.parse_args(argv)

    import torch

    start = time.monotonic()
    cuda = args.device.startswith("cuda")
    if cuda and not torch.cuda.is_available():
        print(f"error: --device {args.device}: torch sees no CUDA device", file=sys.stderr)
        return 2
    name = torch.cuda.get_device_name(torch.device(args.device)) if cuda else "cpu (dry run)"
    print(f"GPU check on {args.device}: {name}; torch {torch.__version__}, python {sys.version.split()[0]}")  # fmt: skip
    missing = [m for m in PREFLIGHT if importlib.util.find_spec(m) is None]
    if missing:
        print(
            f"not installed here: {', '.join(missing)} ({'; '.join(PREFLIGHT[m] for m in missing)})"
        )
    steps: list[Step] = []
    python = args.python
    if args.build:
        if not in_virtualenv():
            venv = ROOT / "build" / "gpu-venv"
            print(f"not in a virtual environment: making {venv} (system site-packages)")
            try:
                python = make_venv(venv)
            except (OSError, subprocess.CalledProcessError) as exc:
                print(
                    f"error: could not make {venv} ({exc}); run this from a virtual environment "
                    "that sees torch (or `nox -s gpu`)",
                    file=sys.stderr,
                )
                return 2
            rest = list(argv if argv is not None else sys.argv[1:])
            os.execv(python, [python, str(Path(__file__).resolve()), *rest])
        steps += build_steps(python, cuda_arch() if cuda else None)
    # a dry run's tiny sizes stay out of the device's real results
    csv_path = args.csv or (default_csv(args.device) if cuda else DRY_CSV)
    before = len(gpu_summary.read_rows(csv_path))
    sizes = GPU_SIZES if cuda else CPU_SIZES
    steps += check_steps(python, args.device, sizes, csv_path)
    skip = {s.strip() for s in args.skip.split(",") if s.strip()}
    for step in steps:
        if step.name in skip:
            step.status = "skipped (--skip)"
            continue
        if step.name == "op tests" and "pytest" in missing:
            step.status = "skipped (pytest is not installed)"
            continue
        run_step(step, args.budget - (time.monotonic() - start))
        if step.name == "build" and step.status != "ok":
            print("the build failed: nothing else can run")
            break

    problems = []
    for step in steps:
        if step.name == "selftest" and step.status == "ok":
            problems += selftest_problems(step.output, args.device)
    rows = csv_rows_after(csv_path, before)
    outcomes = gpu_summary.evaluate(rows, sizes.loss_n, sizes.loss_d, sizes.memory_n)
    total = time.monotonic() - start

    print(f"\n=== summary ({args.device}, {total:.0f} s of {args.budget:.0f} s)")
    for step in steps:
        print(f"  {step.name:20} {step.status:40} {step.seconds:6.0f} s")
    for p in problems:
        print(f"  selftest: {p}")
    print(f"\nrows appended to {csv_path} ({len(rows)})\n")
    print(gpu_summary.format_table(outcomes))
    if args.report:
        args.report.parent.mkdir(parents=True, exist_ok=True)
        report = dict(
            device=args.device,
            device_name=name,
            seconds=total,
            csv=str(csv_path),
            steps=[s.as_dict() for s in steps],
            selftest_problems=problems,
            targets=[o.as_dict() for o in outcomes],
        )
        args.report.write_text(json.dumps(report, indent=1))
    bad_step = any(s.status not in ("ok",) and not s.status.startswith("skipped (--skip") for s in steps)  # fmt: skip
    # a CPU dry run checks that every step runs; a CPU cannot meet the GPU targets
    bad_target = cuda and any(o.status == gpu_summary.FAIL for o in outcomes)
    return 1 if bad_step or problems or bad_target else 0


if __name__ == "__main__":
    sys.exit(main())
