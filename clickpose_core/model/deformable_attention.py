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
        self._geometry: dict[tuple, _PaddedGeometry] = {}    # per sampling shape: the same for every layer

    def geometry(self, like: Tensor, m: int, s: int) -> "_PaddedGeometry":
        """The sampler's constants for locations shaped like `like` [N,Q,M,L,P,2], computed once."""
        key = (like.shape[0], *like.shape[2:], like.dtype, like.device, s)
        if key not in self._geometry:
            self._geometry[key] = _PaddedGeometry(self, like, m, s)
        return self._geometry[key]

    def pad(self, values: Tensor) -> Tensor:
        """[N,M,S,D] -> [N,M,S_padded,D] with the zero border around each level (one copy)."""
        n, m, _, d = values.shape
        table = values.new_zeros(n, m, self.num_padded_tokens, d)
        levels = values.split([h * w for h, w in self.hw], dim=2)
        for v, start, (h, w) in zip(levels, self.padded_starts, self.hw):
            padded = table[:, :, start:start + (h + _BORDER) * (w + _BORDER)].view(n, m, h + _BORDER, w + _BORDER, d)
            padded[:, :, 1:h + 1, 1:w + 1] = v.view(n, m, h, w, d)
        return table

    def unpad(self, values: Tensor) -> Tensor:
        """Inverse of `pad`."""
        n, m, _, d = values.shape
        out = []
        for start, (h, w) in zip(self.padded_starts, self.hw):
            v = values[:, :, start:start + (h + _BORDER) * (w + _BORDER)].view(n, m, h + _BORDER, w + _BORDER, d)
            out.append(v[:, :, 1:h + 1, 1:w + 1].flatten(2, 3))
        return torch.cat(out, 2)


_BORDER = 3                 # padded size = size + 3 (one zero before, two after)
# Samples per chunk and thread on a CPU: each thread's share of the temporaries stays in its
# cache, and the elementwise passes over a chunk are long enough to split across threads
# (800x1216: an encoder layer's sampling 24 ms at 2 threads against 31 ms with a fixed
# 2**16-sample chunk).
_CHUNK_ELEMENTS = 1 << 17
# Samples per chunk elsewhere: only a bound on the temporaries (about 1 GB of rows and weights),
# so that a large batch on a small accelerator does not run out of memory.
_ACCELERATOR_CHUNK_SAMPLES = 1 << 25


def queries_per_chunk(device: torch.device, batch: int, samples: int, queries: int) -> int:
    """How many queries `deformable_sample` turns into table rows at a time. On a CPU, chunks
    sized to the caches. Elsewhere, all at once up to a memory bound: an accelerator has no such
    caches to fit, and chunks sized for them (fewer queries the larger the batch) would only
    multiply the kernel launches, by the batch size."""
    budget = _CHUNK_ELEMENTS * torch.get_num_threads() if device.type == "cpu" else _ACCELERATOR_CHUNK_SAMPLES
    return max(1, min(queries, budget // (batch * samples)))


def deformable_sample(values: Tensor, layout: LevelLayout, locations: Tensor, weights: Tensor) -> Tensor:
    """Bilinear sampling with zero padding (`grid_sample`, align_corners=False), weighted and summed.

    values    [N, M, S', D]       per-head value table from `LevelLayout.pad` (head-major)
    locations [N, Q, M, L, P, 2]  (x, y) in [0, 1] of each level's map
    weights   [N, Q, M, L, P]     attention weights
    returns   [N, Q, M*D]
    """
    n, m, s, d = values.shape
    q = locations.shape[1]
    if locations.dtype.itemsize < 4:    # bf16/fp16 cannot hold the cell indices of a real feature map
        locations, weights = locations.float(), weights.float()
    geom = layout.geometry(locations, m, s)
    table = values.reshape(n * m * s, d)
    chunk = queries_per_chunk(values.device, n, geom.samples, q)
    parts = []
    for a in range(0, q, chunk):
        idx, wts = geom.corners(locations[:, a:a + chunk], weights[:, a:a + chunk], values.dtype)
        bags = idx.shape[0] * idx.shape[1] * m
        part = F.embedding_bag(idx.view(bags, -1), table, per_sample_weights=wts.view(bags, -1), mode="sum")
        parts.append(part.view(n, -1, m * d))
    return torch.cat(parts, 1) if len(parts) > 1 else parts[0]


class _PaddedGeometry:
    """Per-sample constants of the padded table for [N, Q, M, L, P] sampling tensors.

    Every constant is a row over the K = M*L*P samples of one query (2K for (x, y) pairs), so each
    operation of `corners` is a broadcast over queries with a long contiguous inner dimension. A
    bag of `embedding_bag` holds one (query, head): its 4*L*P entries are stored corner-major,
    which keeps the level-dependent corner offsets on a contiguous run of L*P samples.
    """

    def __init__(self, layout: LevelLayout, like: Tensor, m: int, s: int):
        n, _, _, num_levels, num_points, _ = like.shape
        dev, lp = like.device, num_levels * num_points
        self.samples = m * lp
        wh = layout.spatial_shapes.flip(1).to(device=dev, dtype=like.dtype)              # [L,2] (w, h)
        per_sample = wh[:, None].expand(num_levels, num_points, 2).reshape(1, lp, 2).expand(m, lp, 2)
        self.size = per_sample.reshape(-1)                                              # [2K]
        self.limit = self.size + 1                          # last border column / row
        self.zero, self.half = torch.zeros_like(self.size), torch.full_like(self.size, 0.5)
        self.row = self.size[0::2] + _BORDER                # padded row length, [K]
        row = self.row.view(m, 1, lp).long()
        corner = torch.cat([torch.zeros_like(row), torch.ones_like(row), row, row + 1], 1)    # [M,4,LP]
        start = torch.tensor(layout.padded_starts, device=dev).repeat_interleave(num_points)  # [LP]
        head = torch.arange(n, device=dev).view(n, 1, 1, 1, 1) * m + torch.arange(m, device=dev).view(1, 1, m, 1, 1)
        # int32 rows: half the bytes of int64 for the largest temporary of the sampler.
        self.corner_rows = (head * s + start + corner).int()  # [N,1,M,4,LP]: table row of each corner at (0, 0)

    def corners(self, loc: Tensor, attn: Tensor, dtype: torch.dtype) -> tuple[Tensor, Tensor]:
        """Table rows (int32) and weights (in `dtype`) [N, q, M, 4, L*P] of the four bilinear
        corners of each sample.

        loc [N,q,M,L,P,2], attn [N,q,M,L,P]. The level-local row index is formed in the sampling
        dtype: exact while a level holds fewer than 2**24 cells. The weights are computed in that
        dtype too and rounded to `dtype` (the value table's) at the end. Differentiable in loc
        and attn (training runs this sampler too).
        """
        n, c, m = loc.shape[:3]
        # grid_sample's un-normalisation (loc * size - 0.5) shifted by the one-cell border; clamping
        # to [0, size + 1] only moves samples that lie entirely outside the map onto border zeros.
        xy = torch.addcmul(self.half, loc.reshape(n * c, -1), self.size).clamp(min=self.zero, max=self.limit)
        xy0 = xy.floor()
        frac = (xy - xy0).view(n, c, m, -1, 2)
        local = torch.addcmul(xy0[:, 0::2], xy0[:, 1::2], self.row).int().view(n, c, m, 1, -1)
        # A copy, then an add that broadcasts over queries only (a contiguous run of M*4*L*P):
        # 0.65x the time of broadcasting `local` over the corners in the add itself.
        idx = local.expand(n, c, m, 4, local.shape[-1]).clone().add_(self.corner_rows)
        fx, fy = frac[..., 0], frac[..., 1]
        bottom = attn.reshape(fy.shape) * fy
        top = attn.reshape(fy.shape) - bottom
        top_right, bottom_right = top * fx, bottom * fx
        wts = torch.stack((top - top_right, top_right, bottom - bottom_right, bottom_right), 3)
        return idx, wts.to(dtype)


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


def per_point(pairs: Tensor, num_points: int) -> Tensor:
    """[N,Q,L,2] (x, y) per level -> [N,Q,L,P,2], each level's pair repeated for its P points.

    A pair moves as one complex number: a copy of 8-byte elements, ~10x faster than broadcasting
    the innermost pairs of 4-byte floats (a [20197, 4, 2] reference grid: 0.1 ms against 1.1 ms).
    """
    as_complex = (pairs.dtype in (torch.float32, torch.float64) and pairs.stride(-1) == 1
                  and all(st % 2 == 0 for st in (pairs.storage_offset(), *pairs.stride()[:-1])))
    if not as_complex:
        return pairs[..., None, :].expand(*pairs.shape[:-1], num_points, 2)
    c = torch.view_as_complex(pairs)[..., None]
    return torch.view_as_real(c.expand(*c.shape[:-1], num_points).contiguous())


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
        if padding_mask is not None and padding_mask.any():      # an unpadded image skips a pass
            v = v.masked_fill_(padding_mask[..., None], 0.0)
        n, s = v.shape[:2]
        return layout.pad(v.view(n, s, self.n_heads, self.d_model // self.n_heads).transpose(1, 2))

    def forward(self, query: Tensor, reference_points: Tensor, values: Tensor, layout: LevelLayout) -> Tensor:
        """query [N,Q,C]; reference_points [N,Q,L,2] points or [N,Q,L,4] boxes (cx,cy,w,h);
        values from `project_values` -> [N,Q,C]."""
        n, q, _ = query.shape
        m, lp2 = self.n_heads, self.n_levels * self.n_points * 2
        offsets = self.sampling_offsets(query).view(n, q, m, lp2)
        # Softmax in at least float32 (a bf16 softmax is slower and rounds the weights).
        attn = self.attention_weights(query).view(n, q, m, -1)
        attn = attn.softmax(-1, dtype=torch.promote_types(attn.dtype, torch.float32))
        # Every per-level term as one row over the L*P*2 coordinates of a head: each operation
        # broadcasts a contiguous row instead of (x, y) pairs.
        rows = lambda t: per_point(t, self.n_points).reshape(t.shape[0], t.shape[1], 1, lp2)
        if reference_points.shape[-1] == 2:   # offsets in cells of each level's map
            cells = layout.spatial_shapes.flip(1).to(query.device, reference_points.dtype)[None, None]
            loc = torch.addcdiv(rows(reference_points), offsets, rows(cells))
        else:                                 # offsets relative to the box size
            scale = reference_points[..., 2:] * (0.5 / self.n_points)
            loc = torch.addcmul(rows(reference_points[..., :2]), offsets, rows(scale))
        shape = (n, q, m, self.n_levels, self.n_points)
        return self.output_proj(self.sampler(values, layout, loc.view(*shape, 2), attn.view(shape)))
