"""StyleGAN2-style building blocks in plain PyTorch.

Equalised learning rate (weights stored at unit scale and multiplied by ``1/sqrt(fan_in)`` at run
time), FIR resampling with the [1, 3, 3, 1] filter, modulated convolutions and the minibatch
standard-deviation layer. Written from the StyleGAN2 / StyleGAN2-ADA papers.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import Tensor, nn

LRELU_SLOPE = 0.2
LRELU_GAIN = math.sqrt(2.0)


def leaky_clamp_(x: Tensor, lo: float = -math.inf, hi: float = math.inf, slope: float = LRELU_SLOPE,
                 gain: float = 1.0) -> Tensor:
    """In place: x ← leaky_relu(clamp(x, lo, hi), slope) · gain (slope 1: no activation), for gain > 0.

    The same values as those three ops, but autograd keeps only the result: an in-place ``clamp_`` keeps a copy of
    its input, and ``leaky_relu(x) * gain`` keeps x, while the sign of the result and whether it lies strictly
    inside its clamped range give the gradient. That range is open where ``clamp``'s is closed, so an input equal
    to a bound (a measure-zero event) gets gradient 0 instead of 1. The tri-plane decoder's activations at 512²
    are most of what G's step keeps for its backward (benchmarks/RESULTS.md, "Peak memory").
    """
    return _LeakyClamp.apply(x, lo, hi, slope, gain)


class _LeakyClamp(torch.autograd.Function):
    """``leaky_clamp_``'s in-place op, whose backward needs only its output; differentiable again (R1)."""

    @staticmethod
    def forward(ctx, x: Tensor, lo: float, hi: float, slope: float, gain: float) -> Tensor:
        ctx.slope, ctx.gain, ctx.bounds = slope, gain, None
        ctx.mark_dirty(x)
        clamped = lo > -math.inf or hi < math.inf
        if clamped and slope == 1.0 and gain == 1.0 and x.device.type == "cpu":
            # A bare clamp (the tri-plane outputs'), which rarely bites: when nothing reaches a bound the op is the
            # identity and its backward needs nothing kept. Only on CPUs: on CUDA the test would stall the queue.
            low, high = x.aminmax()
            if lo < low.item() and high.item() < hi:
                ctx.identity = True
                return x
        ctx.identity = False
        ctx.bounds = _leaky_clamp_forward_(x, lo, hi, slope, gain)
        ctx.save_for_backward(x)
        return x

    @staticmethod
    def backward(ctx, grad: Tensor) -> tuple[Tensor, None, None, None, None]:
        if ctx.identity:
            return grad, None, None, None, None
        (y,) = ctx.saved_tensors
        return _leaky_clamp_gradient(grad, y, ctx.slope, ctx.gain, ctx.bounds), None, None, None, None


def _leaky_clamp_forward_(x: Tensor, lo: float, hi: float, slope: float, gain: float) -> list[float] | None:
    """``_leaky_clamp_values`` on x in place; → the bounds' images under the same ops in x's dtype (a clamped
    input's output equals them exactly), which ``_leaky_clamp_gradient`` needs, or None without a clamp."""
    bounds = None
    if lo > -math.inf or hi < math.inf:
        bounds = _leaky_clamp_values(torch.tensor([lo, hi], dtype=x.dtype, device="cpu"), lo, hi, slope, gain)
        bounds = bounds.tolist()
    _leaky_clamp_values(x, lo, hi, slope, gain)
    return bounds


def _leaky_clamp_gradient(grad: Tensor, y: Tensor, slope: float, gain: float, bounds: list[float] | None) -> Tensor:
    """The input gradient of ``_leaky_clamp_values`` from its output y alone: 0 where y lies on a bound."""
    if gain != 1.0:
        grad = grad * gain
    if slope != 1.0:
        # The native op, not a where(): in a double backward (D's R1) its derivative links y to the graph with
        # zeros, so every parameter before it has a gradient as with F.leaky_relu, and Adam steps them alike.
        grad = torch.ops.aten.leaky_relu_backward(grad, y, slope, True)
    if bounds is not None:
        lo, hi = bounds
        grad = torch.where((y > lo) & (y < hi), grad, 0.0)
    return grad


def _leaky_clamp_values(x: Tensor, lo: float, hi: float, slope: float, gain: float) -> Tensor:
    """x ← leaky_relu(clamp(x, lo, hi), slope) · gain in place: the ops ``leaky_clamp_`` stands for, in their order."""
    if lo > -math.inf or hi < math.inf:
        x.clamp_(lo, hi)
    if slope != 1.0:
        F.leaky_relu_(x, slope)
    if gain != 1.0:
        x.mul_(gain)
    return x


def normalize_2nd_moment(x: Tensor, dim: int = 1, eps: float = 1e-8) -> Tensor:
    """x / sqrt(mean(x²) + eps) along ``dim``."""
    return x * (x.square().mean(dim=dim, keepdim=True) + eps).rsqrt()


def fir_filter_2d(taps: tuple[float, ...] = (1.0, 3.0, 3.0, 1.0)) -> Tensor:
    """Separable 2D low-pass filter, the outer product of ``taps`` normalised to sum 1. [K, K]."""
    f = torch.tensor(taps, dtype=torch.float32)
    f = torch.outer(f, f)
    return f / f.sum()


def log_fourier_coefficients(max_value: float) -> Tensor:
    """The original's Fourier coefficients for inputs multiplied by ``max_value``: π·2^j / 2^n, j < n = ⌈log2 max⌉.

    The original encodes a scalar v ∈ [0, 1] (or [−1, 1]) as sin/cos of (max_value·v)·coef, so the lowest
    frequency spans about one period over the input's range and each further one doubles it. Its patch
    encoder (max 1000 → 10 coefficients π·2^j/1024), camera encoder (64 → 6) and sphere background
    (period 64 → 6) all follow this rule. [n].
    """
    n = math.ceil(math.log2(max_value))
    return math.pi * 2.0 ** torch.arange(n, dtype=torch.float32) / 2.0**n


def _fir(x: Tensor, f: Tensor, pad: tuple[int, int, int, int], gain: float,
         fold_channels: bool | None = None) -> Tensor:
    """Depthwise convolution of x [B, C, H, W] with the 2D filter f after zero padding (l, r, t, b).

    ``fold_channels`` (default: on CUDA) computes it as a one-channel convolution of [B·C, 1, H, W]. Equal pads
    are the convolution's own padding (the same sums: the padded zeros add nothing), which spares a padded copy
    of x; other pads copy.
    """
    b, c, h, w = x.shape
    # The filter is symmetric, so correlation and convolution agree.
    weight = (f * gain).to(x.dtype)[None, None]
    equal = len(set(pad)) == 1
    same = pad[0] if equal else 0
    if fold_channels is None:
        fold_channels = x.is_cuda
    if fold_channels:
        # Channels folded into the batch: one one-channel convolution with the same sums as the depthwise
        # one below. Autograd's double backward (R1) of a grouped convolution runs one convolution per
        # group: thousands of small kernels per R1 step, most of its GPU time (benchmarks/RESULTS.md, GPU).
        x = x.reshape(b * c, 1, h, w)
        x = F.conv2d(x if equal else F.pad(x, pad), weight, padding=same)
        return x.reshape(b, c, *x.shape[-2:])
    # On CPUs the depthwise convolution is the fastest form of the forward and backward passes; its own
    # backward keeps R1's double backward depthwise too (see _DepthwiseFilter).
    x = x if equal else F.pad(x, pad)
    return _DepthwiseFilter.apply(x, weight.expand(c, 1, *f.shape), same)


class _DepthwiseFilter(torch.autograd.Function):
    """Depthwise correlation of x [B, C, H, W] with a constant filter [C, 1, k, k] and zero ``padding`` p on every
    side → [B, C, H+2p−k+1, W+2p−k+1].

    Its backward is the adjoint, again a depthwise correlation (of the zero-padded gradient with the flipped
    filter) computed by this same function, so every order of derivative stays one depthwise convolution.
    Autograd's own double backward of a grouped convolution runs one convolution per channel: thousands of
    convolutions and most of the CPU time of a large model's R1 step (benchmarks/RESULTS.md, "Speed work on D
    and R1").

    Mixed dtypes: the output has x's dtype (or autocast's, as ``F.conv2d``), and the backward casts the filter
    to the incoming gradient's dtype. Under bf16 autocast the gradient is bf16 while the saved filter is fp32,
    and without oneDNN's lenient kernels (CPUs without AVX-512) a mixed-dtype convolution is an error.
    """

    @staticmethod
    def forward(ctx, x: Tensor, weight: Tensor, padding: int = 0) -> Tensor:
        ctx.save_for_backward(weight)
        ctx.input_shape, ctx.padding = x.shape, padding
        return F.conv2d(x, weight.to(x.dtype), padding=padding, groups=weight.shape[0])

    @staticmethod
    def backward(ctx, grad: Tensor) -> tuple[Tensor, None, None]:
        (weight,) = ctx.saved_tensors
        weight = weight.to(grad.dtype)
        if not torch.is_grad_enabled():  # a first-order backward: the native kernel is faster (RESULTS.md)
            return torch.nn.grad.conv2d_input(ctx.input_shape, weight, grad, padding=ctx.padding,
                                              groups=weight.shape[0]), None, None
        return _DepthwiseFilter.apply(grad, weight.flip(-2, -1), weight.shape[-1] - 1 - ctx.padding), None, None


def upsample2d(x: Tensor, f: Tensor) -> Tensor:
    """2× FIR up-sampling: zero insertion, pad (2, 1), filter with gain 4. [B,C,H,W] → [B,C,2H,2W].

    The zero-inserted image is written into its padded frame at once: one buffer instead of two."""
    b, c, h, w = x.shape
    k = f.shape[-1]
    p0, p1 = (k + 1) // 2, (k - 2) // 2
    up = x.new_zeros(b, c, 2 * h + p0 + p1, 2 * w + p0 + p1)
    up[:, :, p0 : p0 + 2 * h : 2, p0 : p0 + 2 * w : 2] = x
    return _fir(up, f, (0, 0, 0, 0), gain=4.0)


def downsample2d(x: Tensor, f: Tensor) -> Tensor:
    """2× FIR down-sampling: pad (1, 1), filter, keep every second pixel. [B,C,H,W] → [B,C,H/2,W/2]."""
    k = f.shape[-1]
    p0, p1 = (k - 1) // 2, (k - 2) // 2
    return _fir(x, f, (p0, p1, p0, p1), gain=1.0)[:, :, ::2, ::2]


class FullyConnected(nn.Module):
    """Equalised-lr linear layer: y = act(x · (w·lr/√in)ᵀ + b·lr).

    Weights are stored as N(0, 1)/lr_multiplier so that Adam's effective step scales with lr_multiplier.
    """

    def __init__(
        self,
        in_features: int,
        out_features: int,
        activation: bool = False,
        lr_multiplier: float = 1.0,
        bias_init: float = 0.0,
    ) -> None:
        super().__init__()
        self.in_features, self.out_features = in_features, out_features
        self.activation = activation
        self.weight = nn.Parameter(torch.randn(out_features, in_features) / lr_multiplier)
        self.bias = nn.Parameter(torch.full([out_features], float(bias_init)))
        self.weight_gain = lr_multiplier / math.sqrt(in_features)
        self.bias_gain = lr_multiplier

    def forward(self, x: Tensor) -> Tensor:
        """x [..., in] → [..., out]."""
        w = self.weight.to(x.dtype) * self.weight_gain
        b = self.bias.to(x.dtype)
        if self.bias_gain != 1:
            b = b * self.bias_gain
        x = F.linear(x, w, b)
        return leaky_clamp_(x, gain=LRELU_GAIN) if self.activation else x

    def extra_repr(self) -> str:
        return f"in={self.in_features}, out={self.out_features}, lrelu={self.activation}"


class Conv2dLayer(nn.Module):
    """Equalised-lr convolution with optional 2× FIR down-sampling, bias, lrelu and clamp.

    Down-sampling follows StyleGAN2: a 3×3 conv low-pass filters with padding 2 then convolves with
    stride 2; a 1×1 conv down-samples with the FIR filter first.
    """

    def __init__(
        self,
        in_channels: int,
        out_channels: int,
        kernel_size: int,
        bias: bool = True,
        activation: bool = True,
        down: bool = False,
        conv_clamp: float | None = None,
    ) -> None:
        super().__init__()
        self.in_channels, self.out_channels, self.kernel_size = in_channels, out_channels, kernel_size
        self.activation, self.down, self.conv_clamp = activation, down, conv_clamp
        self.weight = nn.Parameter(torch.randn(out_channels, in_channels, kernel_size, kernel_size))
        self.bias = nn.Parameter(torch.zeros(out_channels)) if bias else None
        self.weight_gain = 1.0 / math.sqrt(in_channels * kernel_size * kernel_size)
        self.register_buffer("resample_filter", fir_filter_2d(), persistent=False)

    def forward(self, x: Tensor, gain: float = 1.0) -> Tensor:
        """x [B, in, H, W] → [B, out, H', W'] (H' = H/2 when down-sampling).

        act(conv(x) + b) · gain, clamped to ±conv_clamp · gain. The bias rides in the convolution and the
        activation, gain and clamp run in place on its output (``leaky_clamp_``, with the clamp moved before the
        activation as the bounds' preimages), so autograd keeps one tensor per layer instead of three; without an
        activation the gain is folded into w and b.
        """
        out_gain = 1.0 if self.activation else gain
        w = self.weight.to(x.dtype) * (self.weight_gain * out_gain)
        b = None if self.bias is None else self.bias.to(x.dtype)
        if b is not None and out_gain != 1.0:
            b = b * out_gain
        f = self.resample_filter
        if self.down and self.kernel_size == 1:
            x = F.conv2d(downsample2d(x, f), w, b)
        elif self.down:
            pad = self.kernel_size // 2 + 1
            x = F.conv2d(_fir(x, f, (pad, pad, pad, pad), gain=1.0), w, b, stride=2)
        else:
            x = F.conv2d(x, w, b, padding=self.kernel_size // 2)
        clamp = self.conv_clamp
        if self.activation:
            if clamp is None:
                return leaky_clamp_(x, gain=LRELU_GAIN * gain)
            return leaky_clamp_(x, -clamp / (LRELU_SLOPE * LRELU_GAIN), clamp / LRELU_GAIN, gain=LRELU_GAIN * gain)
        if clamp is not None:
            return leaky_clamp_(x, -clamp * gain, clamp * gain, slope=1.0)
        return x

    def extra_repr(self) -> str:
        return f"in={self.in_channels}, out={self.out_channels}, k={self.kernel_size}, down={self.down}"


def modulated_conv2d(x: Tensor, weight: Tensor, styles: Tensor, up_filter: Tensor | None = None) -> Tensor:
    """StyleGAN2 weight modulation, computed on activations (one shared convolution).

    x [B, I, H, W], weight [O, I, k, k], styles [B, I] → [B, O, H', W'] with H' = 2H when an
    ``up_filter`` is given. Scaling the input channels by the styles equals convolving with per-sample
    modulated weights, but runs as one batched convolution. Padding keeps the size (k // 2); the
    up-sampling path is a stride-2 transposed convolution followed by the FIR filter (gain 4), as in
    StyleGAN2. Demodulation is left to the caller (``demodulation_coefficients``), which can fuse it
    with whatever follows.
    """
    weight = weight.to(x.dtype)
    k = weight.shape[-1]
    if up_filter is None:
        return _StyledConvolution.apply(x, styles, weight, False)
    x = _StyledConvolution.apply(x, styles, weight.transpose(0, 1), True)  # [B, O, 2H + k - 2, 2W + k - 2]
    pad = 5 - k  # the 4-tap filter brings the size back to 2H
    return _fir(x, up_filter, (pad - pad // 2, pad // 2, pad - pad // 2, pad // 2), gain=4.0)


class _StyledConvolution(torch.autograd.Function):
    """conv(x · styles[:, :, None, None], weight): a 'same' 3×3 / 1×1 convolution, or (``transposed``) a stride-2
    transposed one with weight [I, O, k, k]. x [B, I, H, W], styles [B, I].

    Autograd would keep the styled input x · styles for the weight's gradient, a second copy of the activations
    beside x (which the previous layer's activation keeps anyway); this recomputes it in the backward, one
    multiply, instead. The gradients are those autograd computes for the two ops. Differentiable again.
    """

    @staticmethod
    def forward(ctx, x: Tensor, styles: Tensor, weight: Tensor, transposed: bool) -> Tensor:
        ctx.save_for_backward(x, styles, weight)
        ctx.transposed = transposed
        styled = x * styles[:, :, None, None]
        if transposed:
            return F.conv_transpose2d(styled, weight, stride=2)
        return F.conv2d(styled, weight, padding=weight.shape[-1] // 2)

    @staticmethod
    def backward(ctx, grad: Tensor) -> tuple[Tensor | None, Tensor | None, Tensor | None, None]:
        x, styles, weight = ctx.saved_tensors
        styled = x * styles[:, :, None, None]
        # Autocast ran the convolution in its own dtype: the gradient's.
        conv_input, conv_weight = styled.to(grad.dtype), weight.to(grad.dtype)
        stride, padding = ([2, 2], [0, 0]) if ctx.transposed else ([1, 1], [weight.shape[-1] // 2] * 2)
        grad_styled, grad_weight, _ = torch.ops.aten.convolution_backward(
            grad, conv_input, conv_weight, None, stride, padding, [1, 1], ctx.transposed, [0, 0], 1,
            [True, ctx.needs_input_grad[2], False])
        grad_styled = grad_styled.to(styled.dtype)
        grad_x = grad_styled * styles[:, :, None, None] if ctx.needs_input_grad[0] else None
        grad_styles = (grad_styled * x).sum(dim=(2, 3)) if ctx.needs_input_grad[1] else None
        if grad_weight is not None:
            grad_weight = grad_weight.to(weight.dtype)
        return grad_x, grad_styles, grad_weight, None


def demodulation_coefficients(weight: Tensor, styles: Tensor) -> Tensor:
    """1 / ‖modulated weight of output channel o‖ per sample: weight [O, I, k, k], styles [B, I] → [B, O]."""
    return (styles.square() @ weight.to(styles.dtype).square().sum(dim=(2, 3)).T + 1e-8).rsqrt()


def scale_shift_leaky_clamp_(x: Tensor, scale: Tensor, offset: Tensor, noise: Tensor | None, lo: float,
                             hi: float) -> Tensor:
    """In place on a convolution's output: leaky_clamp_(x · scale + offset (+ noise), lo, hi), keeping only the result.

    x [B, O, H, W], scale [B, O] (a synthesis layer's demodulation × gain, > 0), offset broadcastable to x (bias,
    constant noise), noise [B, 1, H, W] or None. The values are ``torch.addcmul``, ``add_`` and ``leaky_clamp_``'s,
    bitwise. ``addcmul`` would keep x for scale's gradient Σ grad · x beside the result that the activation keeps:
    here the backward takes x back from the result (the activation inverted where it does not clamp, then offset
    and noise subtracted, then ÷ scale on the sum), which differs from x by a few ulps of the pre-activation. That
    is G's largest saved tensor per layer (benchmarks/RESULTS.md, "Peak memory"). Differentiable once: G's
    training step has no double backward.
    """
    return _ScaleShiftLeakyClamp.apply(x, scale, offset, noise, lo, hi)


class _ScaleShiftLeakyClamp(torch.autograd.Function):
    """``scale_shift_leaky_clamp_``'s op; its backward needs the result, scale, offset and noise."""

    @staticmethod
    def forward(ctx, x: Tensor, scale: Tensor, offset: Tensor, noise: Tensor | None, lo: float, hi: float) -> Tensor:
        scale4 = scale[:, :, None, None]
        # In place only where addcmul's result keeps x's dtype (a bf16 x with fp32 scale is promoted, as before).
        same_dtype = torch.promote_types(torch.promote_types(x.dtype, scale.dtype), offset.dtype) == x.dtype
        if same_dtype:
            ctx.mark_dirty(x)
            y = torch.addcmul(offset, x, scale4, out=x)
        else:
            y = torch.addcmul(offset, x, scale4)
        if noise is not None:
            y.add_(noise)
        ctx.bounds = _leaky_clamp_forward_(y, lo, hi, LRELU_SLOPE, 1.0)
        ctx.save_for_backward(y, scale, offset, noise)
        return y

    @staticmethod
    @torch.autograd.function.once_differentiable
    def backward(ctx, grad: Tensor) -> tuple[Tensor | None, ...]:
        y, scale, offset, noise = ctx.saved_tensors
        grad_pre = _leaky_clamp_gradient(grad, y, LRELU_SLOPE, 1.0, ctx.bounds)
        grad_scale = grad_offset = grad_noise = None
        if ctx.needs_input_grad[1]:
            conv_times_scale = torch.where(y > 0, y, y / LRELU_SLOPE).sub_(offset)
            if noise is not None:
                conv_times_scale.sub_(noise)
            grad_scale = (conv_times_scale.mul_(grad_pre).sum(dim=(2, 3)) / scale).to(scale.dtype)
        if ctx.needs_input_grad[2]:
            grad_offset = grad_pre.sum_to_size(offset.shape).to(offset.dtype)
        if noise is not None and ctx.needs_input_grad[3]:
            grad_noise = grad_pre.sum(dim=1, keepdim=True).to(noise.dtype)
        grad_x = grad_pre.mul_(scale[:, :, None, None]) if ctx.needs_input_grad[0] else None
        return grad_x, grad_scale, grad_offset, grad_noise, None, None


class MinibatchStd(nn.Module):
    """Appends the per-group feature standard deviation as extra channels.

    Groups are strided: with G = min(group_size, N), sample n belongs to group n mod (N / G).
    """

    def __init__(self, group_size: int, num_channels: int = 1) -> None:
        super().__init__()
        self.group_size, self.num_channels = group_size, num_channels

    def forward(self, x: Tensor) -> Tensor:
        """x [N, C, H, W] → [N, C + num_channels, H, W]."""
        n, c, h, w = x.shape
        g = min(self.group_size, n)
        if n % g != 0:
            raise ValueError(f"minibatch-stddev: batch {n} is not divisible by the group size {g}")
        f = self.num_channels
        y = x.reshape(g, -1, f, c // f, h, w)
        y = (y - y.mean(dim=0)).square().mean(dim=0)
        y = (y + 1e-8).sqrt().mean(dim=(2, 3, 4))  # [N/G, F]
        y = y.reshape(-1, f, 1, 1).repeat(g, 1, h, w)
        return torch.cat([x, y], dim=1)
