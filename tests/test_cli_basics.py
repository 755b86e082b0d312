"""The command line at the level a user touches it: help, options, YAML configs, bad input."""

from __future__ import annotations

import subprocess
import sys

import pytest

from partial_lora.cli import COMMANDS, build_parser, main, read_yaml_config, settings_from_args


def test_console_script_help_lists_every_command():
    result = subprocess.run([sys.executable, "-m", "partial_lora.cli", "--help"], capture_output=True, text=True)
    assert result.returncode == 0
    for command in COMMANDS:
        assert command in result.stdout


@pytest.mark.parametrize("command", list(COMMANDS))
def test_every_command_has_help(command, capsys):
    with pytest.raises(SystemExit) as info:
        main([command, "--help"])
    assert info.value.code == 0
    assert "--config" in capsys.readouterr().out


def test_yaml_config_is_read_and_flags_win(tmp_path):
    config = tmp_path / "run.yaml"
    config.write_text("learning-rate: 0.01\nseeds: 0,1,2\nmethods: [lora, partial-lora]\nrank: 4\n")
    args = build_parser().parse_args(["run", "--config", str(config), "--rank", "16"])
    settings = settings_from_args(args)
    assert settings.learning_rate == 0.01 and settings.seeds == [0, 1, 2] and settings.rank == 16
    assert settings.methods == ["lora", "partial-lora"]


def test_unknown_yaml_keys_are_refused_by_name(tmp_path):
    config = tmp_path / "bad.yaml"
    config.write_text("learning_rat: 0.01\n")
    with pytest.raises(Exception, match="learning_rat"):
        read_yaml_config(str(config), COMMANDS["run"][1])


@pytest.mark.parametrize(
    "argv, words",
    [
        (["run", "--methods", "lora,magic"], "unknown method"),
        (["run", "--threshold", "1.5"], "threshold"),
        (["train", "--method", "magic"], "method"),
        (["run", "--config", "/nonexistent.yaml"], "no such file"),
    ],
)
def test_bad_options_exit_nonzero_with_a_clear_message(argv, words, capsys):
    assert main(argv) == 2
    assert words in capsys.readouterr().err
