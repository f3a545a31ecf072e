"""`nox -s gpu` (benchmarks/gpu_check.py) without a GPU: the targets summary from given rows,
CSV appending, the build command, step time budgets, and the whole driver on the CPU at
tiny sizes, so that the first GPU run is not its first run."""

from __future__ import annotations

import csv
import importlib.util
import json
import sys
from pathlib import Path

import pytest
import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "benchmarks"))
import _common  # noqa: E402
import gpu_check  # noqa: E402
import gpu_summary  # noqa: E402

DEV = "nvidia-h100-80gb-hbm3"


def row(op, backend, shape, dtype, metric, value, unit="x"):
    v = str(value)
    return dict(
        op=op, backend=backend, shape=shape, dtype=dtype, metric=metric, unit=unit, p20=v,
        p50=v, p80=v, device=DEV, torch="2.13.0", commit="abc1234", date="2026-12-03",
    )  # fmt: skip


CT = "256x512x512->2x3x224x224:ct"
RGB = "256x256x256x3->2x3x224x224:simclr"
ROWS = [
    row("hu_window", "copy", "1GiB", "uint8", "bandwidth", 3000.0, "GB/s"),
    row("hu_window", "cuda", "256x512x512->3ch", "float32", "roofline", 0.91, "fraction"),
    row("hu_window", "triton", "256x512x512->3ch", "float32", "roofline", 0.85, "fraction"),
    row("hu_window", "torch-eager", "256x512x512->3ch", "float32", "roofline", 0.2, "fraction"),
    row("hu_window", "cuda", "256x512x512->3ch", "bfloat16", "roofline", 0.83, "fraction"),
    row("augment", "cuda", CT, "bfloat16", "roofline_fraction", 0.75),
    row("augment", "cuda", RGB, "bfloat16", "roofline_fraction", 0.55),  # the worst case
    row("augment", "torch-batched", RGB, "bfloat16", "roofline_fraction", 0.9),  # not ours
    row("augment", "cuda", CT, "bfloat16", "speedup_vs_eager", 40.0),
    row("augment", "cuda", RGB, "bfloat16", "speedup_vs_eager", 12.0),
    row("contrastive_loss", "triton", "8192x256", "float32", "time", 10.0, "ms"),
    row("contrastive_loss", "torch-eager", "8192x256", "float32", "time", 30.0, "ms"),
    row("contrastive_loss", "torch-compile", "8192x256", "float32", "time", 12.0, "ms"),
    row("contrastive_loss", "triton", "8192x256", "float32", "speedup_vs_eager", 3.0),
    row("contrastive_loss", "torch-compile", "8192x256", "float32", "speedup_vs_eager", 2.5),
    row("contrastive_loss", "triton", "65536x256", "float32", "peak_memory", 600.0, "MiB"),
    row("pipeline", "radengine", "resnet50 b256 224px w8", "bfloat16", "data_wait_fraction",
        0.02, "fraction"),
    row("pipeline", "study-baseline", "resnet50 b256 224px w8", "float16",
        "data_wait_fraction", 0.6, "fraction"),
]  # fmt: skip


def by_target(outcomes):
    return {o.target: (o.status, o.measured) for o in outcomes}


def test_summary_against_the_targets():
    got = by_target(gpu_summary.evaluate(ROWS))
    assert got["hu_window >= 80% of copy bandwidth"] == (
        "PASS",
        "83.0% (cuda, bfloat16; worst of 2)",
    )
    assert got["augmentation >= 70% of its roofline"] == (
        "FAIL",
        "55.0% (cuda, simclr bfloat16; worst of 2)",
    )
    assert got["augmentation >= 10x per-sample eager torch"][0] == "PASS"
    assert got["augmentation >= 3x kornia"] == ("NOT MEASURED", "no rows")
    assert got["NT-Xent >= 2x eager torch at N = 8192, D = 256"] == (
        "PASS",
        "3.00x (triton, float32)",
    )
    # 12 ms compiled / 10 ms ours = 1.2x < 1.3x
    assert got["NT-Xent >= 1.3x torch.compile at N = 8192, D = 256"] == (
        "FAIL",
        "1.20x (triton, float32)",
    )
    assert got["NT-Xent peak memory < 1 GB at N = 65536, D = 256"] == (
        "PASS",
        "600 MiB (triton, float32)",
    )
    assert got["pretraining data wait < 5%"] == ("PASS", "2.0% (resnet50 b256 224px w8)")
    assert len(got) == 8


def test_the_last_measurement_counts_and_limits_are_strict():
    rows = [
        *ROWS,
        row("hu_window", "cuda", "256x512x512->3ch", "bfloat16", "roofline", 0.79, "fraction"),
        row("hu_window", "triton", "256x512x512->3ch", "bfloat16", "roofline", 0.5, "fraction"),
        row("contrastive_loss", "triton", "65536x256", "float32", "peak_memory", 954.0, "MiB"),
        row("pipeline", "radengine", "resnet50 b256 224px w8", "bfloat16", "data_wait_fraction",
            0.05, "fraction"),
    ]  # fmt: skip
    got = by_target(gpu_summary.evaluate(rows))
    assert got["hu_window >= 80% of copy bandwidth"][0] == "FAIL"  # 79% now
    assert got["NT-Xent peak memory < 1 GB at N = 65536, D = 256"][0] == "FAIL"  # > 1e9 B
    assert got["pretraining data wait < 5%"][0] == "FAIL"
    assert all(s == "NOT MEASURED" for s, _ in by_target(gpu_summary.evaluate([])).values())


def test_summary_cli_reads_csvs(tmp_path, capsys):
    path = tmp_path / f"{DEV}.csv"
    with path.open("w", newline="") as f:
        w = csv.DictWriter(f, fieldnames=_common.FIELDS)
        w.writeheader()
        w.writerows(ROWS)
    assert gpu_summary.main([str(path)]) == 1  # two targets fail
    out = capsys.readouterr().out
    assert out.splitlines()[0].startswith("target") and "NOT MEASURED" in out


def test_rows_append_to_the_device_csv(tmp_path):
    path = tmp_path / "results" / "cpu-test.csv"
    rec = _common.Recorder("hu_window", torch.device("cpu"))
    rec.add("cpu", "2x8x8->3ch", "float32", "time", "ms", 1, 2, 3)
    rec.write(path)
    before = len(gpu_summary.read_rows(path))
    rec.rows = []
    rec.add("cpu", "2x8x8->3ch", "float32", "time", "ms", 4, 5, 6)
    rec.write(path)
    lines = path.read_text().splitlines()
    assert lines[0] == ",".join(_common.FIELDS) and len(lines) == 3  # one header
    new = gpu_check.csv_rows_after(path, before)
    assert [r["p50"] for r in new] == ["5"]


def test_build_step_is_offline_and_for_this_gpu_only(monkeypatch):
    monkeypatch.setattr(torch.cuda, "get_device_capability", lambda *a: (9, 0))
    assert gpu_check.cuda_arch() == "90"
    (step,) = gpu_check.build_steps("py", gpu_check.cuda_arch())
    assert step.cmd[:3] == ["py", "-m", "pip"] and step.cmd[-2:] == ["-e", str(ROOT)]
    assert {"--no-build-isolation", "--no-deps", "--no-index"} <= set(step.cmd)
    assert step.env["RADENGINE_CUDA_ARCHS"] == "90"
    (cpu_step,) = gpu_check.build_steps("py", None)
    assert cpu_step.env["RADENGINE_SKIP_CUDA"] == "1"


def test_gpu_steps_fit_the_budget_and_skip_slow_peers(tmp_path):
    steps = gpu_check.check_steps("py", "cuda", gpu_check.GPU_SIZES, tmp_path / "x.csv")
    names = [s.name for s in steps]
    assert names[0] == "selftest" and names[-1] == "op tests"
    assert gpu_check.BUDGETS["build"] + sum(s.budget_s for s in steps[:-1]) <= (
        gpu_check.TOTAL_BUDGET_S
    )
    big = next(s for s in steps if s.name == "bench loss N=65536")
    assert big.cmd[big.cmd.index("--impls") + 1] == "ours"  # no eager at N = 65536
    pipeline = next(s for s in steps if s.name == "bench pipeline")
    assert "resnet50" in pipeline.cmd and "224" in pipeline.cmd
    tests = steps[-1].cmd
    assert tests[tests.index("-k") + 1] == "cuda or triton"
    for s in steps:
        if s.name.startswith("bench"):
            assert str(tmp_path / "x.csv") in s.cmd


def test_a_step_is_cut_at_its_budget(monkeypatch):
    monkeypatch.setattr(gpu_check, "MIN_STEP_S", 0.5)
    code = "import time; print('started', flush=True); time.sleep(60)"
    step = gpu_check.Step("sleepy", [sys.executable, "-c", code], budget_s=60)
    lines = []
    gpu_check.run_step(step, time_left=1.5, echo=lines.append)
    assert step.status == "timed out after 2 s" and step.seconds < 10
    assert "started" in step.output
    late = gpu_check.Step("late", [sys.executable, "-c", "pass"], budget_s=60)
    gpu_check.run_step(late, time_left=0.1, echo=lines.append)
    assert late.status.startswith("skipped (only 0 s")


def test_selftest_output_must_show_every_gpu_backend_ran():
    out = "\n".join(
        f"PASS  {op:13} {b:22} float32   worst 1e-07"
        for op, b in [("hu_window", "cuda"), ("hu_window", "triton"), ("augment_views", "triton"),
                      ("nt_xent", "triton"), ("info_nce", "triton")]
    ) + "\nSKIP  augment_views cuda                   -   not in this build"  # fmt: skip
    assert gpu_check.selftest_problems(out, "cuda") == ["augment_views/cuda did not run (SKIP)"]
    assert gpu_check.selftest_problems(out, "cpu") == []


def test_nox_has_the_gpu_session():
    if importlib.util.find_spec("nox") is None:
        pytest.skip("nox is not installed")
    spec = importlib.util.spec_from_file_location("noxfile_under_test", ROOT / "noxfile.py")
    noxfile = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(noxfile)
    assert callable(noxfile.gpu)
    assert noxfile.nox.options.sessions == ["lint", "tests"]  # `nox` alone is unchanged


@pytest.mark.skipif(
    importlib.util.find_spec("yaml") is None, reason="the pipeline benchmark needs pyyaml"
)
def test_the_whole_check_runs_on_the_cpu_at_tiny_sizes(tmp_path, capsys):
    """The session's CPU path: every step of the GPU check, tiny, against a temporary CSV."""
    path, report = tmp_path / "rows.csv", tmp_path / "report.json"
    code = gpu_check.main(["--device", "cpu", "--csv", str(path), "--report", str(report)])
    out = capsys.readouterr().out
    data = json.loads(report.read_text())
    assert code == 0, [s for s in data["steps"] if s["status"] != "ok"]
    assert [s["name"] for s in data["steps"]] == [
        "selftest", "bench hu_window", "bench augment", "bench loss N=8192",
        "bench loss N=65536", "bench pipeline", "op tests",
    ]  # fmt: skip
    assert all(s["status"] == "ok" for s in data["steps"])
    ops = {r["op"] for r in gpu_summary.read_rows(path)}
    assert ops == {"hu_window", "augment", "contrastive_loss", "pipeline"}
    targets = {t["target"]: t["status"] for t in data["targets"]}
    assert len(targets) == 8
    assert targets["pretraining data wait < 5%"] in ("PASS", "FAIL")  # measured
    assert targets["NT-Xent >= 2x eager torch at N = 256, D = 32"] in ("PASS", "FAIL")
    assert targets["augmentation >= 3x kornia"] == "NOT MEASURED"  # not a peer on the dry run
    assert "=== summary (cpu" in out and "target" in out
