"""The shared --device / --port parsing: a plain mistake is one usage line in every command, never a traceback."""

from __future__ import annotations

import pytest
import torch

from epigraf.cli import main
from epigraf.devices import parse_device, parse_port

# Each command's arguments up to --device (files need not exist: the flag is refused while parsing).
COMMANDS = {
    "generate": ["generate", "--preset", "builtin"],
    "video": ["video", "--preset", "builtin"],
    "mesh": ["mesh", "--preset", "builtin"],
    "view": ["view", "net.safetensors"],
    "metrics": ["metrics", "net.safetensors", "--data", "data.zip"],
}


def test_auto_and_cpu_parse():
    assert parse_device("cpu") == torch.device("cpu")
    assert parse_device("auto").type == ("cuda" if torch.cuda.is_available() else "cpu")


@pytest.mark.parametrize("name", ["nonsense", "CPU", "cuda:-1", "gpu0"])
def test_unknown_device_names_are_refused(name):
    with pytest.raises(ValueError, match="is not a device; use auto, cpu, cuda"):
        parse_device(name)


def test_device_types_epigraf_does_not_run_on_are_refused():
    with pytest.raises(ValueError, match="epigraf runs on .* not meta"):
        parse_device("meta")


def test_cuda_on_a_cpu_only_torch_says_so(monkeypatch):
    monkeypatch.setattr(torch.version, "cuda", None)
    monkeypatch.setattr(torch.version, "hip", None)
    with pytest.raises(ValueError, match="CPU-only build; use --device cpu"):
        parse_device("cuda")


def test_cuda_index_beyond_the_visible_devices_is_refused(monkeypatch):
    monkeypatch.setattr(torch.version, "cuda", "12.8")
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "device_count", lambda: 2)
    assert parse_device("cuda:1") == torch.device("cuda:1")
    with pytest.raises(ValueError, match="has 2 CUDA device"):
        parse_device("cuda:2")


@pytest.mark.parametrize("text", ["0", "8000", "65535"])
def test_ports_in_range_parse(text):
    assert parse_port(text) == int(text)


@pytest.mark.parametrize(("text", "message"), [("99999", "out of range"), ("-1", "out of range"),
                                               ("http", "not a number")])
def test_bad_ports_are_refused(text, message):
    with pytest.raises(ValueError, match=message):
        parse_port(text)


def _usage_error(argv: list[str], capsys) -> str:
    with pytest.raises(SystemExit) as exit_info:
        main(argv)
    assert exit_info.value.code == 2
    err = capsys.readouterr().err
    assert "Traceback" not in err
    return err.strip().splitlines()[-1]


@pytest.mark.parametrize("command", COMMANDS)
def test_every_command_refuses_a_nonsense_device_in_one_line(command, capsys):
    line = _usage_error([*COMMANDS[command], "--device", "nonsense"], capsys)
    assert line.startswith(f"epigraf {command}: error: argument --device: 'nonsense' is not a device")


@pytest.mark.parametrize("command", COMMANDS)
def test_every_command_refuses_cuda_on_a_cpu_only_torch_in_one_line(command, capsys, monkeypatch):
    monkeypatch.setattr(torch.version, "cuda", None)
    monkeypatch.setattr(torch.version, "hip", None)
    line = _usage_error([*COMMANDS[command], "--device", "cuda"], capsys)
    assert "argument --device: cuda: this torch" in line and "CPU-only build" in line


def test_view_refuses_an_out_of_range_port_in_one_line(capsys):
    line = _usage_error(["view", "net.safetensors", "--port", "99999"], capsys)
    assert line == "epigraf view: error: argument --port: 99999 is out of range; use 0 to 65535 (0 = any free port)"


@pytest.mark.parametrize("device", ["nonsense", "cuda"])
def test_train_refuses_a_bad_device_before_creating_a_run(device, tmp_path, capsys, monkeypatch):
    monkeypatch.setattr(torch.version, "cuda", None)
    monkeypatch.setattr(torch.version, "hip", None)
    assert main(["train", "--device", device, "--out", str(tmp_path / "runs")]) == 2
    err = capsys.readouterr().err
    assert "Traceback" not in err and err.startswith("epigraf train: error: --device ")
    assert not (tmp_path / "runs").exists()
