"""The deformable sampler as it was before the kernel work (main at c03b181), kept so that
`clickpose bench` times today's path against the new one in one process. Same arithmetic as
`model.deformable_attention.deformable_sample`, about three times the elementwise operations."""
from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor

from ..model.deformable_attention import _BORDER, LevelLayout

_CHUNK_ELEMENTS = 1 << 17   # samples per chunk, as it was


def previous_deformable_sample(values: Tensor, layout: LevelLayout, locations: Tensor, weights: Tensor) -> Tensor:
    """Bilinear sampling with zero padding (`grid_sample`, align_corners=False), weighted and summed.

    values    [N, M, S', D]       per-head value table from `LevelLayout.pad` (head-major)
    locations [N, Q, M, L, P, 2]  (x, y) in [0, 1] of each level's map
    weights   [N, Q, M, L, P]     attention weights
    returns   [N, Q, M*D]
    """
    n, m, s, d = values.shape
    q, num_levels, num_points = locations.shape[1], locations.shape[3], locations.shape[4]
    geom = _PreviousGeometry(layout, locations, n, m, s)
    table = values.reshape(n * m * s, d)
    chunk = max(1, _CHUNK_ELEMENTS // (n * m * num_levels * num_points))
    outs = []
    for a in range(0, q, chunk):
        idx, wts = geom.corners(locations[:, a:a + chunk], weights[:, a:a + chunk])
        rows = idx.shape[0] * idx.shape[1] * idx.shape[2]
        out = F.embedding_bag(idx.reshape(rows, -1), table,
                              per_sample_weights=wts.reshape(rows, -1).to(values.dtype), mode="sum")
        outs.append(out.view(n, -1, m * d))
    return torch.cat(outs, 1) if len(outs) > 1 else outs[0]


class _PreviousGeometry:
    """Per-level sizes of the padded table, broadcast against [N, Q, M, L, P] sampling tensors."""

    def __init__(self, layout: LevelLayout, like: Tensor, n: int, m: int, s: int):
        view = (1, 1, 1, -1, 1)
        shapes = layout.spatial_shapes.to(device=like.device, dtype=like.dtype)
        self.h, self.w = shapes[:, 0].view(view), shapes[:, 1].view(view)
        self.row = (self.w + _BORDER).long()           # padded row length
        start = torch.tensor(layout.padded_starts, device=like.device).view(view)
        # First table row of each (batch, head, level), shifted to the padded origin (1, 1).
        self.base = ((torch.arange(n, device=like.device).view(n, 1, 1, 1, 1) * m
                      + torch.arange(m, device=like.device).view(1, 1, m, 1, 1)) * s + start)

    def corners(self, loc: Tensor, attn: Tensor) -> tuple[Tensor, Tensor]:
        """Table rows [..., 4] and weights [..., 4] of the four bilinear corners of each sample."""
        # grid_sample's un-normalisation, shifted by the border; clamping to [0, size + 1] only
        # moves samples that lie entirely outside the map, which then read two border zeros.
        x = (((2 * loc[..., 0] - 1 + 1) * self.w - 1) / 2 + 1).clamp(0, None).minimum(self.w + 1)
        y = (((2 * loc[..., 1] - 1 + 1) * self.h - 1) / 2 + 1).clamp(0, None).minimum(self.h + 1)
        x0, y0 = x.floor(), y.floor()
        fx, fy = x - x0, y - y0
        top = (1 - fy) * attn
        bottom = fy * attn
        i00 = y0.long() * self.row + x0.long() + self.base
        idx = torch.stack((i00, i00 + 1, i00 + self.row, i00 + self.row + 1), -1)
        wts = torch.stack((top * (1 - fx), top * fx, bottom * (1 - fx), bottom * fx), -1)
        return idx, wts
