"""Custom autograd functions under bf16: dtype-correct on every CPU, not only those with AVX-512-BF16.

oneDNN's kernels accept a bf16 gradient with an fp32 weight; PyTorch's native kernels, which CPUs without
AVX-512 run, raise "expected scalar type BFloat16 but found Float". The ``strict_kernels`` fixture turns oneDNN
off, so these tests take the native path on any machine, and the dtypes are mixed by explicit casts, not by
relying on what autocast does on this CPU.
"""

from __future__ import annotations

import re
from pathlib import Path

import pytest
import torch

from epigraf.nn.field import _corner_index_and_weights, _CornerGather
from epigraf.nn.layers import (
    _DepthwiseFilter,
    fir_filter_2d,
    leaky_clamp_,
    modulated_conv2d,
    scale_shift_leaky_clamp_,
)
from epigraf.train.resample import _ReflectSample, _ReflectSampleTranspose

SRC = Path(__file__).resolve().parents[1] / "src" / "epigraf"
BF16 = torch.bfloat16
# Every torch.autograd.Function in src/ and the test below that covers it.
COVERED = {"_DepthwiseFilter", "_CornerGather", "_ReflectSample", "_ReflectSampleTranspose", "_StyledConvolution",
           "_LeakyClamp", "_ScaleShiftLeakyClamp"}
# Toggling oneDNN also sets its TF32 flag, which warns on builds without Intel-GPU support.
pytestmark = pytest.mark.filterwarnings("ignore:TF32 acceleration on top of oneDNN:UserWarning")


@pytest.fixture
def strict_kernels():
    """PyTorch's native CPU kernels (as on CPUs without AVX-512), which refuse mixed dtypes."""
    with torch.backends.mkldnn.flags(enabled=False):
        yield


def test_every_custom_autograd_function_is_covered_here():
    found = {m.group(1) for path in SRC.rglob("*.py")
             for m in re.finditer(r"^class (\w+)\(torch\.autograd\.Function\)", path.read_text(), re.M)}
    assert found == COVERED, f"add a mixed-dtype test for {sorted(found - COVERED)}"


def test_native_kernels_refuse_mixed_dtypes(strict_kernels):
    """The fixture works: the error a user without AVX-512 saw is raised here too."""
    grad = torch.randn(1, 2, 5, 5, dtype=BF16)
    with pytest.raises(RuntimeError, match="expected scalar type"):
        torch.nn.grad.conv2d_input((1, 2, 8, 8), torch.rand(2, 1, 4, 4), grad, groups=2)


def _grads_twice(out, inputs):
    """First-order gradients (with a graph) and the gradient of their squared sum (R1's double backward)."""
    first = torch.autograd.grad(out.float().square().sum(), inputs, create_graph=True)
    second = torch.autograd.grad(sum(g.float().square().sum() for g in first), inputs)
    return first, second


def _close(ours, ref, tol=0.05):
    ours, ref = ours.double(), ref.double()
    assert torch.isfinite(ours).all()
    assert (ours - ref).abs().max() <= tol * ref.abs().max().clamp_min(1e-6)


@pytest.mark.parametrize("autocast", [False, True])
def test_depthwise_filter_bf16_gradient_with_fp32_filter(strict_kernels, autocast):
    x32 = torch.randn(2, 3, 9, 9, requires_grad=True)
    weight = torch.rand(3, 1, 4, 4)  # fp32, as _fir passes it
    x = x32 if autocast else x32.to(BF16)
    with torch.autocast("cpu", dtype=BF16, enabled=autocast):
        out = _DepthwiseFilter.apply(x, weight)
    assert out.dtype == BF16
    first, second = _grads_twice(out, [x32])
    assert first[0].dtype == second[0].dtype == torch.float32
    ref_x = x32.detach().to(BF16).float().requires_grad_()
    ref_first, ref_second = _grads_twice(_DepthwiseFilter.apply(ref_x, weight), [ref_x])
    _close(first[0], ref_first[0])
    _close(second[0], ref_second[0])


def test_corner_gather_bf16_table_with_fp32_weights(strict_kernels):
    torch.manual_seed(0)
    planes = torch.randn(1 * 3 * 4 * 4, 5)
    grid = torch.rand(1, 7, 3, 2) * 2 - 1
    index, weights32, cells = _corner_index_and_weights(grid, 4, 4, with_cells=True)
    table = planes.to(BF16).requires_grad_()
    weights = weights32.clone().requires_grad_()
    out = _CornerGather.apply(table, index, weights, cells, (4, 4))
    assert out.dtype == BF16
    first, second = _grads_twice(out, [table, weights])
    assert first[0].dtype == BF16 and first[1].dtype == torch.float32
    ref_table = planes.to(BF16).float().requires_grad_()
    ref_weights = weights32.to(BF16).float().requires_grad_()
    ref_out = _CornerGather.apply(ref_table, index, ref_weights, cells, (4, 4))
    ref_first, ref_second = _grads_twice(ref_out, [ref_table, ref_weights])
    for ours, ref in zip(first + second, ref_first + ref_second, strict=True):
        _close(ours, ref)


@pytest.mark.parametrize("up", [False, True])
def test_modulated_conv_under_autocast_fp32_activations_and_weights(strict_kernels, up):
    """Autocast runs the convolution in bf16 while the activations, styles and weights stay fp32 (the synthesis
    layers under --bf16): the backward convolves in the gradient's dtype and returns each input's."""
    torch.manual_seed(0)
    x = torch.randn(2, 4, 6, 6, requires_grad=True)
    weight = torch.randn(3, 4, 3, 3, requires_grad=True)
    styles = torch.randn(2, 4, requires_grad=True)
    f = fir_filter_2d() if up else None
    with torch.autocast("cpu", dtype=BF16):
        out = modulated_conv2d(x, weight, styles, f)
    assert out.dtype == BF16
    grads = torch.autograd.grad(out.float().square().sum(), [x, weight, styles])
    assert all(g.dtype == torch.float32 for g in grads)
    ref_x = (x.detach() * styles.detach()[:, :, None, None]).to(BF16).float().div(styles.detach()[:, :, None, None])
    ref_x.requires_grad_(True)
    ref_weight = weight.detach().to(BF16).float().requires_grad_()
    ref_styles = styles.detach().clone().requires_grad_()
    ref = modulated_conv2d(ref_x, ref_weight, ref_styles, f)
    ref_grads = torch.autograd.grad(ref.square().sum(), [ref_x, ref_weight, ref_styles])
    for ours, r in zip(grads, ref_grads, strict=True):
        _close(ours, r)


def test_leaky_clamp_in_bf16(strict_kernels):
    torch.manual_seed(0)
    x32 = torch.randn(3, 50) * 3
    x = x32.to(BF16).requires_grad_()
    out = leaky_clamp_(x * 1, -2.0, 1.0)
    assert out.dtype == BF16
    first, second = _grads_twice(out, [x])
    assert first[0].dtype == BF16
    ref = x32.to(BF16).float().requires_grad_()
    ref_first, ref_second = _grads_twice(torch.nn.functional.leaky_relu(ref.clamp(-2.0, 1.0), 0.2), [ref])
    _close(first[0], ref_first[0])
    _close(second[0], ref_second[0])


def test_scale_shift_leaky_clamp_bf16_convolution_with_fp32_scale_offset_and_noise(strict_kernels):
    """A synthesis layer under --bf16: the convolution's output is bf16, its demodulation, constant-noise offset and
    noise fp32; the result is promoted to fp32 as addcmul's (x is not overwritten) and each gradient has its input's
    dtype."""
    torch.manual_seed(0)
    x = (torch.randn(2, 4, 5, 5) * 3).to(BF16).requires_grad_()
    scale = (torch.rand(2, 4) + 0.5).requires_grad_()
    offset = torch.randn(1, 4, 5, 5, requires_grad=True)
    noise = torch.randn(2, 1, 5, 5, requires_grad=True)
    x_before = x.detach().clone()
    out = scale_shift_leaky_clamp_(x * 1, scale, offset, noise, -5.0, 1.0)
    assert out.dtype == torch.float32 and torch.equal(x.detach(), x_before)
    grads = torch.autograd.grad(out.square().sum(), [x, scale, offset, noise])
    assert [g.dtype for g in grads] == [BF16, torch.float32, torch.float32, torch.float32]
    ref_x = x.detach().float().requires_grad_()
    ref = torch.nn.functional.leaky_relu((ref_x * scale[:, :, None, None] + offset + noise).clamp(-5.0, 1.0), 0.2)
    ref_grads = torch.autograd.grad(ref.square().sum(), [ref_x, scale, offset, noise])
    _close(out, ref)
    for ours, r in zip(grads, ref_grads, strict=True):
        _close(ours.float(), r)


def test_reflect_sample_bf16_images_with_fp32_grid(strict_kernels):
    torch.manual_seed(0)
    images32 = torch.randn(2, 3, 6, 6)
    grid = torch.rand(2, 5, 5, 2) * 2.4 - 1.2  # fp32, reaching past the border (reflection)
    images = images32.to(BF16).requires_grad_()
    out = _ReflectSample.apply(images, grid)
    assert out.dtype == BF16
    first, second = _grads_twice(out, [images])
    assert first[0].dtype == second[0].dtype == BF16
    ref = images32.to(BF16).float().requires_grad_()
    ref_first, ref_second = _grads_twice(_ReflectSample.apply(ref, grid), [ref])
    _close(first[0], ref_first[0])
    _close(second[0], ref_second[0])
    # The transpose alone, with a gradient of another dtype than the images and the grid.
    grad = torch.randn(2, 3, 5, 5, dtype=BF16)
    assert _ReflectSampleTranspose.apply(grad, images32, grid).dtype == torch.float32
