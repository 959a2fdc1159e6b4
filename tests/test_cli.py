"""The command line of the tools that are not Hydra apps: one style, one-line mistakes."""

from __future__ import annotations

import importlib

import pytest

# Every such tool, by the module `python -m` runs.
TOOLS = [
    "src.report",
    "src.reproduce",
    "benchmarks",
    "benchmarks.seeds_loop",
    "benchmarks.variants",
    "benchmarks.sweep_launcher",
    "benchmarks.gpu",
    "benchmarks.gpu_check",
    "benchmarks.fused",
]


def tool_main(module: str):
    name = "benchmarks.__main__" if module == "benchmarks" else module
    return importlib.import_module(name).main


@pytest.mark.parametrize("module", TOOLS)
def test_a_bad_argument_is_one_line_and_exit_status_2(module, capsys):
    with pytest.raises(SystemExit) as stop:
        tool_main(module)(["--no-such-flag"])
    assert stop.value.code == 2
    captured = capsys.readouterr()
    assert captured.out == ""
    assert captured.err.count("\n") == 1 and captured.err.startswith("[ERROR] ")
    assert captured.err.endswith(f" (see python -m {module} --help)\n")


@pytest.mark.parametrize("module", TOOLS)
def test_help_shows_how_to_call_the_tool(module, capsys):
    with pytest.raises(SystemExit) as stop:
        tool_main(module)(["--help"])
    assert stop.value.code == 0
    assert capsys.readouterr().out.startswith(f"usage: python -m {module} ")


@pytest.mark.parametrize("module", ["src.reproduce", "benchmarks", "benchmarks.seeds_loop"])
def test_the_tools_that_train_take_overrides_and_out(module, capsys):
    with pytest.raises(SystemExit):
        tool_main(module)(["--help"])
    usage = capsys.readouterr().out
    assert "--out OUT" in usage and "[OVERRIDE ...]" in usage
