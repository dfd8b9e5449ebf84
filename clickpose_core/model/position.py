"""Sine position encoding of feature maps (DETR style, separate temperatures per axis)."""
from __future__ import annotations

import math

import torch
from torch import Tensor, nn


class SinePositionEncoding(nn.Module):
    """Normalised sine encoding of the valid (unpadded) area of each feature map.

    Computed in float32, as the official model does even when it runs in float64; the result is cast
    to the feature dtype by the caller.
    """

    def __init__(self, num_feats: int, temperature: float):
        super().__init__()
        self.num_feats = num_feats
        self.temperature = temperature

    def forward(self, mask: Tensor) -> Tensor:
        """mask [B,H,W] bool (True = padding) -> [B, 2*num_feats, H, W] float32, (y, x) halves."""
        not_mask = ~mask
        y = not_mask.cumsum(1, dtype=torch.float32)
        x = not_mask.cumsum(2, dtype=torch.float32)
        y = y / (y[:, -1:, :] + 1e-6) * (2 * math.pi)
        x = x / (x[:, :, -1:] + 1e-6) * (2 * math.pi)
        dim_t = torch.arange(self.num_feats, dtype=torch.float32, device=mask.device)
        dim_t = self.temperature ** (2 * (dim_t // 2) / self.num_feats)
        px, py = x[..., None] / dim_t, y[..., None] / dim_t
        px = torch.stack((px[..., 0::2].sin(), px[..., 1::2].cos()), dim=4).flatten(3)
        py = torch.stack((py[..., 0::2].sin(), py[..., 1::2].cos()), dim=4).flatten(3)
        return torch.cat((py, px), dim=3).permute(0, 3, 1, 2)
