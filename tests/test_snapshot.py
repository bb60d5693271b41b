"""The safe reader of the original's snapshot pickles (docs/method.md §12.3, docs/snapshot-format.md)."""

from __future__ import annotations

import collections
import io
import json
import os
import pickle
import pickletools
import re
import struct
import subprocess
import sys
import types
import warnings
from collections import OrderedDict
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch
from torch import Tensor

from epigraf.compat.snapshot_reader import read_original_snapshot, read_original_state_dict
from epigraf.compat.unpickler import SnapshotFormatError, UnsafePickleError


@pytest.fixture(scope="module")
def original_dir() -> Path:
    from conftest import original_fixtures_root

    return original_fixtures_root()


def _load_safetensors(path: Path) -> dict[str, Tensor]:
    from safetensors.torch import load_file

    return load_file(path)


def _assert_bit_exact(ours: dict[str, Tensor], ref: dict[str, Tensor]) -> None:
    assert set(ours) == set(ref)
    for key, value in ref.items():
        assert ours[key].dtype == value.dtype, key
        assert ours[key].shape == value.shape, key
        assert torch.equal(ours[key], value), key


def _order_signature(keys: list[str]) -> tuple[list[str], list[str]]:
    """Block names in order of appearance, and key templates (block names blanked) in order of appearance.

    The tiny fixture has fewer blocks than a preset but the same module layout, so its state-dict
    order must agree with the presets' on both.
    """
    blocks = list(dict.fromkeys(m.group() for k in keys if (m := re.search(r"\bb\d+\b", k))))
    templates = list(dict.fromkeys(re.sub(r"\bb\d+\b", "b#", k) for k in keys))
    return blocks, templates


# --- the original's own snapshot ---------------------------------------------------------------------


def test_tiny_snapshot_matches_state_dicts(original_dir: Path) -> None:
    snap = read_original_snapshot(original_dir / "tiny_snapshot.pkl")
    _assert_bit_exact(snap.G_ema, _load_safetensors(original_dir / "tiny_G.safetensors"))
    _assert_bit_exact(snap.D, _load_safetensors(original_dir / "tiny_D.safetensors"))
    _assert_bit_exact(snap.G, _load_safetensors(original_dir / "tiny_snapshot_G.safetensors"))
    assert any(not torch.equal(snap.G[k], snap.G_ema[k]) for k in snap.G)
    for state in (snap.G, snap.G_ema, snap.D):
        assert all(
            type(v) is Tensor and v.device.type == "cpu" and not v.requires_grad for v in state.values()
        )


def test_tiny_snapshot_key_order_is_state_dict_order(original_dir: Path) -> None:
    # The safetensors files list keys sorted; keys_<preset>.json keeps the original state_dict() order.
    snap = read_original_snapshot(original_dir / "tiny_snapshot.pkl")
    preset = json.loads((original_dir / "keys_ffhq256.json").read_text())
    for ours, name in ((snap.G_ema, "G"), (snap.G, "G"), (snap.D, "D")):
        ref_blocks, ref_templates = _order_signature([e["key"] for e in preset[name]["entries"]])
        blocks, templates = _order_signature(list(ours))
        assert templates == ref_templates, name
        assert blocks == [b for b in ref_blocks if b in blocks], name
    assert list(snap.G_ema)[:2] == [
        "synthesis.tri_plane_decoder.b4.const",
        "synthesis.tri_plane_decoder.b4.resample_filter",
    ]
    assert list(snap.D)[-2:] == ["b4.out.weight", "b4.out.bias"]


def test_tiny_snapshot_metadata(original_dir: Path) -> None:
    snap = read_original_snapshot(original_dir / "tiny_snapshot.pkl")
    assert snap.augment_p == 0.0
    assert snap.stats["cur_nimg"] == 4000
    assert snap.stats["best_metric_value"] == float("inf")
    assert snap.training_set_kwargs["resolution"] == 32
    assert snap.training_set_kwargs["class_name"] == "src.training.dataset.ImageFolderDataset"


def test_read_original_state_dict_safetensors(original_dir: Path) -> None:
    ref = _load_safetensors(original_dir / "tiny_G.safetensors")
    ours = read_original_state_dict(original_dir / "tiny_G.safetensors")
    assert list(ours) == list(ref)
    _assert_bit_exact(ours, ref)


# --- plain state-dict files -----------------------------------------------------------------------------


def test_read_original_state_dict_torch_files(tmp_path: Path) -> None:
    g = {"mapping.fc0.weight": torch.randn(4, 3), "mapping.w_avg": torch.randn(4)}
    d = {"b4.out.weight": torch.nn.Parameter(torch.randn(1, 4)), "b4.out.bias": torch.zeros(1)}
    torch.save(g, tmp_path / "g.pth")
    torch.save({"G": g, "G_ema": g, "D": d}, tmp_path / "all.pt")

    flat = read_original_state_dict(tmp_path / "g.pth")
    assert list(flat) == list(g)
    _assert_bit_exact(flat, g)
    picked = read_original_state_dict(tmp_path / "all.pt", which="D")
    assert list(picked) == list(d)
    assert all(type(v) is Tensor for v in picked.values())
    _assert_bit_exact(picked, {k: v.detach() for k, v in d.items()})
    _assert_bit_exact(read_original_state_dict(tmp_path / "all.pt"), g)
    with pytest.raises(ValueError, match="which"):
        read_original_state_dict(tmp_path / "all.pt", which="E")


@pytest.mark.filterwarnings("ignore:Detected pickle protocol")
def test_read_original_state_dict_rejects_snapshot_pickle(tmp_path: Path) -> None:
    path = tmp_path / "network-snapshot.pkl"
    path.write_bytes(pickle.dumps({"G_ema": {}}))
    with pytest.raises(SnapshotFormatError, match="read_original_snapshot"):
        read_original_state_dict(path)


# --- refusing foreign globals ---------------------------------------------------------------------------


class _Call:
    """Pickles as a call of ``func(*args)``: the shape of every code-execution payload."""

    def __init__(self, func: Any, *args: Any) -> None:
        self.func, self.args = func, args

    def __reduce__(self) -> tuple[Any, tuple[Any, ...]]:
        return self.func, self.args


def _marker_script(marker: Path) -> str:
    return f"open({str(marker)!r}, 'w').close()"


def _os_system_payload(marker: Path) -> bytes:
    # Hand-written protocol-0 stream, because the pickler would name os.system by its home 'posix'.
    return b"cos\nsystem\n(V" + f"touch {marker}".encode() + b"\ntR."


def _snapshot_wrapping(payload: Any) -> bytes:
    # The payload hides deep inside an otherwise well-formed record, as in a tampered snapshot.
    return pickle.dumps({"G_ema": {"type": "class", "state": {"_parameters": {"w": payload}}}}, protocol=4)


@pytest.mark.parametrize(
    ("make", "name"),
    [
        (_os_system_payload, "os.system"),
        (lambda m: pickle.dumps(_Call(eval, _marker_script(m))), "builtins.eval"),
        (lambda m: pickle.dumps(_Call(subprocess.Popen, ["touch", str(m)])), "subprocess.Popen"),
        (lambda m: _snapshot_wrapping(_Call(exec, _marker_script(m))), "builtins.exec"),
        (lambda m: _snapshot_wrapping(_Call(os.system, f"touch {m}")), f"{os.system.__module__}.system"),
    ],
)
def test_foreign_global_is_refused_and_not_run(tmp_path: Path, make: Any, name: str) -> None:
    marker = tmp_path / "executed"
    path = tmp_path / "evil.pkl"
    path.write_bytes(make(marker))
    with pytest.raises(UnsafePickleError, match=re.escape(name)) as info:
        read_original_snapshot(path)
    assert info.value.global_name == name
    assert isinstance(info.value, ValueError)
    assert not marker.exists()


def test_payload_is_live_under_plain_pickle(tmp_path: Path) -> None:
    # Control for the test above: the same bytes do run code when loaded without restrictions.
    marker = tmp_path / "executed"
    pickle.loads(pickle.dumps(_Call(eval, _marker_script(marker))))
    assert marker.exists()


def test_payload_inside_embedded_storage_bytes_is_refused(tmp_path: Path) -> None:
    # The original decodes embedded storages with an unrestricted torch.load; this one must not.
    marker = tmp_path / "executed"
    inner = io.BytesIO()
    torch.save(_Call(eval, _marker_script(marker)), inner, _use_new_zipfile_serialization=False)
    path = tmp_path / "evil.pkl"
    path.write_bytes(_snapshot_wrapping(_Call(torch.storage._load_from_bytes, inner.getvalue())))
    with pytest.raises(UnsafePickleError, match="_load_from_bytes"):
        read_original_snapshot(path)
    assert not marker.exists()


def test_persistent_ids_are_refused(tmp_path: Path) -> None:
    class Pickler(pickle.Pickler):
        def persistent_id(self, obj: Any) -> Any:
            return "ref" if obj == "external" else None

    buf = io.BytesIO()
    Pickler(buf, protocol=4).dump({"G_ema": "external"})
    path = tmp_path / "pid.pkl"
    path.write_bytes(buf.getvalue())
    with pytest.raises(UnsafePickleError, match="persistent id"):
        read_original_snapshot(path)


# --- files that are not snapshots -----------------------------------------------------------------------


def test_plain_dict_is_not_a_snapshot(tmp_path: Path) -> None:
    path = tmp_path / "plain.pkl"
    path.write_bytes(pickle.dumps({"G": None, "stats": {}}))
    with pytest.raises(SnapshotFormatError, match="not a network snapshot.*G_ema"):
        read_original_snapshot(path)


@pytest.mark.parametrize(
    ("content", "message"),
    [(b"not a pickle at all", "not a readable pickle"), (pickle.dumps([1, 2]), "holds a list")],
)
def test_other_files_are_not_snapshots(tmp_path: Path, content: bytes, message: str) -> None:
    path = tmp_path / "other.pkl"
    path.write_bytes(content)
    with pytest.raises(SnapshotFormatError, match=message):
        read_original_snapshot(path)


def test_torch_zip_checkpoint_is_not_a_snapshot(tmp_path: Path) -> None:
    path = tmp_path / "weights.pt"
    torch.save({"G_ema": {"w": torch.zeros(1)}}, path)
    with pytest.raises(SnapshotFormatError, match="read_original_state_dict"):
        read_original_snapshot(path)


# --- a GPU-era snapshot written by older code -----------------------------------------------------------
#
# Built with the stdlib pickler: the objects below reduce to the same globals the original emits, under
# the module names of numpy < 2 and of StyleGAN-derived code, and the storages are legacy torch files
# that record a CUDA device.


def _legacy_storage_bytes(storage_of: Tensor, location: str) -> bytes:
    """``storage_of``'s storage as a legacy-format torch file, with its device tag rewritten."""
    buf = io.BytesIO()
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message="TypedStorage is deprecated")
        torch.save(storage_of.storage(), buf, _use_new_zipfile_serialization=False)
    data = buf.getvalue()
    # A legacy file is five pickles in a row (magic, protocol, sys info, the object, storage keys)
    # followed by raw storage bytes. The location string sits in the persistent id of the fourth.
    stream = io.BytesIO(data)
    for _ in range(3):
        for _op in pickletools.genops(stream):
            pass
    ops = list(pickletools.genops(stream))
    assert "FRAME" not in {op.name for op, _, _ in ops}, "framed pickles would need their lengths fixed"
    [pos] = [pos for op, arg, pos in ops if op.name == "BINUNICODE" and arg == "cpu"]
    old = b"X" + struct.pack("<I", 3) + b"cpu"
    assert data[pos : pos + len(old)] == old
    new = b"X" + struct.pack("<I", len(location)) + location.encode()
    return data[:pos] + new + data[pos + len(old) :]


class _Storage:
    """A storage as the original pickles it: ``torch.storage._load_from_bytes(<legacy file>)``."""

    def __init__(self, base: Tensor, location: str = "cuda:0") -> None:
        self.base = base
        self.data = _legacy_storage_bytes(base, location)

    def __reduce__(self) -> tuple[Any, tuple[bytes]]:
        return torch.storage._load_from_bytes, (self.data,)


class _Tensor:
    """A tensor view of a ``_Storage``, pickled through ``torch._utils._rebuild_tensor_v2``."""

    def __init__(self, storage: _Storage, view: Tensor) -> None:
        assert view.untyped_storage().data_ptr() == storage.base.untyped_storage().data_ptr()
        self.storage, self.view = storage, view

    def __reduce__(self) -> tuple[Any, tuple[Any, ...]]:
        v = self.view
        return torch._utils._rebuild_tensor_v2, (
            self.storage,
            v.storage_offset(),
            tuple(v.shape),
            v.stride(),
            False,
            OrderedDict(),
        )


class _Parameter:
    def __init__(self, tensor: _Tensor) -> None:
        self.tensor = tensor

    def __reduce__(self) -> tuple[Any, tuple[Any, ...]]:
        return torch._utils._rebuild_parameter, (self.tensor, True, OrderedDict())


def _tensor(value: Tensor) -> _Tensor:
    return _Tensor(_Storage(value), value)


def _parameter(value: Tensor) -> _Parameter:
    return _Parameter(_tensor(value))


def _module_state(
    parameters: dict[str, Any],
    buffers: dict[str, Any] | None = None,
    modules: dict[str, Any] | None = None,
    non_persistent: frozenset[str] = frozenset(),
    **attributes: Any,
) -> dict[str, Any]:
    hooks = ("_backward_hooks", "_forward_hooks", "_forward_pre_hooks", "_state_dict_hooks")
    return {
        "training": True,
        "_parameters": parameters,
        "_buffers": buffers or {},
        "_non_persistent_buffers_set": set(non_persistent),
        **{hook: OrderedDict() for hook in hooks},
        "_modules": modules or {},
        **attributes,
    }


def _old_modules() -> dict[str, types.ModuleType]:
    """Stand-ins for the modules an older writer imported, so that the pickler names them."""

    def module(name: str, **members: Any) -> types.ModuleType:
        mod = types.ModuleType(name)
        for member_name, member in members.items():
            member.__module__, member.__qualname__ = name, member_name
            setattr(mod, member_name, member)
        return mod

    def _reconstruct_persistent_obj(meta: dict[str, Any]) -> Any:
        raise AssertionError("the reader called the original's reconstruction")

    class EasyDict(dict):
        pass

    def scalar(*args: Any) -> Any:
        raise AssertionError("the reader called the test's numpy stand-in")

    def _reconstruct(*args: Any) -> Any:
        raise AssertionError("the reader called the test's numpy stand-in")

    return {
        "torch_utils": module("torch_utils"),
        "torch_utils.persistence": module(
            "torch_utils.persistence", _reconstruct_persistent_obj=_reconstruct_persistent_obj
        ),
        "dnnlib": module("dnnlib"),
        "dnnlib.util": module("dnnlib.util", EasyDict=EasyDict),
        "numpy.core.multiarray": module("numpy.core.multiarray", scalar=scalar, _reconstruct=_reconstruct),
    }


class _Persistent:
    """A persistent-object record; its ``module_src`` would leave a marker file if it were executed."""

    def __init__(self, reconstruct: Any, class_name: str, state: dict[str, Any], marker: Path) -> None:
        self.reconstruct = reconstruct
        self.meta = {
            "type": "class",
            "version": 6,
            "module_src": _marker_script(marker),
            "class_name": class_name,
            "state": state,
        }

    def __reduce__(self) -> tuple[Any, tuple[dict[str, Any]]]:
        return self.reconstruct, (self.meta,)


def _bare(cls: type, state: dict[str, Any]) -> Any:
    """A real instance with ``state`` as its attributes: pickles as class global, NEWOBJ and BUILD."""
    obj = cls.__new__(cls)
    obj.__dict__.update(state)
    return obj


class _NumpyOld:
    """A numpy array or scalar pickled under numpy < 2's module name."""

    def __init__(self, func: Any, value: Any) -> None:
        self.func, self.value = func, value

    def __reduce__(self) -> tuple[Any, ...]:
        return (self.func, *self.value.__reduce__()[1:])


def _gpu_era_snapshot(marker: Path, mods: dict[str, types.ModuleType]) -> tuple[bytes, dict[str, Any]]:
    """Pickle a snapshot of three small networks; return its bytes and the expected state dicts."""
    persistent = mods["torch_utils.persistence"]._reconstruct_persistent_obj
    old_np = mods["numpy.core.multiarray"]
    gen = torch.Generator().manual_seed(0)

    def net(scale: float) -> tuple[Any, OrderedDict[str, Tensor], list[_Parameter]]:
        base = torch.randn(5, 6, generator=gen) * scale
        shared = _Storage(base)
        # A transposed view at an offset, sharing its storage with a second tensor (memoised once).
        weight = _Parameter(_Tensor(shared, base[1:4, 2:5].t()))
        row = _Tensor(shared, base[4])
        bias = _parameter(torch.arange(3.0) * scale)
        embed = _parameter(torch.randn(7, 2, generator=gen))
        w_avg = torch.randn(3, generator=gen)
        fc = _Persistent(
            persistent,
            "FullyConnectedLayer",
            _module_state(
                {"weight": weight, "bias": bias, "unused": None},
                {"w_avg": _tensor(w_avg), "cache": _tensor(torch.ones(2)), "row": row},
                non_persistent=frozenset({"cache"}),
                weight_gain=_NumpyOld(old_np.scalar, np.float64(0.25)),
                _init_kwargs=mods["dnnlib.util"].EasyDict(lr_multiplier=0.01),
            ),
            marker,
        )
        body = _bare(torch.nn.Sequential, _module_state({}, modules={"0": fc, "1": None}))
        emb = _bare(torch.nn.Embedding, _module_state({"weight": embed}, num_embeddings=7))
        root = _Persistent(
            persistent, "Generator", _module_state({}, modules={"mlp": body, "embed": emb}), marker
        )
        expected = OrderedDict(
            [
                ("mlp.0.weight", base[1:4, 2:5].t()),
                ("mlp.0.bias", torch.arange(3.0) * scale),
                ("mlp.0.w_avg", w_avg),
                ("mlp.0.row", base[4]),
                ("embed.weight", embed.tensor.view),
            ]
        )
        return root, expected, [weight, bias, embed]

    g, g_expected, g_params = net(1.0)
    g_ema, g_ema_expected, _ = net(2.0)
    d, d_expected, _ = net(3.0)
    pipe = _Persistent(
        persistent, "AugmentPipe", _module_state({}, {"p": _tensor(torch.tensor(0.25))}), marker
    )
    optimizer_state = collections.defaultdict(dict, {g_params[0]: {"step": _tensor(torch.tensor(3.0))}})
    snapshot = {
        "training_set_kwargs": mods["dnnlib.util"].EasyDict(resolution=64, xflip=True),
        "G": g,
        "D": d,
        "G_ema": g_ema,
        "augment_pipe": pipe,
        "G_opt": _bare(
            torch.optim.Adam,
            {"defaults": {"lr": 0.002}, "state": optimizer_state, "param_groups": [{"params": g_params}]},
        ),
        "vis": {"labels": _NumpyOld(old_np._reconstruct, np.zeros((2, 3), np.float32))},
        "stats": {"cur_nimg": 1000, "best_metric_value": float("inf")},
    }
    return pickle.dumps(snapshot, protocol=4), {"G": g_expected, "G_ema": g_ema_expected, "D": d_expected}


def test_gpu_era_snapshot_loads_on_cpu(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    marker = tmp_path / "executed"
    mods = _old_modules()
    for name, module in mods.items():
        monkeypatch.setitem(sys.modules, name, module)
    data, expected = _gpu_era_snapshot(marker, mods)
    for name in mods:
        monkeypatch.delitem(sys.modules, name)
    path = tmp_path / "network-snapshot-000100.pkl"
    path.write_bytes(data)

    globals_named = {arg for op, arg, _ in pickletools.genops(data) if op.name == "SHORT_BINUNICODE"}
    assert {"numpy.core.multiarray", "torch_utils.persistence", "dnnlib.util"} <= globals_named
    assert "numpy._core.multiarray" not in globals_named
    assert data.count(b"cuda:0") >= 15 and b"X\x03\x00\x00\x00cpu" not in data

    snap = read_original_snapshot(path)
    for name in ("G", "G_ema", "D"):
        ours = getattr(snap, name)
        assert list(ours) == list(expected[name])
        _assert_bit_exact(ours, expected[name])
        assert all(type(v) is Tensor and v.device.type == "cpu" for v in ours.values())
    assert snap.G_ema["mlp.0.weight"].stride() == (1, 6)
    assert snap.augment_p == 0.25
    assert snap.stats == {"cur_nimg": 1000, "best_metric_value": float("inf")}
    assert snap.training_set_kwargs == {"resolution": 64, "xflip": True}
    assert not marker.exists()


@pytest.mark.skipif(torch.cuda.is_available(), reason="checks the CPU-only failure of an unmapped load")
def test_rewritten_storage_really_claims_cuda() -> None:
    value = torch.arange(4.0)
    data = _legacy_storage_bytes(value, "cuda:0")
    with pytest.raises(RuntimeError, match="CUDA"):
        torch.load(io.BytesIO(data), weights_only=True)
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message="TypedStorage is deprecated")
        storage = torch.load(io.BytesIO(data), weights_only=True, map_location="cpu")
    assert storage.tolist() == value.tolist()
