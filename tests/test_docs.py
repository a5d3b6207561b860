"""Every command has help text with an example, and every command and option is in the README."""

from __future__ import annotations

import re
from pathlib import Path

from typer.testing import CliRunner

from amlpromote.cli.app import app

README = (Path(__file__).resolve().parents[1] / "README.md").read_text()
COMMANDS = ["configure", "copy-model"]


def _help(*args: str) -> str:
    result = CliRunner().invoke(app, [*args, "--help"], env={"COLUMNS": "200"})
    assert result.exit_code == 0, result.output
    return result.output


def test_every_command_is_listed_in_help_and_readme() -> None:
    listed = re.findall(r"^  ([a-z][a-z-]+)\s", _help().split("Commands:")[1], re.M)
    assert sorted(listed) == sorted(COMMANDS)
    for command in COMMANDS:
        assert f"amlpromote {command}" in README, command


def test_every_option_and_env_var_is_documented() -> None:
    for command in [None, *COMMANDS]:
        text = _help(command) if command else _help()
        options = set(re.findall(r"(?<![\w-])(--[a-z][a-z-]+)", text)) - {"--help"}
        assert options, command
        for option in options:
            assert f"`{option}" in README, f"{command or 'global'} {option} missing from README"
        for env in re.findall(r"env var:\s*(AMLPROMOTE_[A-Z_]+)", text):
            assert env in README, env


def test_every_command_help_has_an_example() -> None:
    for command in COMMANDS:
        text = _help(command)
        assert "Example" in text and f"amlpromote {command}" in text, command


def test_readme_opens_with_the_two_commands() -> None:
    block = README.split("```")[1]
    assert "scripts/quickstart" in block and "scripts/test" in block
