"""Every command has help text with an example, and every command and option is in the README."""

from __future__ import annotations

import re
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import typer
from typer.testing import CliRunner

from amlpromote.cli.app import app

README = (Path(__file__).resolve().parents[1] / "README.md").read_text()
COMMANDS = ["configure", "copy-model", "models", "deploy", "endpoints", "score"]
# Commands of a command group, each with its own options and examples.
SUBCOMMANDS = [("models", "list"), ("models", "show"),
               *(("endpoints", c) for c in ("list", "show", "delete", "logs", "traffic",
                                             "invoke", "keys"))]


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
    for command in [None, *COMMANDS, *SUBCOMMANDS]:
        if isinstance(command, tuple):
            text = _help(*command)
        else:
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
    for words in SUBCOMMANDS:
        text = _help(*words)
        assert "Example" in text and f"amlpromote {' '.join(words)}" in text, words


def test_every_declared_option_and_variable_is_in_the_readme() -> None:
    # From the commands' own declarations, not their help text: a name the help wraps across
    # lines (at any width) is still seen.
    for path, command in _commands(typer.main.get_command(app)):
        for param in getattr(command, "params", []):
            names = [n for n in getattr(param, "opts", []) if n.startswith("--")]
            for option in set(names) - {"--help"}:
                assert f"`{option}" in README, f"{' '.join(path)} {option} missing from README"
            envvar = getattr(param, "envvar", None)
            for env in [envvar] if isinstance(envvar, str) else list(envvar or []):
                assert env in README, f"{' '.join(path)} {env} missing from README"
    # Variables the options read themselves (output, quiet, verbose are resolved by make_output).
    from amlpromote.core import settings

    for env in re.findall(r"AMLPROMOTE_[A-Z_]+", Path(settings.__file__).read_text()):
        assert env in README, f"{env} (core/settings.py) missing from README"


def test_readme_opens_with_the_two_commands() -> None:
    block = README.split("```")[1]
    assert "scripts/quickstart" in block and "scripts/test" in block


def _commands(command: Any, path: tuple[str, ...] = ()) -> Iterator[tuple[tuple[str, ...], Any]]:
    yield path, command
    for name, sub in sorted(getattr(command, "commands", {}).items()):
        yield from _commands(sub, (*path, name))


def _verbatim_lines(help_text: str) -> list[str]:
    """The lines of the help's \\b paragraphs: synopses and examples, shown as written."""
    lines: list[str] = []
    for paragraph in re.split(r"\n\s*\n", help_text):
        first, _, rest = paragraph.partition("\n")
        if first.strip() == "\b":
            lines += [line.strip() for line in rest.splitlines() if line.strip()]
    return lines


@pytest.mark.parametrize("columns", ["40", "80", "200"])
def test_help_shows_synopses_and_examples_as_written(columns: str) -> None:
    for path, command in _commands(typer.main.get_command(app)):
        source = command.help or ""
        examples = [line for line in source.splitlines() if line.strip().startswith("amlpromote ")]
        verbatim = _verbatim_lines(source)
        name = " ".join(path) or "amlpromote"
        # Every example line of the source is in a verbatim paragraph, so it cannot be rewrapped.
        assert {line.strip() for line in examples} <= set(verbatim), name
        result = CliRunner().invoke(app, [*path, "--help"], env={"COLUMNS": columns})
        assert result.exit_code == 0, result.output
        shown = [line.strip() for line in result.output.splitlines()]
        for line in verbatim:
            assert line in shown, f"{name} --help at {columns} columns rewrapped {line!r}"
        # A continuation backslash ends its line; one inside a line is a rewrapped example.
        assert not re.search(r"\\ \S", result.output), f"{name} --help at {columns} columns"


def _examples(help_text: str) -> list[list[str]]:
    """The help's example command lines as words, continuation backslashes joined."""
    import shlex

    joined = re.sub(r"\\\s*\n\s*", " ", help_text)
    return [shlex.split(line.strip()) for line in joined.splitlines()
            if line.strip().startswith("amlpromote ")]


def _parse(root: Any, words: list[str]) -> None:
    """Read `words` (an amlpromote command line) as Click does, without running the command."""
    target, rest = root, words[1:]
    while rest and rest[0] in getattr(target, "commands", {}):
        target, rest = target.commands[rest[0]], rest[1:]
    assert not getattr(target, "commands", None), words
    try:
        target.make_context(" ".join(words[:len(words) - len(rest)]), list(rest))
    except Exception as exc:  # Click's usage errors carry the reason
        pytest.fail(f"{' '.join(words)}: {exc}")


def test_every_help_and_readme_example_parses_with_the_commands_options() -> None:
    # Each example is read by the command it names, as Click reads a command line (its
    # options, their values, their checks), without running it: a renamed or dropped option,
    # or a value out of bounds, in an example fails here.
    root = typer.main.get_command(app)
    helps = [words for _, command in _commands(root) for words in _examples(command.help or "")]
    assert len(helps) >= len(COMMANDS) + len(SUBCOMMANDS)
    blocks = "\n".join(re.findall(r"```(?:bash|sh)?\n(.*?)```", README, re.S))
    readme = [words[:next((i for i, w in enumerate(words) if w in ("|", ">", "2>")),
                          len(words))]
              for words in _examples(re.sub(r"\s#.*", "", blocks))
              # (a line of output shown in a block is not a command line)
              if len(words) > 1 and words[1] in getattr(root, "commands", {})]
    assert len(readme) >= 10
    for words in [*helps, *readme]:
        _parse(root, words)
    with pytest.raises(pytest.fail.Exception, match="No such option"):
        _parse(root, ["amlpromote", "deploy", "m/1", "--endpoint", "e", "--no-such-option"])
