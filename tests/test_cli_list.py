"""Finding your way in the CLI (issue #15): ``radengine list`` reads the code's registries,
``--print-config`` shows the resolved config without running anything, and every
subcommand and option has help text that shows its default."""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
from collections.abc import Iterator

import pytest
import yaml

from radengine.catalog import KINDS
from radengine.cli import build_parser, main


def run(argv: list[str], capsys) -> tuple[int, str, str]:
    """``radengine ARGV`` in-process -> (exit code, stdout, stderr)."""
    try:
        code = main(argv)
    except SystemExit as exc:  # argparse's usage errors
        code = exc.code
    out, err = capsys.readouterr()
    return code, out, err


# ----------------------------------------------------------------------------- list


def test_list_each_kind_names_what_its_registry_holds(capsys):
    from radengine.eval.config import EVAL_AUGMENT_PRESETS
    from radengine.eval.tasks import TASKS
    from radengine.models.registry import list_models
    from radengine.ops.augment import PRESETS
    from radengine.ops.hu_window import MINMAX_NAMES, NAMED_WINDOWS
    from radengine.ssl import METHODS
    from radengine.study.spec import shipped_studies

    registries = {
        "methods": [*METHODS, "simclr"],
        "archs": [*list_models(), "resnet18", "resnet50", "vit_small_patch16"],
        "presets": [*PRESETS, *EVAL_AUGMENT_PRESETS, "simclr", "ct", "none", "light"],
        "windows": [*NAMED_WINDOWS, MINMAX_NAMES[0], "soft_tissue", "lung", "bone"],
        "tasks": [*TASKS, "body_region", "organs", "segmentation"],
        "configs": [*shipped_studies(), "mini", "study_a_ct", "study_a_ctbr_linear"],
    }
    for kind, names in registries.items():
        code, out, err = run(["list", kind], capsys)
        assert code == 0 and not err, err
        assert out.startswith(f"{kind}: "), out
        listed = {line.split()[0] for line in out.splitlines() if line.startswith("  ")}
        assert set(names) <= listed, (kind, set(names) - listed)


def test_list_marks_the_defaults_and_describes_every_name(capsys):
    code, out, _ = run(["list", "methods", "archs", "windows", "tasks"], capsys)
    assert code == 0
    lines = {line.split()[0]: line for line in out.splitlines() if line.startswith("  ")}
    assert "[default: pretrain method]" in lines["simclr"]
    assert "[default: pretrain model.arch]" in lines["resnet18"]
    assert "[default: pretrain augment.intensity]" in lines["minmax"]
    assert "on CT stores" in lines["body_region"] and "[default:" in lines["body_region"]
    assert "center 40 HU, width 400 HU: -160 to 240 HU" in lines["soft_tissue"]
    assert "ResNet-50" in lines["resnet50"]


def test_list_without_a_kind_lists_every_kind_in_order(capsys):
    code, out, _ = run(["list"], capsys)
    assert code == 0
    headings = [line.split(":")[0] for line in out.splitlines() if line[:1].isalpha()]
    assert headings == list(KINDS)
    for group in ("pretrain", "eval", "studies"):  # configs, grouped by folder
        assert f"  {group}:\n" in out


def test_list_json_parses_and_carries_the_details(capsys):
    from radengine.ops.hu_window import NAMED_WINDOWS

    code, out, err = run(["list", "--json"], capsys)
    assert code == 0 and not err
    data = json.loads(out)
    assert list(data) == list(KINDS)
    for kind, rows in data.items():
        assert rows, kind
        for row in rows:
            assert row["name"] and row["description"], (kind, row)
            assert isinstance(row["default_for"], list)
    windows = {r["name"]: r for r in data["windows"]}
    for name, (center, width) in NAMED_WINDOWS.items():
        assert (windows[name]["center"], windows[name]["width"]) == (center, width)
    assert {r["name"]: r["default_for"] for r in data["methods"]}["simclr"] == ["pretrain method"]
    tasks = {r["name"]: r for r in data["tasks"]}
    assert tasks["segmentation"]["metric"] == "dice_mean"
    assert tasks["segmentation"]["default_for"] == ["eval segment"]
    configs = {r["name"]: r for r in data["configs"]}
    assert configs["mini"]["group"] == "studies"
    assert configs["study_a_ctbr_linear"]["protocol"] == "linear"
    assert configs["study_a_ct"]["path"].endswith("experiments/pretrain/study_a_ct.yaml")
    # one kind: the same shape, that kind only
    code, out, _ = run(["list", "tasks", "--json"], capsys)
    assert list(json.loads(out)) == ["tasks"]


def test_list_configs_needs_no_torch():
    code = (
        "import sys; from radengine.cli import main; main(['list', 'configs']); "
        "sys.exit(3 if 'torch' in sys.modules else 0)"
    )
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    assert proc.returncode == 0, f"torch imported (exit {proc.returncode})\n{proc.stderr}"
    assert "mini" in proc.stdout


# ----------------------------------------------------------------------------- --print-config


@pytest.fixture
def clean_cwd(monkeypatch, tmp_path):
    """An empty cwd with no MLflow URI set: anything created would show up in it."""
    monkeypatch.chdir(tmp_path)
    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    return tmp_path


def test_pretrain_print_config(capsys, clean_cwd):
    from radengine.config import load_pretrain_config

    argv = ["pretrain", "--print-config", "--domain", "natural", "optim.epochs=7"]
    code, out, err = run(argv, capsys)
    assert code == 0 and not err, err
    data = yaml.safe_load(out)
    assert data["optim"]["epochs"] == 7
    assert data["data"]["domain"] == "natural"
    assert data["tracking"]["enabled"] is True
    assert list(clean_cwd.iterdir()) == [], "--print-config created files"
    # the printed YAML is a config: fed back with --config it gives the same config
    (clean_cwd / "printed.yaml").write_text(out)
    assert load_pretrain_config(clean_cwd / "printed.yaml") == load_pretrain_config(
        None, ["data.domain=natural", "optim.epochs=7"]
    )


def test_pretrain_print_config_applies_config_flags_then_overrides(capsys, clean_cwd):
    from radengine.study.spec import experiments_dir

    config = experiments_dir() / "pretrain" / "study_a_ct_10pct.yaml"
    argv = ["pretrain", "--print-config", "--config", str(config), "--tracking", "none"]
    code, out, err = run([*argv, "--out", "elsewhere", "optim.epochs=7"], capsys)
    assert code == 0, err
    data = yaml.safe_load(out)
    assert data["study"] == "study_a" and data["data"]["fraction"] == 0.1  # YAML + _base_
    assert data["optim"]["epochs"] == 7 and data["model"]["arch"] == "resnet50"
    assert data["tracking"]["enabled"] is False and data["train"]["out"] == "elsewhere"
    assert list(clean_cwd.iterdir()) == []


@pytest.mark.parametrize("protocol", ["knn", "linear", "finetune", "segment"])
def test_eval_print_config(protocol, capsys, clean_cwd):
    key = "knn.temperature=0.2" if protocol == "knn" else f"{protocol}.epochs=7"
    argv = ["eval", protocol, "--print-config", "--init", "scratch", "--seeds", "1,2", key]
    code, out, err = run(argv, capsys)
    assert code == 0 and not err, err
    data = yaml.safe_load(out)
    assert data["protocol"] == protocol
    assert data["init"]["source"] == "scratch" and data["seeds"] == [1, 2]
    section, value = key.split("=")[0].split("."), yaml.safe_load(key.split("=")[1])
    assert data[section[0]][section[1]] == value
    assert list(clean_cwd.iterdir()) == [], "--print-config created files"
    # the printed YAML is a config: fed back with --config it prints the same
    (clean_cwd / "printed.yaml").write_text(out)
    argv = ["eval", protocol, "--print-config", "--config", str(clean_cwd / "printed.yaml")]
    assert run(argv, capsys)[1] == out


def test_print_config_with_a_bad_override_is_the_usual_error(capsys, clean_cwd):
    for argv in (
        ["pretrain", "--print-config", "optim.epoch=7"],
        ["eval", "linear", "--print-config", "linear.epoch=7"],
    ):
        code, out, err = run(argv, capsys)
        assert code == 2 and not out
        assert err.startswith("error: ") and "did you mean" in err and "Traceback" not in err
    assert list(clean_cwd.iterdir()) == []


# ----------------------------------------------------------------------------- help text


def _parsers(
    parser: argparse.ArgumentParser,
    path: tuple[str, ...] = ("radengine",),
    help_line: str | None = None,
) -> Iterator[tuple[str, argparse.ArgumentParser, str | None]]:
    """Every (command path, parser, its one-line help in its parent's list) of the tree."""
    yield " ".join(path), parser, help_line
    for action in parser._actions:
        if isinstance(action, argparse._SubParsersAction):
            helps = {a.dest: a.help for a in action._choices_actions}
            for name, sub in action.choices.items():
                yield from _parsers(sub, (*path, name), helps.get(name))


def _pipeline_bench_parser() -> argparse.ArgumentParser:
    from radengine.engine.pipeline_bench import build_parser as bench_parser

    return bench_parser()


def test_every_subcommand_and_option_has_help_and_shows_its_default():
    """Walks the parser as ``radengine.cli.main`` builds it (plus ``bench pipeline``'s own
    options): a subcommand needs a help line and a description, an option (other than -h)
    or positional a help text, and an option with a default must show it."""
    problems = []
    bench = ("radengine bench pipeline", _pipeline_bench_parser(), "pipeline")
    tree = [*_parsers(build_parser()), bench]
    for path, parser, help_line in tree:
        if path != "radengine" and help_line is None:
            problems.append(f"{path}: no help line in its parent's list")
        if not parser.description:
            problems.append(f"{path}: no description (what `{path} --help` says first)")
        formatter = parser._get_formatter()
        for action in parser._actions:
            if isinstance(action, argparse._HelpAction | argparse._SubParsersAction):
                continue
            name = "/".join(action.option_strings) or action.dest
            if not action.help:
                problems.append(f"{path} {name}: no help text")
                continue
            default = action.default
            shown = default is not None and default is not False and default != argparse.SUPPRESS
            if action.option_strings and shown:
                text = formatter._expand_help(action)
                if "default" not in text and f"({default})" not in text:
                    problems.append(f"{path} {name}: help does not show the default {default!r}")
    assert not problems, "\n".join(problems)


def test_synth_help_shows_the_defaults(capsys):
    from radengine.data.builtin import CT_DEFAULTS

    code, out, _ = run(["synth", "ct", "--help"], capsys)
    assert code == 0
    assert f"patients (default {CT_DEFAULTS['patients']})" in out
    assert f"(default {CT_DEFAULTS['seed']})" in out
    code, out, _ = run(["ui", "--help"], capsys)
    assert "Serve the MLflow UI" in out
