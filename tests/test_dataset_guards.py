"""Dataset folders and conversions never reach outside what the user named: links out of the root or into
loops are not walked, and a conversion never writes over its source or, without --force, an existing file."""

from __future__ import annotations

import logging
import os
import zipfile

import pytest

from epigraf.cli import main
from epigraf.data.convert import convert_dataset
from epigraf.data.sources import open_source
from test_dataset import make_images


def test_folder_links_out_of_the_root_or_into_loops_are_not_walked(tmp_path, caplog):
    root = tmp_path / "data"
    names = make_images(root / "a", 3)
    make_images(tmp_path / "elsewhere", 2)
    os.symlink(".", root / "loop")
    os.symlink("..", root / "a" / "up")
    os.symlink(tmp_path / "elsewhere", root / "outside")
    os.symlink("a", root / "again")
    os.symlink(root / "a" / names[0], root / "linked.png")  # links to files are followed
    with caplog.at_level(logging.WARNING, logger="epigraf.data.sources"):
        images = open_source(root).images()
    assert images == [f"a/{n}" for n in names] + ["linked.png"]
    messages = " ".join(r.getMessage() for r in caplog.records)
    assert messages.count("back into the dataset") == 3 and messages.count("out of the dataset folder") == 1


def test_convert_refuses_to_write_over_its_source(tmp_path, capsys):
    make_images(tmp_path / "raw", 3)
    assert main(["dataset", "convert", str(tmp_path / "raw"), str(tmp_path / "data.zip")]) == 0
    before = (tmp_path / "data.zip").read_bytes()
    for force in ([], ["--force"]):
        assert main(["dataset", "convert", str(tmp_path / "data.zip"), str(tmp_path / "data.zip"), *force]) == 2
        assert f"the output {tmp_path / 'data.zip'} is the input" in capsys.readouterr().err
    assert (tmp_path / "data.zip").read_bytes() == before


def test_convert_replaces_an_existing_output_only_with_force(tmp_path, capsys):
    make_images(tmp_path / "raw", 3)
    out = tmp_path / "out.zip"
    out.write_bytes(b"the user's file")
    with pytest.raises(ValueError, match=f"{out} already exists: pass --force to replace it"):
        convert_dataset(tmp_path / "raw", out, None)
    assert out.read_bytes() == b"the user's file"
    assert main(["dataset", "convert", str(tmp_path / "raw"), str(out), "--force"]) == 0
    assert len([n for n in zipfile.ZipFile(out).namelist() if n.endswith(".png")]) == 3
