"""Small building blocks shared by the encoder, decoder and heads."""
from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Union

import torch
import torch.nn.functional as F
from torch import Tensor, nn


class MLP(nn.Module):
    """`num_layers` Linear layers with ReLU between them (none after the last)."""

    def __init__(self, in_dim: int, hidden_dim: int, out_dim: int, num_layers: int):
        super().__init__()
        dims = [in_dim] + [hidden_dim] * (num_layers - 1)
        self.layers = nn.ModuleList(nn.Linear(a, b) for a, b in zip(dims, dims[1:] + [out_dim]))

    def forward(self, x: Tensor) -> Tensor:
        for i, layer in enumerate(self.layers):
            x = layer(x)
            if i < len(self.layers) - 1:
                x = F.relu(x)
        return x


def inverse_sigmoid(x: Tensor, eps: float = 1e-3) -> Tensor:
    """logit(x) with x clamped to [eps, 1 - eps] (the official eps is 1e-3, not 1e-5)."""
    x = x.clamp(0, 1)
    return torch.log(x.clamp(min=eps) / (1 - x).clamp(min=eps))


def sine_embed(coords: Tensor, num_feats: int, temperature: float = 10000.0) -> Tensor:
    """Sine/cosine embedding of normalised coordinates.

    coords [..., C] with C = 2 (x, y) or 4 (x, y, w, h) -> [..., C * num_feats], laid out as
    (y, x) or (y, x, w, h): the order the official decoder's ref_point_head was trained on. Within
    a coordinate, feature j is sin(phase_j) for even j and cos(phase_j) = sin(phase_j + pi/2) for
    odd j, computed as one sine over all features. The frequency table is float32 as in the
    official code, whatever the model dtype.
    """
    dim_t = torch.arange(num_feats, dtype=torch.float32, device=coords.device)
    dim_t = temperature ** (2 * (dim_t // 2) / num_feats)
    shift = (torch.arange(num_feats, dtype=coords.dtype, device=coords.device) % 2) * (math.pi / 2)
    order = [1, 0] if coords.shape[-1] == 2 else [1, 0, 2, 3]
    phase = torch.addcdiv(shift, (coords[..., order] * (2 * math.pi))[..., None], dim_t)
    return phase.sin().flatten(-2)


@dataclass(frozen=True)
class GroupedAttention:
    """Self-attention only within consecutive groups of `size` tokens (a block-diagonal mask).

    Run as attention over [B*G, size] sequences: the same result as the dense [G*S, G*S] mask,
    without computing the G**2 - G blocks it throws away."""
    size: int


AttentionMask = Union[Tensor, GroupedAttention, None]
