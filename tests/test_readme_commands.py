"""Every ``partial-lora ...`` command line in README.md parses with the real parser (parsed, never run)."""

from __future__ import annotations

import argparse
import re
import shlex
from pathlib import Path

import pytest

from partial_lora.cli import build_parser

README = Path(__file__).resolve().parents[1] / "README.md"
PROGRAM = re.compile(r"^(?:\S*/)?partial-lora$")  # partial-lora, .venv/bin/partial-lora


def code_lines(text: str) -> list[str]:
    """Lines of the code blocks: fenced with ``` or indented by four spaces, continuations joined."""
    lines, fenced, pending = [], False, ""
    for line in text.splitlines():
        if line.strip().startswith("```"):
            fenced = not fenced
            continue
        if not (fenced or line.startswith("    ")):
            continue
        line = pending + line.strip()
        if line.endswith("\\"):
            pending = line[:-1] + " "
            continue
        pending = ""
        lines.append(line)
    return lines


def readme_commands() -> list[list[str]]:
    """The arguments of every ``partial-lora`` call, also after ``&&`` in a shell line."""
    commands = []
    for line in code_lines(README.read_text(encoding="utf-8")):
        for part in line.split("&&"):
            words = shlex.split(part, comments=True)
            if words and PROGRAM.match(words[0]):
                commands.append(words[1:])
    return commands


COMMANDS = readme_commands()


def test_the_readme_shows_every_subcommand():
    shown = {words[0] for words in COMMANDS if words}
    assert shown >= {"run", "ticket", "train", "eval", "export", "merge", "compare"}


def subcommand_options(parser: argparse.ArgumentParser, command: str) -> set[str]:
    (subparsers,) = [a for a in parser._actions if isinstance(a, argparse._SubParsersAction)]
    return set(subparsers.choices[command]._option_string_actions)


@pytest.mark.parametrize("words", COMMANDS, ids=[" ".join(w)[:60] for w in COMMANDS])
def test_a_readme_command_line_parses(words, capsys):
    parser = build_parser()
    shown = f"README.md shows `partial-lora {' '.join(words)}`"
    try:
        parser.parse_args(words)
    except SystemExit:
        pytest.fail(f"{shown}, which the parser refuses: {capsys.readouterr().err.strip()}")
    # argparse also takes abbreviations (--thresh for --threshold): the README must spell options out.
    flags = {word.split("=")[0] for word in words if word.startswith("--")}
    assert flags <= subcommand_options(parser, words[0]), f"{shown}: abbreviated or unknown options"
