"""Every command shown in README.md and docs/ still works as written, at least as far as its
arguments go: train, eval and predict commands compose with Hydra (every job of a sweep), the
other tools accept their arguments, and make targets exist. A renamed key or flag fails here."""

from __future__ import annotations

import argparse
import importlib
import itertools
import os
import re
import shlex
import subprocess
from pathlib import Path

import pytest
from hydra.core.override_parser.overrides_parser import OverridesParser
from hydra.utils import instantiate

from tests.conftest import CONF, ROOT, compose_config

DOCS = [ROOT / "README.md", *sorted((ROOT / "docs").glob("*.md"))]
HYDRA_TOOLS = {"src.train": "train", "src.eval": "eval", "src.predict": "predict"}
# The local data copy's overrides, as the docs' $DATA stands for them.
DATA = "data.source=folder data.root=$HOME/.cache/cifar10-lab/cifar10-jpeg"
MAX_JOBS = 4  # sweep jobs composed per command (the first ones; they share every other key)


def shown_commands(path: Path) -> list[str]:
    """Commands in code blocks (indented or fenced, `\\` continuations joined) and in inline
    code, except table rows that show a mistake and its exit status 2 (docs/troubleshooting.md,
    tested by tests/test_faults.py)."""
    text = path.read_text()
    blocks = re.findall(r"^```\w*\n(.*?)^```", text, flags=re.S | re.M)
    blocks += re.findall(r"(?:^    .*\n?)+", text, flags=re.M)
    lines = "\n".join(blocks).replace("\\\n", " ").splitlines()
    inline = [
        span
        for row in text.splitlines()
        if not re.search(r"\|\s*2\s*\|\s*$", row)
        for span in re.findall(r"`([^`]+)`", row)
    ]
    commands = []
    for line in [*lines, *inline]:
        line = re.sub(r"\s+#.*$", "", line.strip())
        if re.match(r"(\.venv/bin/)?python3? -m |make [a-z]", line):
            commands.append(re.sub(r"^\.venv/bin/", "", line).replace("$DATA", DATA))
    return commands


def all_commands() -> list[tuple[str, str]]:
    return [(p.name, c) for p in DOCS for c in dict.fromkeys(shown_commands(p))]


def sweep_jobs(overrides: list[str]) -> list[list[str]]:
    """The jobs of a `-m` command line: one override list per combination of swept values."""
    parsed = OverridesParser.create().parse_overrides(overrides)
    axes = []
    for override in parsed:
        key = override.get_key_element()
        if override.is_sweep_override():
            axes.append([f"{key}={v}" for v in override.sweep_string_iterator()])
        else:
            axes.append([f"{key}={override.get_value_element_as_str()}"])
    return [list(job) for job in itertools.islice(itertools.product(*axes), MAX_JOBS)]


class Parsed(Exception):
    """Raised in place of running a tool, once its arguments have parsed."""


def test_the_docs_show_commands_of_every_kind():
    tools = {c.split()[2] if c.startswith("python") else "make" for _, c in all_commands()}
    assert {"src.train", "src.eval", "src.predict", "src.report", "src.reproduce", "make"} <= tools


@pytest.mark.parametrize(("doc", "command"), all_commands())
def test_command_works_as_written(doc, command, tmp_path, monkeypatch):
    monkeypatch.setenv("HOME", os.environ.get("HOME", "/root"))
    words = shlex.split(os.path.expandvars(command))
    if words[0] == "make":
        done = subprocess.run(["make", "-n", *words[1:]], cwd=ROOT, capture_output=True, text=True)
        assert done.returncode == 0, f"{doc}: {command}\n{done.stderr}"
        return
    module, args = words[2], words[3:]
    if module in HYDRA_TOOLS:
        multirun = "-m" in args
        overrides = [a for a in args if a not in ("-m", "--multirun")]
        for job in sweep_jobs(overrides) if multirun else [overrides]:
            cfg = compose_config(HYDRA_TOOLS[module], job, tmp_path / "run")
            if module == "src.train":  # the network the command would train can be built
                instantiate(cfg.model.net)
        return
    # Any other tool: its own argument parser must accept the arguments, and Hydra overrides
    # among them must compose with the training config.
    real_parse = argparse.ArgumentParser.parse_args

    def parse_then_stop(self, argv=None, namespace=None):
        raise Parsed(real_parse(self, argv, namespace))

    monkeypatch.setattr(argparse.ArgumentParser, "parse_args", parse_then_stop)
    with pytest.raises(Parsed) as parsed:
        importlib.import_module(module).main(args)
    overrides = getattr(parsed.value.args[0], "overrides", None) or []
    if overrides:
        compose_config("train", list(overrides), tmp_path / "run")


def test_the_reproduction_headline_and_table_sit_in_the_docs():
    assert "<!-- headline:start -->" in (ROOT / "README.md").read_text()
    assert "<!-- reproduce:start -->" in (ROOT / "docs" / "reproducing.md").read_text()
    assert CONF.is_dir()
