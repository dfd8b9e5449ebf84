"""Which kernels run the dense layers, decided once per machine when a model is loaded for inference.

On an x86 CPU, torch's `nn.Linear` goes to MKL's sgemm, which on AMD EPYC reaches about half the
rate of oneDNN's GEMM on the same cores (measured for every layer shape of the R50 model, 2 threads:
0.43-0.5x the time). The ResNet trunk runs in channels-last with its frozen batch norms folded
into the convolutions and each block's ReLUs and residual sum fused into them; the decoder's
self-attention gets oneDNN projections; glibc keeps large freed blocks for reuse. `Kernels.select`
turns all of it on where oneDNN is available; `Kernels()` is torch's default path, kept so that
`clickpose bench` measures against it in one process. For tiny inputs (the test presets) the
fixed costs of these kernels outweigh their gain; they pay from the R50 at real image sizes on.

bfloat16 is used only where the hardware computes it natively (CPU flags `avx512_bf16` or
`amx_bf16`, or CUDA); elsewhere it would be emulated and slower, so `select` says so and stays
float32. In bfloat16 the trunk, the input projections and every GEMM of the transformer layers
(and of `ref_point_head`) run in bf16; on oneDNN so does the residual stream between them
(`Kernels.bf16_stream`). The layer norms' parameters, the sampling locations (reference plus
offset) and the corner weights, the box/keypoint/class heads and the sigmoid reference chain stay
float32, so a pinned joint stays exact and boxes/keypoints are regressed at full precision.
"""
from __future__ import annotations

import ctypes
import logging
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from .backbone import Bottleneck, FrozenBatchNorm2d

logger = logging.getLogger(__name__)

Precision = Literal["float32", "bfloat16"]
PRECISIONS: tuple[str, ...] = ("float32", "bfloat16")
NATIVE_BF16_FLAGS = frozenset({"avx512_bf16", "amx_bf16"})
# The modules whose GEMMs run in bf16 in bfloat16 mode: the transformer layers and the decoder's
# positional-query MLP. Every prediction head (box, keypoint, class) lies outside them and stays float32.
BFLOAT16_MODULES = ("transformer.encoder.layers", "transformer.decoder.layers", "transformer.decoder.ref_point_head")


@dataclass(frozen=True)
class Kernels:
    """linear: 'aten' (torch's nn.Linear) or 'onednn' (prepacked oneDNN GEMMs, and the trunk's
    blocks as fused oneDNN convolutions: `FusedBottleneck`; CPU);
    channels_last: run the ResNet trunk in channels-last memory format;
    precision: 'float32' or 'bfloat16' (see the module docstring for what stays float32);
    keep_heap: large tensors come from glibc's heap and stay there when freed (`activate`)."""
    linear: Literal["aten", "onednn"] = "aten"
    channels_last: bool = False
    precision: Precision = "float32"
    keep_heap: bool = False

    @classmethod
    def select(cls, device: torch.device, precision: str = "float32",
               cpu_flags: frozenset[str] | None = None) -> "Kernels":
        """The fastest kernels for `device`. cpu_flags: the CPU's feature flags (default: read
        from /proc/cpuinfo); bfloat16 falls back to float32, with a warning, without native bf16."""
        if precision not in PRECISIONS:
            raise ValueError(f"precision must be one of {', '.join(PRECISIONS)}; got {precision!r}")
        if precision == "bfloat16" and not bf16_is_native(device, cpu_flags):
            logger.warning("precision 'bfloat16' requested, but this %s has no native bfloat16 arithmetic "
                           "(CPU flags avx512_bf16 / amx_bf16, or a CUDA device); running in float32",
                           "CPU" if device.type == "cpu" else device.type)
            precision = "float32"
        keep_heap = device.type == "cpu" and _glibc() is not None
        if device.type == "cpu" and torch.backends.mkldnn.is_available():
            return cls("onednn", True, precision, keep_heap)
        return cls("aten", False, precision, keep_heap)

    def apply(self, model: nn.Module) -> nn.Module:
        """Rebuild `model`'s layers for these kernels, in place (inference only: packed weights
        are not trainable). Call after the model is on its device and in float32. Also
        `activate`s the process-wide part of these kernels."""
        if self.linear == "onednn" and self.precision == "bfloat16":
            require_onednn_bf16()
        self.activate()
        if self.linear == "onednn":
            fold_frozen_batch_norm(model.backbone)
            _replace(model.backbone, Bottleneck, FusedBottleneck)
        if self.channels_last:
            model.backbone.to(memory_format=torch.channels_last)
            model.input_proj.to(memory_format=torch.channels_last)
        if self.precision == "bfloat16":     # the trunk's bf16 feature maps go straight into the projections
            body, bf16 = model.backbone[0], torch.bfloat16
            body.body = LowPrecision(body.body.to(bf16), bf16, output=None)
            stream = bf16 if self.bf16_stream else torch.float32
            for i, proj in enumerate(model.input_proj):
                model.input_proj[i] = LowPrecision(proj.to(bf16), bf16, output=stream)
            model.transformer.level_embed.data = model.transformer.level_embed.data.to(stream)
        for path, parent in list(model.named_modules()):
            for name, child in parent.named_children():
                if type(child) is nn.Linear:
                    setattr(parent, name, self._linear(child, self._dtype_of(f"{path}.{name}")))
                elif type(child) is nn.MultiheadAttention and self.linear == "onednn":
                    setattr(parent, name, OneDNNSelfAttention(child, self._dtype_of(f"{path}.{name}")))
        if self.linear == "onednn":
            fuse_feed_forward_relu(model)
        return model

    def activate(self) -> None:
        """Set the process-wide allocator policy of `keep_heap` (glibc only; a no-op elsewhere).

        One forward at 800x1216 allocates ~2 GB of short-lived tensors of 10-165 MB. By default
        glibc maps each from the kernel and unmaps it when freed, so every one is paid again in
        page faults: a fresh 165 MB tensor costs 5x a reused one to fill, about 10 % of the whole
        forward (measured). With keep_heap they come from the heap and are reused; the resident
        size stays at the peak of one forward. Threads other than the main one keep their own
        arenas, where glibc still maps blocks this large."""
        libc = _glibc()
        if libc is None:
            return
        if self.keep_heap:
            libc.mallopt(_M_TRIM_THRESHOLD, _KEEP_BYTES)       # never hand the heap's top back
        libc.mallopt(_M_MMAP_MAX, 0 if self.keep_heap else _DEFAULT_MMAP_MAX)

    @property
    def bf16_stream(self) -> bool:
        """In bfloat16 on oneDNN the transformer's residual stream (the tokens between layers, the
        encoder memory) is bf16 too: its adds and layer norms move half the bytes, and no GEMM
        input is cast (800x1216, one thread: 34 ms less per forward). It needs layer norms that take
        bf16 input with float32 parameters, which torch has on the CPU and not on CUDA; elsewhere
        the stream stays float32."""
        return self.precision == "bfloat16" and self.linear == "onednn"

    def _dtype_of(self, path: str) -> torch.dtype:
        """bfloat16 for the GEMMs inside BFLOAT16_MODULES in bfloat16 mode (and `enc_output`, whose
        output feeds a layer norm, with a bf16 stream), else float32."""
        modules = BFLOAT16_MODULES + (("transformer.enc_output",) if self.bf16_stream else ())
        low = self.precision == "bfloat16" and any(path == m or path.startswith(m + ".") for m in modules)
        return torch.bfloat16 if low else torch.float32

    def _linear(self, linear: nn.Linear, dtype: torch.dtype) -> nn.Module:
        if self.linear == "onednn":
            return OneDNNLinear(linear, dtype)
        return linear if dtype == torch.float32 else CastLinear(linear, dtype)


def fold_frozen_batch_norm(module: nn.Module) -> None:
    """Merge every convolution -> FrozenBatchNorm2d pair of the ResNet into one convolution with a
    bias (the norm becomes an Identity): one pass less over each feature map, same arithmetic up to
    rounding. Pairs are named (convN, bnN), or (0, 1) in a downsample Sequential."""
    for parent in list(module.modules()):
        children = dict(parent.named_children())
        for name, bn in children.items():
            if isinstance(bn, FrozenBatchNorm2d):
                conv_name = "conv" + name[2:] if name.startswith("bn") else str(int(name) - 1)
                setattr(parent, conv_name, _folded(children[conv_name], bn))
                setattr(parent, name, nn.Identity())


def _folded(conv: nn.Conv2d, bn: FrozenBatchNorm2d) -> nn.Conv2d:
    scale = bn.weight.double() * (bn.running_var.double() + 1e-5).rsqrt()
    shift = bn.bias.double() - bn.running_mean.double() * scale
    if conv.bias is not None:
        shift = shift + conv.bias.double() * scale
    out = nn.Conv2d(conv.in_channels, conv.out_channels, conv.kernel_size, conv.stride, conv.padding,
                    conv.dilation, conv.groups, bias=True, device=conv.weight.device, dtype=conv.weight.dtype)
    with torch.no_grad():
        out.weight.copy_(conv.weight.double() * scale[:, None, None, None])
        out.bias.copy_(shift)
    return out


class FusedBottleneck(nn.Module):
    """A ResNet Bottleneck whose batch norms are folded (`fold_frozen_batch_norm`), run as three
    oneDNN convolutions with the ReLUs and the residual sum fused into them: no separate pass
    over any feature map (a layer1 block at 800x1216: 0.6x the time, one thread)."""

    def __init__(self, block: Bottleneck):
        super().__init__()
        if not all(isinstance(getattr(block, f"bn{i}"), nn.Identity) for i in (1, 2, 3)):
            raise ValueError("FusedBottleneck needs a block whose batch norms are folded into its convolutions")
        self.conv1, self.conv2, self.conv3, self.downsample = block.conv1, block.conv2, block.conv3, block.downsample

    def forward(self, x: Tensor) -> Tensor:
        """x [B,C,H,W] channels-last -> [B,4*width,H/stride,W/stride]."""
        identity = x if self.downsample is None else self.downsample(x)
        out = _onednn_conv(self.conv2, _onednn_conv(self.conv1, x))
        c = self.conv3
        return torch.ops.mkldnn._convolution_pointwise.binary(
            out, identity, c.weight, c.bias, c.padding, c.stride, c.dilation, c.groups, "add", None, "relu", [], "")


def _onednn_conv(conv: nn.Conv2d, x: Tensor) -> Tensor:
    """relu(conv(x)) as one oneDNN primitive."""
    return torch.ops.mkldnn._convolution_pointwise(x, conv.weight, conv.bias, conv.padding, conv.stride,
                                                   conv.dilation, conv.groups, "relu", [], "")


def fuse_feed_forward_relu(model: nn.Module) -> None:
    """Fold each transformer layer's ReLU (`activation`) into its `linear1` as a oneDNN post-op:
    one pass less over the [tokens, d_ffn] activations (5 ms of an encoder layer's 50 ms
    feed-forward block, 800x1216, one thread); ReLU is exact, so the outputs are the same."""
    for layer in model.modules():
        if isinstance(getattr(layer, "activation", None), nn.ReLU) and isinstance(layer.linear1, OneDNNLinear):
            layer.linear1.activation = "relu"
            layer.activation = nn.Identity()


def _replace(module: nn.Module, kind: type, new: type) -> None:
    for parent in list(module.modules()):
        for name, child in parent.named_children():
            if type(child) is kind:
                setattr(parent, name, new(child))


class OneDNNLinear(nn.Module):
    """An inference-only nn.Linear whose weight is prepacked once for oneDNN's GEMM.

    Computes in `dtype` (float32 or bfloat16); the input is cast to it, the output is in it.
    activation: "none" or "relu", applied by the GEMM itself (a oneDNN post-op)."""

    def __init__(self, linear: nn.Linear, dtype: torch.dtype = torch.float32, activation: str = "none"):
        super().__init__()
        if activation not in ("none", "relu"):
            raise ValueError(f"OneDNNLinear activation must be 'none' or 'relu', got {activation!r}")
        if dtype == torch.bfloat16:
            require_onednn_bf16()
        self.in_features, self.out_features, self.dtype = linear.in_features, linear.out_features, dtype
        self.activation = activation
        weight = linear.weight.detach().to(dtype)
        # An opaque oneDNN tensor: a plain attribute, not a buffer (it has no strides to save or move).
        self.packed = torch.ops.mkldnn._reorder_linear_weight(weight, None)
        self.bias = None if linear.bias is None else linear.bias.detach().to(dtype)

    def forward(self, x: Tensor) -> Tensor:
        """x [..., in_features] -> [..., out_features] in self.dtype."""
        return torch.ops.mkldnn._linear_pointwise(x.to(self.dtype), self.packed, self.bias, self.activation, [], "")

    def extra_repr(self) -> str:
        act = "" if self.activation == "none" else f", activation={self.activation}"
        return f"in_features={self.in_features}, out_features={self.out_features}, dtype={self.dtype}{act}"


class OneDNNSelfAttention(nn.Module):
    """The decoder's batch-first nn.MultiheadAttention (no dropout, query = key) with its input and
    output projections as prepacked oneDNN GEMMs and one attention kernel between them: torch's
    fused `scaled_dot_product_attention` in float32; in bfloat16 two bf16 matmuls around a float32
    softmax, which on this CPU takes 0.45-0.6x the fused kernel's time for the decoder's shapes."""

    def __init__(self, mha: nn.MultiheadAttention, dtype: torch.dtype = torch.float32):
        super().__init__()
        if not (mha.batch_first and mha._qkv_same_embed_dim and mha.bias_k is None and mha.in_proj_bias is not None
                and not mha.add_zero_attn):
            raise ValueError("OneDNNSelfAttention supports batch-first attention with packed q/k/v projections")
        d = mha.embed_dim
        self.num_heads = mha.num_heads
        self.qk = OneDNNLinear(_as_linear(mha.in_proj_weight[:2 * d], mha.in_proj_bias[:2 * d]), dtype)
        self.v = OneDNNLinear(_as_linear(mha.in_proj_weight[2 * d:], mha.in_proj_bias[2 * d:]), dtype)
        self.out = OneDNNLinear(mha.out_proj, dtype)
        self.attend = F.scaled_dot_product_attention if dtype == torch.float32 else matmul_attention

    def forward(self, query: Tensor, key: Tensor, value: Tensor, attn_mask: Tensor | None = None,
                need_weights: bool = False) -> tuple[Tensor, None]:
        """query = key, value [B,Q,C]; attn_mask [Q,Q] or [B*heads,Q,Q] bool, True = blocked ->
        ([B,Q,C], None), like nn.MultiheadAttention with need_weights=False."""
        if key is not query or need_weights:
            raise ValueError("OneDNNSelfAttention computes self-attention (key is query) without weights")
        b, t, c = query.shape
        heads = lambda x: x.view(b, t, self.num_heads, -1).transpose(1, 2)
        q, k = self.qk(query).chunk(2, -1)
        allowed = None
        if attn_mask is not None:      # SDPA's boolean masks say where attention is allowed
            allowed = ~(attn_mask if attn_mask.dim() == 2 else attn_mask.view(b, self.num_heads, t, t))
        out = self.attend(heads(q), heads(k), heads(self.v(value)), attn_mask=allowed)
        return self.out(out.transpose(1, 2).reshape(b, t, c)), None


def matmul_attention(q: Tensor, k: Tensor, v: Tensor, attn_mask: Tensor | None = None) -> Tensor:
    """`scaled_dot_product_attention` as two matmuls in the inputs' dtype around a softmax that
    accumulates in float32 (torch's own for long rows; for the 18-token rows of the pose layers,
    where that kernel is slow in bf16, a float32 one rounded afterwards: same result, 0.4x the time).

    q, k, v [B,H,T,D]; attn_mask [T,T] or [B,H,T,T] bool, True = allowed -> [B,H,T,D]."""
    scores = torch.matmul(q * q.shape[-1] ** -0.5, k.transpose(-1, -2))
    if attn_mask is not None:
        scores = scores.masked_fill(~attn_mask, float("-inf"))
    short = scores.shape[-1] < 128
    weights = scores.softmax(-1, dtype=torch.float32).to(v.dtype) if short else scores.softmax(-1)
    return torch.matmul(weights, v)


def _as_linear(weight: Tensor, bias: Tensor) -> nn.Linear:
    linear = nn.Linear(weight.shape[1], weight.shape[0], device=weight.device, dtype=weight.dtype)
    with torch.no_grad():
        linear.weight.copy_(weight)
        linear.bias.copy_(bias)
    return linear


class CastLinear(nn.Module):
    """nn.Linear computed in a lower precision (`F.linear` on cast weights): bf16 where oneDNN is absent."""

    def __init__(self, linear: nn.Linear, dtype: torch.dtype):
        super().__init__()
        self.dtype = dtype
        self.weight = linear.weight.detach().to(dtype)
        self.bias = None if linear.bias is None else linear.bias.detach().to(dtype)

    def forward(self, x: Tensor) -> Tensor:
        return F.linear(x.to(self.dtype), self.weight, self.bias)


class LowPrecision(nn.Module):
    """Runs `module` (already converted to `dtype`) on its input cast to `dtype`. output: the dtype
    its result (a tensor or a list of them) is cast to, or None to keep `dtype`."""

    def __init__(self, module: nn.Module, dtype: torch.dtype, output: torch.dtype | None):
        super().__init__()
        self.module, self.dtype, self.output = module, dtype, output

    def forward(self, x: Tensor) -> Tensor | list[Tensor]:
        out = self.module(x.to(self.dtype))
        if self.output is None:
            return out
        return out.to(self.output) if isinstance(out, Tensor) else [f.to(self.output) for f in out]


_M_TRIM_THRESHOLD, _M_MMAP_MAX = -1, -4                    # mallopt parameters (malloc.h)
_DEFAULT_MMAP_MAX, _KEEP_BYTES = 65536, (1 << 31) - 1   # mallopt takes a C int


def _glibc() -> ctypes.CDLL | None:
    """The C library when it is glibc (which has mallopt), else None."""
    try:
        libc = ctypes.CDLL("libc.so.6")
    except OSError:
        return None
    return libc if hasattr(libc, "gnu_get_libc_version") and hasattr(libc, "mallopt") else None


def onednn_bf16_supported() -> bool:
    """True where torch's oneDNN can pack and run bf16 GEMMs. It needs AVX-512 (BW, VL, DQ) or
    AVX-NE-CONVERT; every CPU with avx512_bf16 or amx_bf16 has them, but an emulated bf16 mode
    forced on an older CPU does not."""
    return torch.backends.mkldnn.is_available() and bool(torch.ops.mkldnn._is_mkldnn_bf16_supported())


def require_onednn_bf16() -> None:
    """Refuse the oneDNN bfloat16 kernels, with the reason, where this CPU cannot run them (torch's
    own error names an internal op)."""
    if not onednn_bf16_supported():
        raise ValueError("the oneDNN bfloat16 kernels need a CPU with AVX-512 (BW, VL, DQ) or "
                         "AVX-NE-CONVERT, and this one has neither; use precision 'float32' "
                         "(Kernels.select falls back to it) or the 'aten' kernels")


def bf16_is_native(device: torch.device, cpu_flags: frozenset[str] | None = None) -> bool:
    """True on CUDA, or on a CPU whose flags include avx512_bf16 or amx_bf16."""
    if device.type == "cuda":
        return True
    flags = read_cpu_flags() if cpu_flags is None else cpu_flags
    return bool(NATIVE_BF16_FLAGS & flags)


def read_cpu_flags(path: Path = Path("/proc/cpuinfo")) -> frozenset[str]:
    """The feature flags of the first CPU listed in `path` (empty where it cannot be read)."""
    try:
        for line in path.read_text().splitlines():
            if line.startswith(("flags", "Features")):
                return frozenset(line.split(":", 1)[1].split())
    except OSError:
        pass
    return frozenset()
