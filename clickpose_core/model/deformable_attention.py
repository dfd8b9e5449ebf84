"""Multi-scale deformable attention (Deformable DETR) in plain PyTorch.

The official code falls back to `grid_sample` once per level on CPU, which reads every sampled
value channel by channel from an NCHW map. Here the bilinear corners of all levels and points are
turned into one weighted gather-and-sum (`F.embedding_bag`) over a channels-last value table: the
same arithmetic, a fraction of the memory traffic, and differentiable in the values, the sampling
locations and the attention weights.
"""
from __future__ import annotations

from typing import Callable

import torch
import torch.nn.functional as F
from torch import Tensor, nn


class LevelLayout:
    """Geometry of the flattened multi-level feature sequence (same for every layer of one image batch).

    Value tables are stored with a zero border around every level's map (1 before, 2 after, in
    both axes): a bilinear corner that falls outside the map then reads a zero from the border
    instead of needing a bounds check, which is most of the arithmetic of the sampler.
    """

    def __init__(self, spatial_shapes: Tensor):
        self.spatial_shapes = spatial_shapes                      # [L,2] (H, W) long
        sizes = spatial_shapes.prod(1)
        self.level_start_index = torch.cat((sizes.new_zeros(1), sizes.cumsum(0)[:-1]))
        self.num_tokens = int(sizes.sum())
        self.hw = [(int(h), int(w)) for h, w in spatial_shapes.tolist()]
        padded = [(h + _BORDER, w + _BORDER) for h, w in self.hw]
        self.padded_starts = [0]
        for h, w in padded[:-1]:
            self.padded_starts.append(self.padded_starts[-1] + h * w)
        self.num_padded_tokens = sum(h * w for h, w in padded)

    def pad(self, values: Tensor) -> Tensor:
        """[N,M,S,D] -> [N,M,S_padded,D] with the zero border around each level."""
        n, m, _, d = values.shape
        levels = values.split([h * w for h, w in self.hw], dim=2)
        return torch.cat([F.pad(v.view(n, m, h, w, d), (0, 0, 1, 2, 1, 2)).flatten(2, 3)
                          for v, (h, w) in zip(levels, self.hw)], 2)

    def unpad(self, values: Tensor) -> Tensor:
        """Inverse of `pad`."""
        n, m, _, d = values.shape
        out = []
        for start, (h, w) in zip(self.padded_starts, self.hw):
            v = values[:, :, start:start + (h + _BORDER) * (w + _BORDER)].view(n, m, h + _BORDER, w + _BORDER, d)
            out.append(v[:, :, 1:h + 1, 1:w + 1].flatten(2, 3))
        return torch.cat(out, 2)


_BORDER = 3                 # padded size = size + 3 (one zero before, two after)
_CHUNK_ELEMENTS = 1 << 17   # samples per chunk: keeps every temporary in cache


def deformable_sample(values: Tensor, layout: LevelLayout, locations: Tensor, weights: Tensor) -> Tensor:
    """Bilinear sampling with zero padding (`grid_sample`, align_corners=False), weighted and summed.

    values    [N, M, S', D]       per-head value table from `LevelLayout.pad` (head-major)
    locations [N, Q, M, L, P, 2]  (x, y) in [0, 1] of each level's map
    weights   [N, Q, M, L, P]     attention weights
    returns   [N, Q, M*D]
    """
    n, m, s, d = values.shape
    q, num_levels, num_points = locations.shape[1], locations.shape[3], locations.shape[4]
    geom = _PaddedGeometry(layout, locations, n, m, s)
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


class _PaddedGeometry:
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


def deformable_sample_reference(values: Tensor, layout: LevelLayout, locations: Tensor,
                                weights: Tensor) -> Tensor:
    """The straightforward per-level `grid_sample` formulation, kept to test `deformable_sample`."""
    values = layout.unpad(values)
    n, m, _, d = values.shape
    q, num_levels, num_points = locations.shape[1], locations.shape[3], locations.shape[4]
    per_level = values.permute(0, 2, 1, 3).split([h * w for h, w in layout.hw], dim=1)
    grids = 2 * locations - 1
    sampled = []
    for lvl, (h, w) in enumerate(layout.hw):
        v = per_level[lvl].flatten(2).transpose(1, 2).reshape(n * m, d, h, w)
        g = grids[:, :, :, lvl].transpose(1, 2).flatten(0, 1)
        sampled.append(F.grid_sample(v, g, mode="bilinear", padding_mode="zeros", align_corners=False))
    wts = weights.transpose(1, 2).reshape(n * m, 1, q, num_levels * num_points)
    out = (torch.stack(sampled, dim=-2).flatten(-2) * wts).sum(-1).view(n, m * d, q)
    return out.transpose(1, 2)


Sampler = Callable[[Tensor, LevelLayout, Tensor, Tensor], Tensor]


class MSDeformAttn(nn.Module):
    """Deformable attention over multi-level features; parameter names match the official module.

    `sampler` is the sampling kernel; the benchmark swaps in `deformable_sample_reference` (the
    official CPU algorithm) to measure against it in one process.
    """

    sampler: Sampler = staticmethod(deformable_sample)

    def __init__(self, d_model: int, n_levels: int, n_heads: int, n_points: int):
        super().__init__()
        self.d_model, self.n_levels, self.n_heads, self.n_points = d_model, n_levels, n_heads, n_points
        self.sampling_offsets = nn.Linear(d_model, n_heads * n_levels * n_points * 2)
        self.attention_weights = nn.Linear(d_model, n_heads * n_levels * n_points)
        self.value_proj = nn.Linear(d_model, d_model)
        self.output_proj = nn.Linear(d_model, d_model)
        self.reset_parameters()

    def reset_parameters(self) -> None:
        """Deformable-DETR init: offsets start on a ring of directions, one radius per point."""
        nn.init.zeros_(self.sampling_offsets.weight)
        thetas = torch.arange(self.n_heads, dtype=torch.float32) * (2.0 * torch.pi / self.n_heads)
        grid = torch.stack([thetas.cos(), thetas.sin()], -1)
        grid = (grid / grid.abs().max(-1, keepdim=True)[0]).view(self.n_heads, 1, 1, 2)
        grid = grid.repeat(1, self.n_levels, self.n_points, 1)
        grid *= torch.arange(1, self.n_points + 1, dtype=torch.float32).view(1, 1, -1, 1)
        with torch.no_grad():
            self.sampling_offsets.bias.copy_(grid.flatten())
        nn.init.zeros_(self.attention_weights.weight)
        nn.init.zeros_(self.attention_weights.bias)
        nn.init.xavier_uniform_(self.value_proj.weight)
        nn.init.zeros_(self.value_proj.bias)
        nn.init.xavier_uniform_(self.output_proj.weight)
        nn.init.zeros_(self.output_proj.bias)

    def project_values(self, inputs: Tensor, padding_mask: Tensor | None, layout: LevelLayout) -> Tensor:
        """inputs [N,S,C] -> the padded per-head value table [N,M,S',C/M], zero on padding. Depends
        only on the inputs, so a caller that attends to the same memory many times computes it once."""
        v = self.value_proj(inputs)
        if padding_mask is not None:
            v = v.masked_fill(padding_mask[..., None], 0.0)
        n, s = v.shape[:2]
        return layout.pad(v.view(n, s, self.n_heads, self.d_model // self.n_heads).transpose(1, 2))

    def forward(self, query: Tensor, reference_points: Tensor, values: Tensor, layout: LevelLayout) -> Tensor:
        """query [N,Q,C]; reference_points [N,Q,L,2] points or [N,Q,L,4] boxes (cx,cy,w,h);
        values from `project_values` -> [N,Q,C]."""
        n, q, _ = query.shape
        offsets = self.sampling_offsets(query).view(n, q, self.n_heads, self.n_levels, self.n_points, 2)
        attn = self.attention_weights(query).view(n, q, self.n_heads, self.n_levels * self.n_points)
        attn = attn.softmax(-1).view(n, q, self.n_heads, self.n_levels, self.n_points)
        if reference_points.shape[-1] == 2:
            shapes = layout.spatial_shapes.to(query.device)
            normalizer = torch.stack([shapes[:, 1], shapes[:, 0]], -1)
            loc = reference_points[:, :, None, :, None, :] + offsets / normalizer[None, None, None, :, None, :]
        else:
            loc = (reference_points[:, :, None, :, None, :2]
                   + offsets / self.n_points * reference_points[:, :, None, :, None, 2:] * 0.5)
        return self.output_proj(self.sampler(values, layout, loc, attn))
