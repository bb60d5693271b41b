"""atomic_write: the final name holds either the old file or the whole new one, never a torn one."""

from __future__ import annotations

import os
import stat

import pytest
import torch

from epigraf.files import atomic_write, default_file_mode


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
