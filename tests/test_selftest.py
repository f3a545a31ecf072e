"""`radengine selftest`: passes on this machine, fails (exit 1) naming the op and backend
when a backend is slightly wrong, exit 2 for a device it cannot use, includes Triton on CPU
only under TRITON_INTERPRET=1, --json, and its tolerances are the op tests' own."""

from __future__ import annotations

import dataclasses
import json
import math

import pytest
import torch

from radengine import selftest
from radengine.cli import main
from radengine.ops import _dispatch
from radengine.ops import tolerances as tol

HAVE_CPU = _dispatch.unavailable_reason("cpu", "cpu") is None
needs_cpu = pytest.mark.skipif(not HAVE_CPU, reason="radengine._cpu is not built")


def run_cli(capsys, *args: str) -> tuple[int, str, str]:
    code = main(["selftest", *args])
    out, err = capsys.readouterr()
    return code, out, err


def test_tolerances_are_the_op_tests_own():
    from tests.ops import test_augment_triton, test_contrastive_loss, test_hu_window

    for dtype, (rtol, atol) in tol.HU_WINDOW.items():
        assert test_hu_window.TOL[dtype] == dict(rtol=rtol, atol=atol)
    assert set(tol.HU_WINDOW) == set(test_hu_window.TOL)
    for dtype, (rtol, atol) in tol.CONTRASTIVE.items():
        assert test_contrastive_loss.TOL[dtype] == dict(rtol=rtol, atol=atol)
    assert test_augment_triton.FP32_ATOL == tol.AUGMENT_FP32_ATOL


@needs_cpu
def test_quick_passes_on_this_cpu_with_json(capsys, monkeypatch):
    monkeypatch.setenv("TRITON_INTERPRET", "0")  # the interpreter is covered below
    code, out, _ = run_cli(capsys, "--quick", "--json", "--seed", "7")
    rows = json.loads(out)  # the whole of stdout is one JSON document
    assert code == 0, [r for r in rows if r["status"] == "FAIL"]
    ops = {r["op"] for r in rows}
    assert {"hu_window", "resize", "augment_views", "nt_xent", "info_nce", "pretrain"} <= ops
    passed = {(r["op"], r["backend"], r["dtype"]) for r in rows if r["status"] == "PASS"}
    for dtype in ("float32", "float16", "bfloat16"):
        assert ("hu_window", "cpu", dtype) in passed
        assert ("augment_views", "cpu", dtype) in passed
    for dtype in ("float32", "float64", "float16", "bfloat16"):
        assert ("nt_xent", "cpu", dtype) in passed and ("info_nce", "cpu", dtype) in passed
    assert {("resize", "cpu", d) for d in ("int16", "uint8", "float32")} <= passed
    assert ("pretrain", "default", "-") in passed
    triton = [r for r in rows if r["backend"] == "triton"]
    assert triton and all(r["status"] == "SKIP" for r in triton)
    assert all(r["device"] == "cpu" for r in rows)


@needs_cpu
def test_a_slightly_wrong_backend_fails_naming_the_op_and_backend(capsys, monkeypatch):
    from radengine.ops.hu_window import IMPLS

    good = IMPLS["cpu"]

    def slightly_wrong(*args):
        out = good(*args)
        return out + 1e-3 * out.abs().max()

    monkeypatch.setitem(IMPLS, "cpu", slightly_wrong)
    monkeypatch.setenv("TRITON_INTERPRET", "0")
    code, out, _ = run_cli(capsys, "--quick", "--only", "hu_window,resize")
    assert code == 1
    lines = out.splitlines()
    fail = [line for line in lines if line.startswith("FAIL")]
    assert any(line.split()[1:4] == ["hu_window", "cpu", "float32"] for line in fail), out
    assert not any("resize" in line for line in fail)
    assert any(line.startswith("PASS  resize") for line in lines)
    assert "FAILED" in lines[-1] and "hu_window/cpu" in lines[-1]


@needs_cpu
def test_a_wrong_loss_gradient_fails(capsys, monkeypatch):
    from radengine.ops.contrastive_loss import IMPLS

    cpu = IMPLS["cpu"]

    def wrong_bwd(*args):
        g_rows, g_cols = cpu.nt_xent_bwd(*args)
        return g_rows * 1.01, g_cols

    monkeypatch.setitem(IMPLS, "cpu", dataclasses.replace(cpu, nt_xent_bwd=wrong_bwd))
    monkeypatch.setenv("TRITON_INTERPRET", "0")
    code, out, _ = run_cli(capsys, "--quick", "--only", "nt_xent,info_nce", "--json")
    rows = json.loads(out)
    assert code == 1
    failed = {(r["op"], r["backend"]) for r in rows if r["status"] == "FAIL"}
    assert ("nt_xent", "cpu") in failed and ("info_nce", "cpu") not in failed


@needs_cpu
def test_a_backend_that_raises_is_a_failure_not_a_crash(capsys, monkeypatch):
    from radengine.ops.resize import IMPLS

    def broken(x, size):
        raise RuntimeError("kernel launch failed")

    monkeypatch.setitem(IMPLS, "cpu", broken)
    code, out, _ = run_cli(capsys, "--quick", "--only", "resize")
    assert code == 1
    assert "RuntimeError: kernel launch failed" in out


@pytest.mark.skipif(torch.cuda.is_available(), reason="checks the no-GPU message")
@pytest.mark.parametrize("device", ["cuda", "cuda:1"])
def test_cuda_without_a_gpu_is_a_usage_error(capsys, device):
    code, out, err = run_cli(capsys, "--device", device)
    assert code == 2 and out == ""
    assert err.startswith(f"error: --device {device}: no CUDA device visible to torch")


@pytest.mark.parametrize(
    ("args", "match"),
    [
        (["--device", "mps"], "choose cpu, cuda or cuda:N"),
        (["--device", "gpu0"], "choose cpu, cuda or cuda:N"),
        (["--only", "hu_window,convolve"], "--only convolve: choose from hu_window"),
    ],
)
def test_bad_usage_exits_2(capsys, args, match):
    code, out, err = run_cli(capsys, *args)
    assert code == 2 and out == ""
    assert match in err


@needs_cpu
@pytest.mark.skipif(
    torch.cuda.is_available(),
    reason="the Triton interpreter is set up (before triton's import) only without a GPU",
)
def test_triton_on_cpu_only_under_the_interpreter(capsys, monkeypatch):
    pytest.importorskip("triton")
    monkeypatch.setenv("TRITON_INTERPRET", "0")
    code, out, _ = run_cli(capsys, "--quick", "--only", "resize")
    assert code == 0 and "triton backends: not included" in out
    assert "TRITON_INTERPRET=1" in out
    monkeypatch.setenv("TRITON_INTERPRET", "1")
    code, out, _ = run_cli(capsys, "--quick", "--only", "info_nce", "--seed", "3")
    assert code == 0, out
    assert "triton backends: included, run by the Triton interpreter" in out
    triton = [line for line in out.splitlines() if line.split()[1:3] == ["info_nce", "triton"]]
    assert len(triton) == 4 and all(line.startswith("PASS") for line in triton), out


def test_comparisons():
    ref = torch.tensor([1.0, -2.0, math.inf, 0.0])
    err, ratio = selftest.close_ratio(ref + torch.tensor([1e-6, 0, 0, 0]), ref, 1e-5, 1e-5)
    assert err == pytest.approx(1e-6, rel=0.1) and 0 < ratio < 1
    assert selftest.close_ratio(torch.tensor([1.0, -2.0, 5.0, 0.0]), ref, 1, 1)[1] == math.inf
    assert selftest.close_ratio(torch.tensor([1.0, -2.0, math.inf, math.nan]), ref, 1, 1)[1] == (
        math.inf
    )
    r32 = torch.tensor([0.1, 1.0, 300.0])
    one_ulp = torch.nextafter(r32.to(torch.bfloat16), torch.tensor(math.inf).to(torch.bfloat16))
    assert selftest.ulp_ratio(r32.to(torch.bfloat16), r32, 1e-5)[1] <= 1
    assert selftest.ulp_ratio(one_ulp, r32, 1e-5)[1] <= 1
    two_ulps = torch.nextafter(one_ulp, torch.tensor(math.inf).to(torch.bfloat16))
    assert selftest.ulp_ratio(two_ulps, r32, 1e-5)[1] > 1


def test_result_keeps_the_first_failure_and_the_worst_error():
    r = selftest.Result("op", "cpu", "float32")
    r.add("a", 1e-7, 0.1)
    r.add("b", 2e-6, 0.9)
    assert (r.status, r.detail, r.worst_ratio) == ("PASS", "b", 0.9)
    r.add("c", 1e-3, 50.0)
    r.add("d", 1e-1, 5000.0)
    assert r.status == "FAIL" and r.detail.startswith("c: error 1.00e-03 is 50.00x")
    assert r.worst_error == 1e-1 and r.cases == 4
    assert json.dumps(r.as_dict())


def test_info_points_to_selftest():
    from radengine import info

    assert "radengine selftest" in info.format_text(info.collect()).splitlines()[-1]


@pytest.mark.cuda
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")
def test_selftest_cuda_quick(capsys):
    code, out, _ = run_cli(capsys, "--device", "cuda", "--quick")
    assert code == 0, out
    assert "PASS  cuda_state" in out and "PASS  cuda_stream" in out
