"""On a GPU: the original's outputs are reproduced there too, and a training step runs end to end.

Skipped without CUDA. TF32 is switched off for the comparisons: it is a speed setting whose ~1e-3 relative
error would hide real mismatches; with it off, CUDA's fp32 differs from the CPU only in summation order.
"""

from __future__ import annotations

import pytest
import torch

from conftest import rel_err
from epigraf.compat.original import from_original
from epigraf.patches import PatchParams

pytestmark = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")


@pytest.fixture(autouse=True)
def no_tf32():
    saved = torch.backends.cuda.matmul.allow_tf32, torch.backends.cudnn.allow_tf32
    torch.backends.cuda.matmul.allow_tf32 = torch.backends.cudnn.allow_tf32 = False
    yield
    torch.backends.cuda.matmul.allow_tf32, torch.backends.cudnn.allow_tf32 = saved


@pytest.fixture(scope="module")
def tiny_cuda(original_fixtures):
    G, D = from_original(original_fixtures.config, original_fixtures.g_state, original_fixtures.d_state)
    return G.cuda(), D.cuda().eval()  # G in train mode, as the fixtures were made


def _cuda(tensors: dict) -> dict:
    return {k: (v.cuda() if isinstance(v, torch.Tensor) else v) for k, v in tensors.items()}


@pytest.mark.parametrize("case", ["render_full", "render_patch"])
def test_generator_on_cuda_reproduces_the_original(tiny_cuda, original_fixtures, case):
    x = _cuda(original_fixtures.inputs(case))
    pp = PatchParams(x["patch_scales"], x["patch_offsets"]) if "patch_scales" in x else None
    with torch.no_grad():
        out = tiny_cuda[0](x["z"], None, x["camera_angles"], patch_params=pp, deterministic=True)
    ref = original_fixtures.outputs(case)
    assert out.image.is_cuda
    assert rel_err(out.image.cpu(), ref["image"]) < 1e-4
    assert rel_err(out.depth.cpu(), ref["depth"]) < 1e-4


@pytest.mark.parametrize("case", ["D_logits", "D_logits_b4"])
def test_discriminator_on_cuda_reproduces_the_original(tiny_cuda, original_fixtures, case):
    x = _cuda(original_fixtures.inputs(case))
    with torch.no_grad():
        logits = tiny_cuda[1](x["img"], x.get("c"), PatchParams(x["patch_scales"], x["patch_offsets"]),
                              x.get("camera_angles"))
    assert rel_err(logits.cpu(), original_fixtures.outputs(case)["logits"]) < 1e-4


def test_training_steps_on_cuda(tmp_path):
    from epigraf.train.loop import train
    from test_checkpoint import tiny_model_config
    from test_train import make_dataset, options

    make_dataset(tmp_path / "data")
    result = train(options(tmp_path, device="cuda", kimg=0.008), tiny_model_config())
    assert result.cur_nimg == 8 and result.skipped_steps == 0
    assert next(result.G.parameters()).is_cuda
