"""`--help` answers: every option of every command says what it does, and `dataset --help` gives the format."""

from __future__ import annotations

import argparse

import pytest

from epigraf.cli import build_parser, main


def _options_without_help(parser: argparse.ArgumentParser, prefix: str) -> list[str]:
    missing = []
    for action in parser._actions:
        if isinstance(action, argparse._SubParsersAction):
            for name, sub in action.choices.items():
                missing += _options_without_help(sub, f"{prefix} {name}")
        elif not action.help and not isinstance(action, argparse._HelpAction):
            missing.append(f"{prefix} {'/'.join(action.option_strings) or action.dest}")
    return missing


def test_every_option_of_every_command_has_help_text():
    assert _options_without_help(build_parser(), "epigraf") == []


def test_invert_help_describes_the_options_a_new_user_asked_about(capsys):
    with pytest.raises(SystemExit):
        main(["invert", "--help"])
    text = " ".join(capsys.readouterr().out.split())
    for described in ("--device DEVICE auto, cpu, cuda", "learning rate of the generator's pivotal tuning",
                      "frames of the novel-view video", "frames per second of the video"):
        assert described in text


def test_dataset_help_describes_the_format(capsys):
    with pytest.raises(SystemExit):
        main(["dataset", "--help"])
    text = capsys.readouterr().out
    assert 'The dataset format (docs/cameras.md, "Dataset format")' in text
    assert '"camera_angles"' in text and '"labels"' in text and "[yaw, pitch, roll]" in text
