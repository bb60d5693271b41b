"""atomic_write: the final name holds either the old file or the whole new one, never a torn one; the one cache
folder."""

from __future__ import annotations

import logging
import os
import stat
from pathlib import Path

import pytest
import torch

from epigraf.files import atomic_write, cache_dir, default_file_mode


def test_a_finished_write_replaces_the_file_and_leaves_no_temporary(tmp_path):
    target = tmp_path / "sub" / "out.bin"
    with atomic_write(target) as tmp:
        assert tmp.parent == target.parent and not target.exists()
        tmp.write_bytes(b"new")
    assert target.read_bytes() == b"new"
    assert sorted(p.name for p in target.parent.iterdir()) == ["out.bin"]


def test_a_failed_write_keeps_the_old_file_and_removes_the_temporary(tmp_path):
    target = tmp_path / "out.bin"
    target.write_bytes(b"old")
    with pytest.raises(RuntimeError, match="disk full"), atomic_write(target) as tmp:
        tmp.write_bytes(b"half")
        raise RuntimeError("disk full")
    assert target.read_bytes() == b"old"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["out.bin"]


def test_files_get_the_mode_of_ordinary_new_files_whatever_the_writer(tmp_path):
    """safetensors creates its files 0600; written through atomic_write they match every other file (0644 under
    umask 022), so a run folder is uniformly readable."""
    from safetensors.torch import save_file

    plain = tmp_path / "plain.json"
    plain.write_text("{}")
    with atomic_write(tmp_path / "net.safetensors") as tmp:
        save_file({"w": torch.zeros(1)}, str(tmp))
    mode = stat.S_IMODE((tmp_path / "net.safetensors").stat().st_mode)
    assert mode == stat.S_IMODE(plain.stat().st_mode) == default_file_mode()


def test_default_file_mode_follows_the_umask():
    previous = os.umask(0o077)
    try:
        assert default_file_mode() == 0o600 and os.umask(0o077) == 0o077
    finally:
        os.umask(previous)


def test_the_tests_cache_lies_in_a_temporary_folder(caches_in_a_temporary_folder):
    """conftest points every cache at the session's temporary folder: no test writes into ~/.cache."""
    assert cache_dir().is_relative_to(caches_in_a_temporary_folder)
    from epigraf.data.builtin import default_dir
    from epigraf.metrics.fid import default_cache_dir

    assert default_cache_dir() == cache_dir() and default_dir().parent == cache_dir()
    assert Path(os.environ["XDG_CACHE_HOME"]).is_relative_to(caches_in_a_temporary_folder)


def test_one_cache_variable_and_the_old_name_is_deprecated(tmp_path, monkeypatch, caplog):
    monkeypatch.delenv("EPIGRAF_CACHE", raising=False)
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "xdg"))
    assert cache_dir() == tmp_path / "xdg" / "epigraf"
    monkeypatch.setenv("EPIGRAF_CACHE", str(tmp_path / "new"))
    assert cache_dir() == tmp_path / "new"
    with caplog.at_level(logging.WARNING, logger="epigraf.files"):
        monkeypatch.delenv("EPIGRAF_CACHE")
        monkeypatch.setenv("EPIGRAF_CACHE_DIR", str(tmp_path / "old"))
        assert cache_dir() == tmp_path / "old"
        old = tmp_path / "old"
        assert f"EPIGRAF_CACHE_DIR is deprecated and will be removed: use EPIGRAF_CACHE={old}" in caplog.text
        monkeypatch.setenv("EPIGRAF_CACHE", str(tmp_path / "new"))
        assert cache_dir() == tmp_path / "new"
        assert f"(set too, so EPIGRAF_CACHE_DIR={tmp_path / 'old'} is ignored)" in caplog.text
