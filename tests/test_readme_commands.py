"""Every `p2p` command README and docs/ show (their code blocks and README's Common jobs table;
under torchrun too) is accepted by that command's real parser, and its config overrides by the
config schema: a renamed flag or key breaks this test, not a newcomer's first job. Nothing is
run."""

from __future__ import annotations

import argparse
import importlib
import re
import shlex
from pathlib import Path

import pytest

from p2p.cli import COMMANDS
from p2p.config import config_from_args

ROOT = Path(__file__).resolve().parents[1]
CONFIG_COMMANDS = ("train", "submit", "config")  # their positionals are a preset and overrides


def shown_commands(md: Path, table_rows: bool = False) -> list[str]:
    text = md.read_text()
    lines = []
    for block in re.findall(r"^```bash\n(.*?)^```", text, flags=re.S | re.M):
        lines += block.replace("\\\n", " ").splitlines()
    if table_rows:  # README's Common jobs: the first command of a row
        lines += re.findall(r"^\|[^|]*\| `([^`]+)`", text, flags=re.M)
    commands = []
    for line in lines:
        line = line.split(" #")[0].strip().removesuffix(" ...")  # "..." stands for keys left out
        m = re.search(r"(?:^|-m )p2p (.*)", line)
        if m and not line.startswith("#"):
            commands.append("p2p " + m.group(1))
    return sorted(set(commands))


def readme_commands() -> list[str]:
    return shown_commands(ROOT / "README.md", table_rows=True)


def docs_commands() -> list[str]:
    return sorted(set().union(*(shown_commands(md) for md in (ROOT / "docs").glob("*.md"))))


def parse(command: str) -> argparse.Namespace:
    """The Namespace `p2p.cli.main` would run with (as main builds it), or pytest.fail."""
    name, *rest = shlex.split(command)[1:]
    module = importlib.import_module(COMMANDS[name][0])
    parser = argparse.ArgumentParser(prog=f"p2p {name}", exit_on_error=False)
    (getattr(module, f"add_{name}_arguments", None) or module.add_arguments)(parser)
    nested = any(a.nargs in (argparse.PARSER, argparse.REMAINDER) for a in parser._actions)
    try:
        args = parser.parse_args(rest) if nested else parser.parse_intermixed_args(rest)
    except (SystemExit, argparse.ArgumentError) as e:
        pytest.fail(f"README's `{command}` does not parse: {e}")
    if name in CONFIG_COMMANDS:
        config_from_args([str(ROOT / a) if a.endswith(".yaml") else a for a in args.args])
    return args


def test_readme_shows_the_commands_of_every_common_job():
    names = {shlex.split(c)[1] for c in readme_commands()}
    assert {"shard", "train", "submit", "eval", "export", "predict", "bench", "jobs"} <= names


@pytest.mark.parametrize("command", readme_commands())
def test_readme_command_parses(command):
    parse(command)


@pytest.mark.parametrize("command", sorted(set(docs_commands()) - set(readme_commands())))
def test_docs_command_parses(command):
    parse(command)


def test_a_wrong_flag_or_key_fails():
    with pytest.raises(pytest.fail.Exception):
        parse("p2p eval ckpt.pt --dataset photos/")
    with pytest.raises(Exception, match="slurm.nodes"):
        parse("p2p submit slurm.nodez=2")
