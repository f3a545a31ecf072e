"""The performance targets of the GPU check, judged from benchmark rows (the shared CSV
schema of benchmarks/_common.py): each target PASS, FAIL or NOT MEASURED, with the value.

    python benchmarks/gpu_summary.py benchmarks/results/nvidia-h100-80gb-hbm3.csv

Targets (docs/gpu.md): hu_window >= 80% of copy bandwidth; augmentation >= 70% of its
roofline, >= 10x per-sample eager torch, >= 3x kornia; NT-Xent forward + backward >= 2x
eager torch and >= 1.3x torch.compile at N = 8192, D = 256, and under 1 GB (10^9 bytes) of
peak memory at N = 65536; pretraining data wait < 5% of the step time.

"Ours" is the best radengine backend measured (cuda, triton or cpu); its name is printed.
Where a CSV holds several runs of the same measurement, the last one counts.
"""

from __future__ import annotations

import argparse
import csv
import sys
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path

OURS = ("cuda", "triton", "cpu")  # radengine's backends as the benchmarks name them
PASS, FAIL, NOT_MEASURED = "PASS", "FAIL", "NOT MEASURED"
GB = 1e9


@dataclass(frozen=True)
class Outcome:
    target: str
    status: str
    measured: str

    def as_dict(self) -> dict[str, str]:
        return {"target": self.target, "status": self.status, "measured": self.measured}


def read_rows(path: Path) -> list[dict[str, str]]:
    if not path.exists():
        return []
    with path.open(newline="") as f:
        return list(csv.DictReader(f))


def latest(rows: Iterable[dict[str, str]]) -> list[dict[str, str]]:
    """The last row of each (op, backend, shape, dtype, metric), in first-seen order."""
    out: dict[tuple[str, ...], dict[str, str]] = {}
    for r in rows:
        key = (r["op"], r["backend"], r["shape"], r["dtype"], r["metric"])
        out.pop(key, None)
        out[key] = r
    return list(out.values())


def _p50(r: dict[str, str]) -> float:
    return float(r["p50"])


def _pick(rows, op: str, metric: str, shape: Callable[[str], bool] = lambda s: True):
    return [r for r in rows if r["op"] == op and r["metric"] == metric and shape(r["shape"])]


def _best_ours_per_group(rows, group: Callable[[dict], str]) -> dict[str, dict[str, str]]:
    """For each group (e.g. dtype), the radengine row with the highest p50."""
    best: dict[str, dict[str, str]] = {}
    for r in rows:
        if r["backend"] in OURS:
            g = group(r)
            if g not in best or _p50(r) > _p50(best[g]):
                best[g] = r
    return best


def _at_least(
    name: str, best: dict[str, dict[str, str]], goal: float, fmt: Callable[[float], str]
) -> Outcome:
    """PASS when every group's best reaches ``goal``; the value shown is the worst group's."""
    if not best:
        return Outcome(name, NOT_MEASURED, "no rows")
    group, worst = min(best.items(), key=lambda kv: _p50(kv[1]))
    value = _p50(worst)
    where = f"{worst['backend']}, {group}" + (f"; worst of {len(best)}" if len(best) > 1 else "")
    return Outcome(name, PASS if value >= goal else FAIL, f"{fmt(value)} ({where})")


def _pct(v: float) -> str:
    return f"{100 * v:.1f}%"


def _x(v: float) -> str:
    return f"{v:.2f}x"


def evaluate(
    rows: Sequence[dict[str, str]], loss_n: int = 8192, loss_d: int = 256, memory_n: int = 65536
) -> list[Outcome]:
    """Every target against ``rows`` (the last of each measurement counts). ``loss_n``,
    ``loss_d`` and ``memory_n`` name the contrastive-loss shapes the targets are read at (a
    dry run on a CPU reads them at its tiny sizes)."""
    rows = latest(rows)
    out: list[Outcome] = []

    hu = _best_ours_per_group(_pick(rows, "hu_window", "roofline"), lambda r: r["dtype"])
    out.append(_at_least("hu_window >= 80% of copy bandwidth", hu, 0.80, _pct))

    def case(r):
        return f"{r['shape'].rsplit(':', 1)[-1]} {r['dtype']}"

    for metric, name, goal, fmt in (
        ("roofline_fraction", "augmentation >= 70% of its roofline", 0.70, _pct),
        ("speedup_vs_eager", "augmentation >= 10x per-sample eager torch", 10.0, _x),
        ("speedup_vs_kornia", "augmentation >= 3x kornia", 3.0, _x),
    ):
        out.append(_at_least(name, _best_ours_per_group(_pick(rows, "augment", metric), case), goal, fmt))  # fmt: skip

    shape = f"{loss_n}x{loss_d}"
    at = f" at N = {loss_n}, D = {loss_d}"
    speed = _best_ours_per_group(
        _pick(rows, "contrastive_loss", "speedup_vs_eager", lambda s: s == shape),
        lambda r: r["dtype"],
    )
    out.append(_at_least("NT-Xent >= 2x eager torch" + at, speed, 2.0, _x))
    times = _pick(rows, "contrastive_loss", "time", lambda s: s == shape)
    compiled = {r["dtype"]: _p50(r) for r in times if r["backend"] == "torch-compile"}
    speedups = [
        dict(r, p50=str(compiled[r["dtype"]] / _p50(r))) for r in times if r["dtype"] in compiled
    ]
    ratio = _best_ours_per_group(speedups, lambda r: r["dtype"])
    out.append(_at_least("NT-Xent >= 1.3x torch.compile" + at, ratio, 1.3, _x))
    mem_shape = f"{memory_n}x{loss_d}"
    mem = [
        r
        for r in _pick(rows, "contrastive_loss", "peak_memory", lambda s: s == mem_shape)
        if r["backend"] in OURS
    ]
    name = f"NT-Xent peak memory < 1 GB at N = {memory_n}, D = {loss_d}"
    if not mem:
        out.append(Outcome(name, NOT_MEASURED, "no rows"))
    else:
        worst = max(mem, key=_p50)
        mib = _p50(worst)
        status = PASS if mib * 2**20 < GB else FAIL
        out.append(Outcome(name, status, f"{mib:.0f} MiB ({worst['backend']}, {worst['dtype']})"))

    wait = [r for r in _pick(rows, "pipeline", "data_wait_fraction") if r["backend"] == "radengine"]
    name = "pretraining data wait < 5%"
    if not wait:
        out.append(Outcome(name, NOT_MEASURED, "no rows"))
    else:
        worst = max(wait, key=_p50)
        status = PASS if _p50(worst) < 0.05 else FAIL
        out.append(Outcome(name, status, f"{_pct(_p50(worst))} ({worst['shape']})"))
    return out


def format_table(outcomes: Sequence[Outcome]) -> str:
    w = max(len(o.target) for o in outcomes)
    m = max(len(o.measured) for o in outcomes)
    lines = [f"{'target':{w}}  {'measured':{m}}  status"]
    lines += [f"{o.target:{w}}  {o.measured:{m}}  {o.status}" for o in outcomes]
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("csv", type=Path, nargs="+", help="benchmark CSV(s)")
    parser.add_argument("--loss-n", type=int, default=8192)
    parser.add_argument("--loss-d", type=int, default=256)
    parser.add_argument("--memory-n", type=int, default=65536)
    args = parser.parse_args(argv)
    rows = [r for p in args.csv for r in read_rows(p)]
    outcomes = evaluate(rows, args.loss_n, args.loss_d, args.memory_n)
    print(format_table(outcomes))
    return 1 if any(o.status == FAIL for o in outcomes) else 0


if __name__ == "__main__":
    sys.exit(main())
