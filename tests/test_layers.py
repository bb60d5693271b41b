"""The fused fast paths of the StyleGAN2 layers against a straightforward textbook formulation
(per-sample modulated weights, one op per step), forward and backward, fp32 within 1e-4."""

from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F

from conftest import rel_err
from epigraf.nn.layers import (
    Conv2dLayer,
    _fir,
    downsample2d,
    fir_filter_2d,
    leaky_clamp_,
    modulated_conv2d,
    scale_shift_leaky_clamp_,
    upsample2d,
)
from epigraf.nn.synthesis import SynthesisLayer, ToPlanesLayer


def reference_synthesis_layer(layer: SynthesisLayer, x, w, noise):
    """StyleGAN2's modulated conv written out: per-sample weights, demodulation, noise, bias, lrelu·√2, clamp."""
    styles = layer.affine(w)
    weight = layer.weight[None] * styles[:, None, :, None, None]
    weight = weight / (weight.square().sum(dim=(2, 3, 4), keepdim=True) + 1e-8).sqrt()
    outs = []
    for i in range(x.shape[0]):
        if layer.up:
            y = F.conv_transpose2d(x[i : i + 1], weight[i].transpose(0, 1), stride=2)
            f = fir_filter_2d() * 4
            y = F.conv2d(F.pad(y, (1, 1, 1, 1)), f[None, None].expand(y.shape[1], 1, 4, 4), groups=y.shape[1])
        else:
            y = F.conv2d(x[i : i + 1], weight[i], padding=1)
        outs.append(y)
    y = torch.cat(outs)
    if noise is not None:
        y = y + noise * layer.noise_strength
    y = F.leaky_relu(y + layer.bias[None, :, None, None], 0.2) * math.sqrt(2)
    return y.clamp(-layer.conv_clamp, layer.conv_clamp)


@pytest.mark.parametrize("up", [False, True])
@pytest.mark.parametrize("noise_mode", ["const", "random", "none"])
def test_fused_synthesis_layer_matches_the_straightforward_path(up, noise_mode):
    torch.manual_seed(0)
    layer = SynthesisLayer(6, 5, 8, resolution=16, up=up, conv_clamp=2.0)  # a small clamp so it is exercised
    with torch.no_grad():
        layer.noise_strength.fill_(0.3)
        layer.bias.normal_()
    x = torch.randn(3, 6, 8 if up else 16, 8 if up else 16, requires_grad=True)
    w = torch.randn(3, 8, requires_grad=True)
    torch.manual_seed(1)
    ours = layer(x, w, noise_mode)
    torch.manual_seed(1)
    noise = {"const": layer.noise_const, "random": torch.randn(3, 1, 16, 16), "none": None}[noise_mode]
    ref = reference_synthesis_layer(layer, x, w, noise)
    assert (ref.abs() >= 2.0 - 1e-6).any()  # the clamp is active somewhere
    assert rel_err(ours, ref) < 1e-4
    g = torch.randn_like(ref)
    grads_ours = torch.autograd.grad(ours, [x, w, layer.weight, layer.bias, layer.noise_strength], g,
                                     allow_unused=True)
    grads_ref = torch.autograd.grad(ref, [x, w, layer.weight, layer.bias, layer.noise_strength], g, allow_unused=True)
    for a, b in zip(grads_ours, grads_ref, strict=True):
        if b is None:
            assert a is None or torch.count_nonzero(a) == 0
        else:
            assert rel_err(a, b) < 1e-4


def test_to_planes_layer_matches_the_straightforward_path():
    torch.manual_seed(0)
    layer = ToPlanesLayer(6, 4, 8, conv_clamp=0.5)
    with torch.no_grad():
        layer.bias.normal_()
    x, w = torch.randn(2, 6, 5, 5, requires_grad=True), torch.randn(2, 8)
    styles = layer.affine(w) / math.sqrt(6)
    ref = torch.cat([F.conv2d(x[i : i + 1], layer.weight * styles[i][None, :, None, None]) for i in range(2)])
    ref = (ref + layer.bias[None, :, None, None]).clamp(-0.5, 0.5)
    ours = layer(x, w)
    assert rel_err(ours, ref) < 1e-4
    g = torch.randn_like(ref)
    assert rel_err(torch.autograd.grad(ours, x, g)[0], torch.autograd.grad(ref, x, g)[0]) < 1e-4


def test_fir_upsampling_equals_zero_insertion_and_filtering():
    x = torch.randn(2, 3, 6, 7)
    up = torch.zeros(2, 3, 12, 14)
    up[:, :, ::2, ::2] = x
    f = fir_filter_2d() * 4
    ref = F.conv2d(F.pad(up, (2, 1, 2, 1)), f[None, None].expand(3, 1, 4, 4), groups=3)
    assert torch.allclose(upsample2d(x, fir_filter_2d()), ref, atol=1e-6)


def test_channel_folded_fir_equals_the_depthwise_one_to_second_order():
    """The CUDA form of the FIR filter (channels folded into the batch) against the CPU (depthwise) form."""
    from epigraf.nn.layers import _fir

    x = torch.randn(2, 5, 9, 8, dtype=torch.float64, requires_grad=True)
    f, pad = fir_filter_2d().double(), (2, 1, 2, 1)
    folded, depthwise = _fir(x, f, pad, 4.0, fold_channels=True), _fir(x, f, pad, 4.0, fold_channels=False)
    assert torch.allclose(folded, depthwise, rtol=0, atol=1e-12)
    g = torch.randn_like(folded, requires_grad=True)
    (gf,), (gd,) = (torch.autograd.grad(y, x, g, create_graph=True) for y in (folded, depthwise))
    assert torch.allclose(gf, gd, rtol=0, atol=1e-12)
    assert torch.autograd.gradgradcheck(lambda t: _fir(t, f, pad, 4.0, fold_channels=True), (x,))


@pytest.mark.parametrize("f", [fir_filter_2d().double(), torch.rand(3, 3, dtype=torch.float64)],
                         ids=["binomial", "asymmetric"])
def test_depthwise_fir_equals_a_grouped_convolution_to_second_order(f):
    """The CPU FIR (its own backward, so R1's double backward stays depthwise) against autograd's grouped conv."""
    from epigraf.nn.layers import _fir

    x = torch.randn(2, 5, 9, 8, dtype=torch.float64, requires_grad=True)
    pad = (2, 1, 2, 1)

    def reference(t):
        return F.conv2d(F.pad(t, pad), (f * 4.0)[None, None].expand(5, 1, *f.shape), groups=5)

    ours, ref = _fir(x, f, pad, 4.0, fold_channels=False), reference(x)
    assert torch.allclose(ours, ref, rtol=0, atol=1e-12)
    g = torch.randn_like(ours, requires_grad=True)  # stands for D's upstream gradient, which depends on weights
    (g_ours,), (g_ref,) = (torch.autograd.grad(y, x, g, create_graph=True) for y in (ours, ref))
    assert torch.allclose(g_ours, g_ref, rtol=0, atol=1e-12)
    (gg_ours,), (gg_ref,) = (torch.autograd.grad(d.square().sum(), g) for d in (g_ours, g_ref))
    assert torch.allclose(gg_ours, gg_ref, rtol=0, atol=1e-12)
    assert torch.autograd.gradgradcheck(lambda t: _fir(t, f, pad, 4.0, fold_channels=False), (x,))


# ----------------------------------------------------------------------------- ops that keep less for the backward


def _saved_bytes(fn):
    """(fn's result, bytes of the distinct storages autograd keeps for its backward)."""
    storages = {}

    def pack(t):
        storages[t.untyped_storage().data_ptr()] = t.untyped_storage().nbytes()
        return t

    with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
        out = fn()
    return out, sum(storages.values())


# (lo, hi, slope, gain) of each use: the synthesis layers, the tri-plane outputs, FullyConnected; and a clamp
# that bites on most inputs.
LEAKY_CLAMP_USES = [(-1280.0, 256.0, 0.2, 1.0), (-256.0, 256.0, 1.0, 1.0), (-math.inf, math.inf, 0.2, math.sqrt(2)),
                    (-2.0, 1.0, 0.2, 1.0), (-1.0, 1.0, 1.0, 1.0)]


def _leaky_clamp_reference(x, lo, hi, slope, gain):
    y = x.clamp(lo, hi) if math.isfinite(lo) else x
    return (F.leaky_relu(y, slope) if slope != 1.0 else y) * gain


@pytest.mark.parametrize("use", LEAKY_CLAMP_USES)
def test_leaky_clamp_equals_clamp_leaky_relu_and_gain_bitwise_keeping_only_its_output(use):
    torch.manual_seed(0)
    x = (torch.randn(4, 8, 16, 16) * 3).requires_grad_()
    grad = torch.randn(4, 8, 16, 16)
    ref = _leaky_clamp_reference(x, *use)
    (ref_grad,) = torch.autograd.grad(ref, x, grad)
    ours, saved = _saved_bytes(lambda: leaky_clamp_(x * 1.0, *use))
    (our_grad,) = torch.autograd.grad(ours, x, grad)
    assert torch.equal(ours, ref) and torch.equal(our_grad, ref_grad)
    bites = math.isfinite(use[0]) and use[1] < 3.0
    assert bites == bool((ours == use[1] * use[3]).any())  # the test covers clamped inputs where it should
    # At most the output (the native ops keep their input too); a bare clamp that bites nowhere keeps nothing.
    assert saved == (0 if use[2] == 1.0 and not bites else x.numel() * 4)


def test_leaky_clamp_second_derivative_reaches_earlier_parameters_as_the_native_op():
    """R1's double backward through D's FullyConnected layers: every parameter before the activation gets a
    gradient (zeros through the activation's own second derivative), as with F.leaky_relu, so that Adam steps it."""
    torch.manual_seed(0)
    x = torch.randn(5, 6, requires_grad=True)
    bias = torch.randn(6, requires_grad=True)

    def grads(act):
        (gx,) = torch.autograd.grad(act(x + bias).square().sum(), x, create_graph=True)
        return torch.autograd.grad(gx.square().sum(), [x, bias], allow_unused=True)

    ours = grads(lambda t: leaky_clamp_(t, gain=math.sqrt(2)))
    ref = grads(lambda t: F.leaky_relu(t, 0.2) * math.sqrt(2))
    assert all(r is not None for r in ref) and all(o is not None for o in ours)
    for o, r in zip(ours, ref, strict=True):
        assert torch.equal(o, r)


@pytest.mark.parametrize("noise", [False, True])
@pytest.mark.parametrize("clamp", [256.0, 1.0, math.inf])
def test_scale_shift_leaky_clamp_keeps_only_its_result(noise, clamp):
    """The synthesis layers' demodulation, bias, noise and activation: addcmul, add_ and leaky_clamp_'s values
    bitwise; gradients within 1e-5 (scale's takes the convolution's output back from the result); autograd keeps
    the result and the small operands, not the convolution's output."""
    torch.manual_seed(0)
    x = (torch.randn(3, 8, 10, 10) * 2).requires_grad_()
    scale = (torch.rand(3, 8) + 0.5).requires_grad_()
    offset = torch.randn(1, 8, 10, 10, requires_grad=True)  # bias + constant noise
    noise_term = torch.randn(3, 1, 10, 10, requires_grad=True) if noise else None
    lo, hi = -clamp / 0.2, clamp

    def reference():
        y = torch.addcmul(offset, x * 1, scale[:, :, None, None])
        if noise:
            y = y + noise_term
        return torch.nn.functional.leaky_relu(y.clamp(lo, hi) if math.isfinite(clamp) else y, 0.2)

    inputs = [x, scale, offset] + ([noise_term] if noise else [])
    ref = reference()
    grad = torch.randn_like(ref)
    ref_grads = torch.autograd.grad(ref, inputs, grad)
    ours, saved = _saved_bytes(lambda: scale_shift_leaky_clamp_(x * 1, scale, offset, noise_term, lo, hi))
    assert torch.equal(ours, ref)
    if clamp == 1.0:
        assert (ours == hi).any()  # the clamp bites
    for o, r in zip(torch.autograd.grad(ours, inputs, grad), ref_grads, strict=True):
        assert rel_err(o, r) < 1e-5
    small = (scale.numel() + offset.numel() + (noise_term.numel() if noise else 0)) * 4
    assert saved <= x.numel() * 4 + small


def reference_conv2d_layer(layer: Conv2dLayer, x, gain):
    """StyleGAN2's D layer one op at a time: conv (FIR first when down-sampling), + bias, lrelu·√2, × gain,
    clamp to ±conv_clamp·gain."""
    w = layer.weight * layer.weight_gain
    f = layer.resample_filter
    if layer.down and layer.kernel_size == 1:
        y = F.conv2d(downsample2d(x, f), w)
    elif layer.down:
        y = F.conv2d(_fir(x, f, (2, 2, 2, 2), gain=1.0), w, stride=2)
    else:
        y = F.conv2d(x, w, padding=layer.kernel_size // 2)
    if layer.bias is not None:
        y = y + layer.bias[None, :, None, None]
    if layer.activation:
        y = F.leaky_relu(y, 0.2) * math.sqrt(2)
    y = y * gain
    if layer.conv_clamp is not None:
        y = y.clamp(-layer.conv_clamp * gain, layer.conv_clamp * gain)
    return y


# (kernel, down, activation, bias, conv_clamp, gain): D's fromrgb, conv0, conv1 (↓2, skip gain), skip, epilogue,
# and clamps that bite on most inputs.
CONV2D_LAYER_USES = [(1, False, True, True, 256.0, 1.0), (3, False, True, True, 256.0, 1.0),
                     (3, True, True, True, 256.0, math.sqrt(0.5)), (1, True, False, False, None, math.sqrt(0.5)),
                     (3, False, True, True, None, 1.0), (3, False, True, True, 0.5, 0.7),
                     (3, True, False, True, 0.3, 2.0)]


@pytest.mark.parametrize("use", CONV2D_LAYER_USES)
def test_conv2d_layer_equals_the_op_by_op_layer_keeping_one_tensor(use):
    """Values, gradients and R1's second derivative within 1e-5 of the op-by-op layer (which rounds the gain and
    the clamp at other places); autograd keeps the input, the weight and at most the output, where the op-by-op
    layer keeps the activation's input and the clamp's besides."""
    kernel, down, activation, bias, clamp, gain = use
    torch.manual_seed(0)
    layer = Conv2dLayer(8, 6, kernel, bias=bias, activation=activation, down=down, conv_clamp=clamp)
    if bias:
        layer.bias.data.normal_()
    x = (torch.randn(2, 8, 12, 12) * 4).requires_grad_()
    params = [x, layer.weight] + ([layer.bias] if bias else [])

    def first_and_second_derivatives(fn):
        out = fn()
        grads = torch.autograd.grad(out.square().sum(), params, create_graph=True)
        second = torch.autograd.grad(grads[0].square().sum(), params[1:], allow_unused=True)
        return out, grads, second

    ref = first_and_second_derivatives(lambda: reference_conv2d_layer(layer, x, gain))
    ours = first_and_second_derivatives(lambda: layer(x, gain))
    if clamp is not None and clamp < 1:
        assert (ref[0].abs() == clamp * gain).any()  # the clamp bites
    for o, r in zip([ours[0], *ours[1], *ours[2]], [ref[0], *ref[1], *ref[2]], strict=True):
        assert rel_err(o, r) < 1e-5
    _, saved = _saved_bytes(lambda: layer(x, gain))
    out_bytes = ref[0].numel() * 4
    _, ref_saved = _saved_bytes(lambda: reference_conv2d_layer(layer, x, gain))
    assert saved <= x.numel() * 4 * (1 + down) + layer.weight.numel() * 4 + out_bytes
    if activation and clamp is not None:  # the op-by-op layer keeps the activation's input and the clamp's
        assert ref_saved - saved >= out_bytes


@pytest.mark.parametrize(("kernel", "up"), [(3, False), (1, False), (3, True)])
def test_modulated_conv_equals_scaling_then_convolving_bitwise_without_keeping_the_scaled_input(kernel, up):
    torch.manual_seed(0)
    x = torch.randn(2, 8, 12, 12, requires_grad=True)
    weight = torch.randn(6, 8, kernel, kernel, requires_grad=True)
    styles = torch.randn(2, 8, requires_grad=True)
    f = fir_filter_2d() if up else None

    def reference():
        scaled = x * styles[:, :, None, None]
        if not up:
            return F.conv2d(scaled, weight, padding=kernel // 2)
        y = F.conv_transpose2d(scaled, weight.transpose(0, 1), stride=2)
        return F.conv2d(F.pad(y, (1, 1, 1, 1)), (f * 4)[None, None].expand(6, 1, 4, 4), groups=6)

    ref = reference()
    grad = torch.randn_like(ref)
    ref_grads = torch.autograd.grad(ref, [x, weight, styles], grad)
    ours, saved = _saved_bytes(lambda: modulated_conv2d(x, weight, styles, f))
    assert torch.equal(ours, ref)
    for o, r in zip(torch.autograd.grad(ours, [x, weight, styles], grad), ref_grads, strict=True):
        assert torch.equal(o, r) if not up else (o - r).abs().max() <= 1e-5 * r.abs().max()
    assert saved <= (x.numel() + styles.numel() + weight.numel() + (f.numel() * 6 if up else 0)) * 4


def test_modulated_conv_has_a_second_derivative():
    torch.manual_seed(0)
    x = torch.randn(1, 3, 5, 5, dtype=torch.float64, requires_grad=True)
    weight = torch.randn(2, 3, 3, 3, dtype=torch.float64, requires_grad=True)
    styles = torch.randn(1, 3, dtype=torch.float64, requires_grad=True)
    for up in (None, fir_filter_2d().double()):
        assert torch.autograd.gradgradcheck(lambda a, b, c, f=up: modulated_conv2d(a, b, c, f), (x, weight, styles))


@pytest.mark.parametrize("pad", [(1, 1, 1, 1), (2, 1, 2, 1), (0, 0, 0, 0)])
def test_fir_padding_in_the_convolution_equals_padding_first_to_second_order(pad):
    """Equal pads go into the depthwise convolution itself (no padded copy): the same values and gradients, R1's
    double backward included, as padding x first."""
    torch.manual_seed(0)
    x = torch.randn(2, 3, 9, 9, requires_grad=True)
    f = fir_filter_2d()

    def padded_first(t):
        return F.conv2d(F.pad(t, pad), (f * 2.0)[None, None].expand(3, 1, 4, 4), groups=3)

    def grads(fn):
        y = fn(x)
        (g,) = torch.autograd.grad(y.square().sum(), x, create_graph=True)
        return y, g, torch.autograd.grad(g.square().sum(), x)[0]

    for ours, ref in zip(grads(lambda t: _fir(t, f, pad, gain=2.0)), grads(padded_first), strict=True):
        assert (ours - ref).abs().max() <= 1e-5 * ref.abs().max()
