"""Multi-scale deformable attention (Deformable DETR) in plain PyTorch.

The official code falls back to `grid_sample` once per level on CPU, which reads every sampled
value channel by channel from an NCHW map. Here the bilinear corners of all levels and points are
turned into one weighted gather-and-sum (`F.embedding_bag`) over a channels-last value table: the
same arithmetic, a fraction of the memory traffic, and differentiable in the values, the sampling
locations and the attention weights.
"""
from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor, nn


class LevelLayout:
    """Geometry of the flattened multi-level feature sequence (same for every layer of one image batch)."""

    def __init__(self, spatial_shapes: Tensor):
        self.spatial_shapes = spatial_shapes                      # [L,2] (H, W) long
        sizes = spatial_shapes.prod(1)
        self.level_start_index = torch.cat((sizes.new_zeros(1), sizes.cumsum(0)[:-1]))
        self.num_tokens = int(sizes.sum())
        self.hw = [(int(h), int(w)) for h, w in spatial_shapes.tolist()]


def deformable_sample(values: Tensor, layout: LevelLayout, locations: Tensor, weights: Tensor) -> Tensor:
    """Bilinear sampling with zero padding (`grid_sample`, align_corners=False), weighted and summed.

    values    [N, M, S, D]        per-head value vectors of the S flattened tokens (head-major)
    locations [N, Q, M, L, P, 2]  (x, y) in [0, 1] of each level's map
    weights   [N, Q, M, L, P]     attention weights
    returns   [N, Q, M*D]
    """
    n, m, s, d = values.shape
    q, num_levels, num_points = locations.shape[1], locations.shape[3], locations.shape[4]
    shapes = layout.spatial_shapes.to(locations.device)
    geom = _LevelGeometry(shapes, layout.level_start_index.to(locations.device), locations.dtype, n, m, s)
    table = values.reshape(n * m * s, d)
    # Chunks of queries keep every temporary in cache; whole-tensor ops on these sizes are
    # dominated by page faults of freshly allocated buffers.
    chunk = max(1, _CHUNK_ELEMENTS // (m * num_levels * num_points))
    outs = []
    for a in range(0, q, chunk):
        idx, wts = geom.corners(locations[:, a:a + chunk], weights[:, a:a + chunk])
        rows = idx.shape[0] * idx.shape[1] * idx.shape[2]
        out = F.embedding_bag(idx.reshape(rows, -1), table,
                              per_sample_weights=wts.reshape(rows, -1).to(values.dtype), mode="sum")
        outs.append(out.view(n, -1, m * d))
    return torch.cat(outs, 1) if len(outs) > 1 else outs[0]


_CHUNK_ELEMENTS = 1 << 18


class _LevelGeometry:
    """Per-level sizes broadcast against [N, Q, M, L, P] sampling tensors."""

    def __init__(self, shapes: Tensor, level_start: Tensor, dtype: torch.dtype, n: int, m: int, s: int):
        view = (1, 1, 1, -1, 1)
        self.h, self.w = shapes[:, 0].to(dtype).view(view), shapes[:, 1].to(dtype).view(view)
        self.w_int = shapes[:, 1].view(view)
        device = shapes.device
        # First value-table row of each (batch, head, level).
        self.base = ((torch.arange(n, device=device).view(n, 1, 1, 1, 1) * m
                      + torch.arange(m, device=device).view(1, 1, m, 1, 1)) * s + level_start.view(view))

    def corners(self, loc: Tensor, attn: Tensor) -> tuple[Tensor, Tensor]:
        """Table rows [..., 4] and weights [..., 4] of the four bilinear corners of each sample."""
        h, w = self.h, self.w
        # Same arithmetic as grid_sample's un-normalisation, so float32 results agree closely.
        x = ((2 * loc[..., 0] - 1 + 1) * w - 1) / 2
        y = ((2 * loc[..., 1] - 1 + 1) * h - 1) / 2
        x0, y0 = x.floor(), y.floor()
        x1, y1 = x0 + 1, y0 + 1
        # Corners outside the map get weight 0 (zero padding); their clamped index is never read.
        wx0 = (x1 - x) * ((x0 >= 0) & (x0 < w))
        wx1 = (x - x0) * ((x1 >= 0) & (x1 < w))
        wy0 = (y1 - y) * ((y0 >= 0) & (y0 < h)) * attn
        wy1 = (y - y0) * ((y1 >= 0) & (y1 < h)) * attn
        xa, xb = _clamp_index(x0, w), _clamp_index(x1, w)
        ya = _clamp_index(y0, h) * self.w_int + self.base
        yb = _clamp_index(y1, h) * self.w_int + self.base
        idx = torch.stack((ya + xa, ya + xb, yb + xa, yb + xb), -1)
        wts = torch.stack((wy0 * wx0, wy0 * wx1, wy1 * wx0, wy1 * wx1), -1)
        return idx, wts


def _clamp_index(v: Tensor, size: Tensor) -> Tensor:
    return torch.minimum(v.clamp(min=0), size - 1).long()


def deformable_sample_reference(values: Tensor, layout: LevelLayout, locations: Tensor,
                                weights: Tensor) -> Tensor:
    """The straightforward per-level `grid_sample` formulation, kept to test `deformable_sample`."""
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


class MSDeformAttn(nn.Module):
    """Deformable attention over multi-level features; parameter names match the official module."""

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

    def project_values(self, inputs: Tensor, padding_mask: Tensor | None) -> Tensor:
        """inputs [N,S,C] -> per-head values [N,M,S,C/M] (head-major), zero on padding. Depends only on
        the inputs, so a caller that attends to the same memory many times can compute it once."""
        v = self.value_proj(inputs)
        if padding_mask is not None:
            v = v.masked_fill(padding_mask[..., None], 0.0)
        n, s = v.shape[:2]
        return v.view(n, s, self.n_heads, self.d_model // self.n_heads).transpose(1, 2).contiguous()

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
        return self.output_proj(deformable_sample(values, layout, loc, attn))
