"""dev.py, the two-command bootstrap (`python3 dev.py quickstart`, `python3 dev.py test`): its
logic without installing anything. The script is imported as a module; subprocess.run is
replaced wherever a step would run something."""

from __future__ import annotations

import importlib.util
import json
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]


def _load():
    spec = importlib.util.spec_from_file_location("radengine_dev_bootstrap", ROOT / "dev.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


dev = _load()


@pytest.fixture
def fake_root(tmp_path, monkeypatch):
    """dev.py pointed at an empty folder (no .venv), with nothing allowed to run."""
    (tmp_path / "pyproject.toml").write_text("[project]\nname = 'x'\n")
    (tmp_path / "setup.py").write_text("# setup\n")
    (tmp_path / "csrc").mkdir()
    (tmp_path / "csrc" / "a.cpp").write_text("int a;\n")
    monkeypatch.setattr(dev, "ROOT", tmp_path)
    monkeypatch.setattr(dev, "VENV", tmp_path / ".venv")
    for name in ("RADENGINE_TORCH", "RADENGINE_SKIP_CUDA", "RADENGINE_REQUIRE_CUDA"):
        monkeypatch.delenv(name, raising=False)

    def refuse(*args, **kwargs):
        raise AssertionError(f"ran {args[0]!r}")

    monkeypatch.setattr(dev.subprocess, "run", refuse)
    return tmp_path


# ---------------------------------------------------------------------------------------------
# RADENGINE_TORCH


def test_torch_spec_default_is_the_pinned_cpu_wheel():
    assert dev.torch_args({}) == ["torch==2.13.0"]
    assert dev.torch_args({"RADENGINE_TORCH": "  "}) == ["torch==2.13.0"]


@pytest.mark.parametrize(
    "spec, words",
    [
        ("torch==2.12.1", ["torch==2.12.1"]),
        (
            "torch==2.13.0+cu130 --index-url https://download.pytorch.org/whl/cu130",
            ["torch==2.13.0+cu130", "--index-url", "https://download.pytorch.org/whl/cu130"],
        ),
        ("torch~=2.13.0 --pre", ["torch~=2.13.0", "--pre"]),
        ("'torch===2.13.0'", ["torch===2.13.0"]),
        ("./wheels/torch-2.13.0-cp311-linux_x86_64.whl", None),
        ("https://example.org/torch-2.13.0-cp311-linux_x86_64.whl", None),
        ("-r torch-requirements.txt", None),
        ("torch==2.13.0 torchvision==0.28.0", None),
    ],
)
def test_torch_spec_pinned_forms_are_passed_to_pip_as_words(spec, words):
    import shlex

    assert dev.torch_args({"RADENGINE_TORCH": spec}) == (words or shlex.split(spec))


@pytest.mark.parametrize(
    "spec",
    ["torch", "torch>=2.5", "torch<=2.14", "torch==2.*", "Torch", "torch --index-url x",
     "--index-url https://download.pytorch.org/whl/cu130", "torch=='2.13"],
)  # fmt: skip
def test_torch_spec_that_would_resolve_an_unpinned_torch_is_refused(spec):
    with pytest.raises(dev.BootstrapError, match="RADENGINE_TORCH") as e:
        dev.torch_args({"RADENGINE_TORCH": spec})
    assert e.value.code == 2


def test_unpinned_torch_spec_exits_2_with_a_message_before_anything_runs(
    fake_root, monkeypatch, capsys
):
    monkeypatch.setenv("RADENGINE_TORCH", "torch")
    assert dev.main(["setup"]) == 2
    err = capsys.readouterr().err
    assert "does not pin torch" in err and "Traceback" not in err
    assert not (fake_root / ".venv").exists()


# ---------------------------------------------------------------------------------------------
# The stamp: the install is skipped while nothing it depends on changed


def test_stamp_key_changes_with_what_the_install_depends_on(fake_root):
    torch = ["torch==2.13.0"]
    key = dev.stamp_key(fake_root, torch, {})
    assert dev.stamp_key(fake_root, torch, {}) == key  # deterministic
    assert dev.stamp_key(fake_root, ["torch==2.12.1"], {}) != key
    assert dev.stamp_key(fake_root, torch, {"RADENGINE_CUDA_ARCHS": "86"}) != key
    assert dev.stamp_key(fake_root, torch, {"CUDA_HOME": "/opt/cuda"}) != key
    # Checked against the build record instead (no second build for `setup` then `test`):
    assert dev.stamp_key(fake_root, torch, {"RADENGINE_REQUIRE_CUDA": "1"}) == key
    assert dev.stamp_key(fake_root, torch, {"MAX_JOBS": "2"}) == key
    for rel in ("pyproject.toml", "setup.py", "csrc/a.cpp"):
        path = fake_root / rel
        old = path.read_text()
        path.write_text(old + "# changed\n")
        assert dev.stamp_key(fake_root, torch, {}) != key, rel
        path.write_text(old)
    (fake_root / "csrc" / "cuda").mkdir()
    (fake_root / "csrc" / "cuda" / "new.cu").write_text("// new kernel\n")
    assert dev.stamp_key(fake_root, torch, {}) != key
    (fake_root / "radengine.py").write_text("# Python sources need no reinstall\n")
    (fake_root / "csrc" / "cuda" / "new.cu").unlink()
    assert dev.stamp_key(fake_root, torch, {}) == key


def _installed(root: Path, key: str, cuda: dict) -> Path:
    venv = root / ".venv"
    dev.venv_python(venv).parent.mkdir(parents=True)
    dev.venv_python(venv).write_text("")
    (venv / dev.STAMP_NAME).write_text(key + "\n")
    (root / "radengine").mkdir()
    (root / "radengine" / "_build_info.json").write_text(json.dumps({"cuda": cuda}))
    return venv


def test_stale_reason_says_why_an_install_is_needed(fake_root):
    venv = fake_root / ".venv"
    assert "no .venv" in dev.stale_reason(fake_root, venv, "k", {})
    key = dev.stamp_key(fake_root, ["torch==2.13.0"], {})
    venv = _installed(fake_root, key, {"built": True})
    assert dev.stale_reason(fake_root, venv, key, {}) is None
    assert "changed" in dev.stale_reason(fake_root, venv, "another key", {})
    (venv / dev.STAMP_NAME).unlink()
    assert "no record" in dev.stale_reason(fake_root, venv, key, {})
    (venv / dev.STAMP_NAME).write_text(key)
    (fake_root / "radengine" / "_build_info.json").unlink()
    assert "_build_info.json" in dev.stale_reason(fake_root, venv, key, {})


def test_stale_reason_follows_the_cuda_build_variables(fake_root):
    key = "k"
    venv = _installed(fake_root, key, {"built": False, "reason": "nvcc not found"})
    assert dev.stale_reason(fake_root, venv, key, {}) is None
    assert "RADENGINE_REQUIRE_CUDA" in dev.stale_reason(
        fake_root, venv, key, {"RADENGINE_REQUIRE_CUDA": "1"}
    )
    info = fake_root / "radengine" / "_build_info.json"
    skipped = {"built": False, "reason": "skipped because RADENGINE_SKIP_CUDA=1"}
    info.write_text(json.dumps({"cuda": skipped}))
    assert dev.stale_reason(fake_root, venv, key, {"RADENGINE_SKIP_CUDA": "1"}) is None
    assert "wanted now" in dev.stale_reason(fake_root, venv, key, {})
    info.write_text(json.dumps({"cuda": {"built": True}}))
    assert dev.stale_reason(fake_root, venv, key, {"RADENGINE_SKIP_CUDA": "1"}) is None


def test_setup_with_a_valid_stamp_runs_nothing(fake_root, capsys):
    _installed(fake_root, dev.stamp_key(fake_root, ["torch==2.13.0"]), {"built": True})
    assert dev.main(["setup"]) == 0  # the fixture's subprocess.run would raise
    assert "up to date" in capsys.readouterr().out


# ---------------------------------------------------------------------------------------------
# Command line


def test_help_names_the_commands_and_the_torch_variable(capsys):
    with pytest.raises(SystemExit) as e:
        dev.main(["--help"])
    assert e.value.code == 0
    out = capsys.readouterr().out
    for word in ("quickstart", "test", "setup", "RADENGINE_TORCH", "torch==2.13.0"):
        assert word in out
    with pytest.raises(SystemExit) as e:
        dev.main(["test", "--help"])
    assert e.value.code == 0
    assert "pytest" in capsys.readouterr().out


@pytest.mark.parametrize("argv", [["bogus"], [], ["quickstart", "--bogus"], ["--dry-run"]])
def test_unknown_or_missing_command_exits_2_with_a_message(argv, capsys):
    try:
        code = dev.main(argv)
    except SystemExit as e:  # argparse's own errors
        code = e.code
    assert code == 2
    err = capsys.readouterr().err
    assert "dev.py" in err and "Traceback" not in err


def test_script_runs_as_a_command():
    """python3 dev.py ... as the README shows it (also: no import beyond the stdlib)."""
    help_ = subprocess.run([sys.executable, str(ROOT / "dev.py"), "--help"], capture_output=True)
    assert help_.returncode == 0 and b"quickstart" in help_.stdout
    bad = subprocess.run([sys.executable, str(ROOT / "dev.py"), "bogus"], capture_output=True)
    assert bad.returncode == 2 and b"invalid choice" in bad.stderr


@pytest.mark.parametrize(
    "argv, own, passed",
    [
        (["test"], ["test"], []),
        (["test", "-x", "-k", "linear", "tests/eval"], ["test"], ["-x", "-k", "linear", "tests/eval"]),
        (["test", "--reinstall", "-k", "test"], ["test", "--reinstall"], ["-k", "test"]),
        (["test", "--dry-run", "--", "-h", "--reinstall"], ["test", "--dry-run"], ["-h", "--reinstall"]),
        (["quickstart", "--dry-run"], ["quickstart", "--dry-run"], []),
        (["-h", "test"], ["-h", "test"], []),
    ],
)  # fmt: skip
def test_test_arguments_go_to_pytest_in_order(argv, own, passed):
    assert dev.split_test_args(argv) == (own, passed)


def test_dry_run_quickstart_prints_every_step_and_runs_nothing(fake_root, capsys):
    assert dev.main(["quickstart", "--dry-run"]) == 0
    out = capsys.readouterr().out
    steps = [line.strip()[2:] for line in out.splitlines() if line.strip().startswith("$ ")]
    assert steps[0] == ".venv/bin/python -m pip install -q torch==2.13.0"
    assert steps[1] == ".venv/bin/python -m pip install -q -e '.[test]' ruff==0.17.6"
    assert steps[2] == ".venv/bin/radengine pretrain --domain ct"
    recipe = "--task organs --seeds 42,1,2,3 input.size=96 input.intensity=minmax input.repeat=3 "
    linear = recipe + "linear.epochs=50 study=quickstart-"
    finetune = recipe + "--label-fraction 0.01 finetune.epochs=5 finetune.batch_size=64 study="
    assert steps[3].startswith(".venv/bin/radengine eval linear " + linear)
    assert steps[4].startswith(".venv/bin/radengine eval finetune " + finetune)
    assert steps[5].startswith(".venv/bin/radengine eval linear --init scratch " + linear)
    assert steps[6].startswith(".venv/bin/radengine eval finetune --init scratch " + finetune)
    study = steps[3].rsplit("study=", 1)[1]
    assert all(step.endswith(study) for step in steps[4:7])  # all evaluations in one report
    assert steps[7] == f".venv/bin/radengine report --study {study} --out runs/report/{study}"
    assert len(steps) == 8
    assert "create .venv" in out and "nothing was run" in out
    assert not (fake_root / ".venv").exists()


@pytest.mark.parametrize(("cores", "parallel"), [(2, "-n 2 "), (64, "-n 4 "), (1, "")])
def test_dry_run_test_is_what_ci_ran(fake_root, monkeypatch, capsys, cores, parallel):
    monkeypatch.setenv("RADENGINE_TORCH", "torch==2.13.0+cu130 --index-url https://x/cu130")
    monkeypatch.setattr(dev, "usable_cores", lambda: cores)
    assert dev.main(["test", "--dry-run", "-k", "linear"]) == 0
    out = capsys.readouterr().out
    steps = [line.strip()[2:] for line in out.splitlines() if line.strip().startswith("$ ")]
    assert steps == [
        ".venv/bin/python -m pip install -q torch==2.13.0+cu130 --index-url https://x/cu130",
        ".venv/bin/python -m pip install -q -e '.[test]' ruff==0.17.6",
        ".venv/bin/radengine info",
        ".venv/bin/ruff check .",
        ".venv/bin/ruff format --check .",
        f".venv/bin/python -m pytest -q {parallel}--durations=15 -k linear",
    ]


# ---------------------------------------------------------------------------------------------
# Steps and the venv


def test_a_failing_step_says_what_failed_and_what_to_do(monkeypatch, tmp_path):
    monkeypatch.setattr(dev, "ROOT", tmp_path)
    cmd = [sys.executable, "-c", "raise SystemExit(3)"]
    with pytest.raises(dev.BootstrapError, match=r"the step failed \(exit 3\)") as e:
        dev.run_step("the step", cmd, dry_run=False, hint="Do this.")
    assert e.value.code == 2 and str(e.value).endswith("Do this.")
    with pytest.raises(dev.BootstrapError, match="could not run") as e:
        dev.run_step("x", [str(tmp_path / "missing")], dry_run=False, hint="h", code=1)
    assert e.value.code == 1


def test_a_failing_check_of_test_exits_1_after_running_the_others(fake_root, monkeypatch, capsys):
    _installed(fake_root, dev.stamp_key(fake_root, ["torch==2.13.0"]), {"built": True})
    ran = []

    def fake_run(cmd, **kwargs):
        ran.append(cmd)
        failing = cmd[1:3] == ["format", "--check"]
        return subprocess.CompletedProcess(cmd, 1 if failing else 0)

    monkeypatch.setattr(dev.subprocess, "run", fake_run)
    assert dev.main(["test"]) == 1
    assert [c[-1] if c[-1] != "." else c[1] for c in ran][:3] == ["info", "check", "format"]
    assert ran[3][1:4] == ["-m", "pytest", "-q"] and len(ran) == 4
    err = capsys.readouterr().err
    assert "ruff format --check" in err and "format ." in err and "Traceback" not in err


def test_venv_without_ensurepip_gets_pip_from_this_pythons_pip(fake_root, monkeypatch):
    """Debian/Ubuntu without python3-venv: `python -m venv` fails; --without-pip, then
    `python -m pip --python .venv/bin/python install pip`."""
    venv = fake_root / ".venv"
    ran = []

    def fake_run(cmd, **kwargs):
        ran.append([str(c) for c in cmd])
        if cmd[1:3] == ["-m", "venv"] and "--without-pip" not in cmd:
            return subprocess.CompletedProcess(cmd, 1, "", "ensurepip is not available")
        if "--without-pip" in cmd:
            dev.venv_python(venv).parent.mkdir(parents=True)
            dev.venv_python(venv).write_text("")
        if cmd[1:] == ["-m", "pip", "--version"]:
            return subprocess.CompletedProcess(cmd, 0, "pip 24.0 from /x (python 3.11)\n", "")
        return subprocess.CompletedProcess(cmd, 0, "", "")

    monkeypatch.setattr(dev.subprocess, "run", fake_run)
    assert dev.ensure_venv(venv, dry_run=False) == dev.venv_python(venv)
    py = str(dev.venv_python(venv))
    assert ran[-1] == [sys.executable, "-m", "pip", "--python", py, "install", "-q", "pip"]
    assert "--without-pip" in ran[1]


def test_venv_without_ensurepip_and_old_pip_names_the_package_to_install(fake_root, monkeypatch):
    venv = fake_root / ".venv"

    def fake_run(cmd, **kwargs):
        if "--without-pip" in cmd:
            dev.venv_python(venv).parent.mkdir(parents=True)
            dev.venv_python(venv).write_text("")
        if cmd[1:3] == ["-m", "venv"]:
            return subprocess.CompletedProcess(cmd, 0 if "--without-pip" in cmd else 1, "", "")
        return subprocess.CompletedProcess(cmd, 0, "pip 22.0.2 from /usr/lib (python 3.10)", "")

    monkeypatch.setattr(dev.subprocess, "run", fake_run)
    minor = f"{sys.version_info[0]}.{sys.version_info[1]}"
    with pytest.raises(dev.BootstrapError, match=rf"older than 22.3.*python{minor}-venv") as e:
        dev.ensure_venv(venv, dry_run=False)
    assert e.value.code == 2
