"""Small crafted files cannot exhaust time or memory: each is refused in under a second with a named reason
(self-references, shared references expanding to huge trees, views beyond their storage, oversized arrays,
crafted hyperparameters, huge class indices), and refusals speak in our words, not torch's."""

from __future__ import annotations

import dataclasses
import io
import json
import pickle
import time
from collections import OrderedDict
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch

from conftest import original_fixtures_root
from epigraf.compat.importer import load_original
from epigraf.compat.snapshot_reader import read_original_snapshot
from epigraf.compat.unpickler import SnapshotFormatError, UnsafePickleError
from epigraf.data.dataset import ImageDataset
from test_dataset import make_images, write_meta
from test_snapshot import _Call, _snapshot_wrapping, _Storage

REFUSAL_S = 1.0


def refused(path: Path, reason: str, error: type[Exception] = SnapshotFormatError) -> str:
    start = time.perf_counter()
    with pytest.raises(error, match=reason) as info:
        read_original_snapshot(path)
    assert time.perf_counter() - start < REFUSAL_S
    return str(info.value)


def module(**children: Any) -> dict[str, Any]:
    """A module record as a snapshot stores it (``{"type": "class", "state": …}``)."""
    return {"type": "class", "state": {"_parameters": {}, "_buffers": {}, "_modules": children}}


def test_a_self_referencing_pickle_is_refused(tmp_path):
    net = module()
    net["state"]["_modules"]["again"] = net
    path = tmp_path / "self.pkl"
    path.write_bytes(pickle.dumps({"G": net, "G_ema": net, "D": net}, protocol=2))
    assert len(path.read_bytes()) < 200
    refused(path, "contain themselves \\(a reference cycle\\)")


def test_shared_references_that_expand_to_a_huge_tree_are_refused(tmp_path):
    net = module()
    for _ in range(64):  # 2^64 module visits for a reader that walks the tree
        net = module(a=net, b=net)
    path = tmp_path / "laughs.pkl"
    path.write_bytes(pickle.dumps({"G": net, "G_ema": net, "D": net}, protocol=2))
    assert len(path.read_bytes()) < 4000
    refused(path, "with their shared references expanded, exceed 5,000,000 nodes")


def test_deep_nesting_is_refused(tmp_path):
    net = module()
    for _ in range(70):  # three containers per module: > 200 levels
        net = module(a=net)
    path = tmp_path / "deep.pkl"
    path.write_bytes(pickle.dumps({"G": net, "G_ema": net, "D": net}, protocol=2))
    refused(path, "nests objects more than 200 deep")


class _View:
    """A tensor record whose view is larger than its 4-element storage."""

    def __reduce__(self):
        return torch._utils._rebuild_tensor_v2, (_Storage(torch.zeros(4), "cpu"), 0, (100000, 100000), (100000, 1),
                                                 False, OrderedDict())


def test_a_view_beyond_its_storage_is_refused_before_allocation(tmp_path):
    path = tmp_path / "view.pkl"
    path.write_bytes(_snapshot_wrapping(_View()))
    assert len(path.read_bytes()) < 1500
    refused(path, r"a tensor of shape \[100000, 100000\] \(10,000,000,000 elements\) exceeds")


class _Outside:
    def __reduce__(self):
        return torch._utils._rebuild_tensor_v2, (_Storage(torch.zeros(4), "cpu"), 2, (3,), (1,), False, OrderedDict())


def test_a_view_past_the_end_of_its_storage_is_refused(tmp_path):
    path = tmp_path / "outside.pkl"
    path.write_bytes(_snapshot_wrapping(_Outside()))
    refused(path, r"reaches outside its storage of 4 elements")


def test_a_numpy_array_rebuilt_at_a_huge_shape_is_refused(tmp_path):
    reconstruct = np.ndarray.__reduce__(np.zeros(0))[0]
    path = tmp_path / "array.pkl"
    path.write_bytes(_snapshot_wrapping(_Call(reconstruct, np.ndarray, (10**12,), b"b")))
    refused(path, r"a numpy array is rebuilt with shape \(1000000000000,\)")


def test_a_nested_payload_refusal_does_not_advise_executing_it(tmp_path):
    inner = io.BytesIO()
    torch.save(_Call(eval, "1"), inner, _use_new_zipfile_serialization=False)
    path = tmp_path / "nested.pkl"
    path.write_bytes(_snapshot_wrapping(_Call(torch.storage._load_from_bytes, inner.getvalue())))
    message = refused(path, "weights-only loader refused its payload: Unsupported global: GLOBAL eval was not "
                            "an allowed global by default$", UnsafePickleError)
    assert "weights_only" not in message and "False" not in message


def test_crafted_hyperparameters_are_refused_before_allocation():
    FIXTURES = original_fixtures_root()
    config = json.loads((FIXTURES / "tiny_config.json").read_text())
    config = config.get("config", config)
    with pytest.raises(ValueError, match=r"tiny_snapshot\.pkl \(architecture from config\): the config describes "
                                         r"a G of [\d,]+ M parameters"):
        load_original(FIXTURES / "tiny_snapshot.pkl", config={**config, "mlp_hid_dim": 100000, "mlp_n_layers": 4})
    with pytest.raises(ValueError, match=r"config field generator\.z_dim must be a whole number ≥ 0, got -5"):
        load_original(FIXTURES / "tiny_snapshot.pkl", config={**config, "z_dim": -5})


def test_a_huge_class_index_is_refused_before_allocation(tmp_path):
    names = make_images(tmp_path, 3)
    write_meta(tmp_path, labels={names[0]: 0, names[1]: 1, names[2]: 10**9})
    start = time.perf_counter()
    with pytest.raises(ValueError, match=r"1 class labels are ≥ 100,000, e.g. .*: 1000000000 \(one-hot labels would "
                                         r"need 1,000,000,001 columns per image\)"):
        ImageDataset(tmp_path)
    assert time.perf_counter() - start < REFUSAL_S


def test_the_real_snapshots_stay_within_the_bounds():
    FIXTURES = original_fixtures_root()
    for name in ("tiny", "bgsphere"):
        snap = read_original_snapshot(FIXTURES / f"{name}_snapshot.pkl")
        assert len(snap.G_ema) > 10
    assert dataclasses.is_dataclass(snap)
