"""Deformable transformer encoder over the flattened multi-level features."""
from __future__ import annotations

import torch
from torch import Tensor, nn

from .deformable_attention import LevelLayout, MSDeformAttn


class EncoderLayer(nn.Module):
    """Post-norm layer: deformable self-attention, then a ReLU feed-forward block."""

    def __init__(self, d_model: int, d_ffn: int, n_levels: int, n_heads: int, n_points: int):
        super().__init__()
        self.self_attn = MSDeformAttn(d_model, n_levels, n_heads, n_points)
        self.norm1 = nn.LayerNorm(d_model)
        self.linear1 = nn.Linear(d_model, d_ffn)
        self.activation = nn.ReLU(inplace=True)   # a module, so that inference kernels can fuse it into linear1
        self.linear2 = nn.Linear(d_ffn, d_model)
        self.norm2 = nn.LayerNorm(d_model)

    def forward(self, src: Tensor, pos: Tensor, ref: Tensor, layout: LevelLayout, padding: Tensor) -> Tensor:
        """src, pos [B,S,C]; ref [B,S,L,2]; padding [B,S] -> [B,S,C]."""
        values = self.self_attn.project_values(src, padding, layout)
        src = self.norm1(src + self.self_attn(src + pos, ref, values, layout))
        return self.norm2(src + self.linear2(self.activation(self.linear1(src))))


class Encoder(nn.Module):
    def __init__(self, num_layers: int, d_model: int, d_ffn: int, n_levels: int, n_heads: int, n_points: int):
        super().__init__()
        self.layers = nn.ModuleList(EncoderLayer(d_model, d_ffn, n_levels, n_heads, n_points)
                                    for _ in range(num_layers))

    def forward(self, src: Tensor, pos: Tensor, layout: LevelLayout, valid_ratios: Tensor, padding: Tensor) -> Tensor:
        ref = reference_points(layout, valid_ratios)
        for layer in self.layers:
            src = layer(src, pos, ref, layout, padding)
        return src


def reference_points(layout: LevelLayout, valid_ratios: Tensor) -> Tensor:
    """Centre of every token, normalised to the valid area, seen from every level.

    valid_ratios [B,L,2] (w, h) -> [B,S,L,2] (x, y). float32 like the official code.
    """
    points = []
    for lvl, (h, w) in enumerate(layout.hw):
        ys, xs = torch.meshgrid(torch.linspace(0.5, h - 0.5, h, dtype=torch.float32, device=valid_ratios.device),
                                torch.linspace(0.5, w - 0.5, w, dtype=torch.float32, device=valid_ratios.device),
                                indexing="ij")
        ys = ys.reshape(-1)[None] / (valid_ratios[:, None, lvl, 1] * h)
        xs = xs.reshape(-1)[None] / (valid_ratios[:, None, lvl, 0] * w)
        points.append(torch.stack((xs, ys), -1))
    return torch.cat(points, 1)[:, :, None] * valid_ratios[:, None]
