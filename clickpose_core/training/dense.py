"""A dense auxiliary objective for training from scratch: joint and person-centre heatmaps.

Set-matching losses teach the trunk and encoder slowly: each image gives a few matched queries,
and early in training the matching itself is close to random. A heatmap of every labelled joint
and every person centre on the finest encoder level gives every feature cell a target from the
first step on (CenterNet's objective), which is the part of learning where the DETR losses are
weakest. The head is used in training only: it is not part of `ClickPose`, its parameters are
saved in the training state (`last.pth`) and never in exported weights, so the network the product
runs is unchanged.
"""
from __future__ import annotations

import math

import torch
from torch import Tensor, nn

from ..model.clickpose import EncoderMemory
from .matcher import keypoint_xy_vis


class DenseKeypointHead(nn.Module):
    """Finest encoder level [B, H*W, C] -> logits [B, K + 1, H, W] (K joints, then the person centre)."""

    def __init__(self, hidden_dim: int, num_keypoints: int, prior: float = 0.1):
        super().__init__()
        self.num_keypoints = num_keypoints
        self.net = nn.Sequential(nn.Conv2d(hidden_dim, hidden_dim, 3, padding=1), nn.ReLU(inplace=True),
                                 nn.Conv2d(hidden_dim, num_keypoints + 1, 1))
        nn.init.constant_(self.net[-1].bias, -math.log((1 - prior) / prior))

    def forward(self, mem: EncoderMemory) -> Tensor:
        if mem.memory is None:
            raise ValueError("the dense head needs the encoder memory (not a for_refinement() copy)")
        h, w = mem.layout.hw[0]
        level = mem.memory[:, :h * w]                                    # level 0 comes first
        return self.net(level.transpose(1, 2).reshape(level.shape[0], -1, h, w))


def heatmap_targets(targets: list[dict[str, Tensor]], valid_ratios: Tensor, shape: tuple[int, int],
                    num_keypoints: int, sigma: float = 1.0) -> tuple[Tensor, Tensor]:
    """Gaussian peaks on the feature grid of level 0, as CenterNet draws them.

    valid_ratios [B, L, 2] (w, h) from the encoder memory; shape (H, W) of level 0. Each labelled joint
    and each box centre puts exp(-d^2 / 2 sigma^2) around the cell that holds it (exactly 1 on that
    cell); several persons combine by maximum. Returns heat [B, K + 1, H, W] and the peak mask (same
    shape, bool), which marks the positives.
    """
    h, w = shape
    device = valid_ratios.device
    ys = torch.arange(h, device=device, dtype=torch.float32).view(1, h, 1)
    xs = torch.arange(w, device=device, dtype=torch.float32).view(1, 1, w)
    heat = torch.zeros(len(targets), num_keypoints + 1, h, w, device=device)
    for b, t in enumerate(targets):
        if len(t["boxes"]) == 0:
            continue
        xy, vis = keypoint_xy_vis(t["keypoints"], num_keypoints)            # [N, K, 2], [N, K]
        points = torch.cat([xy, t["boxes"][:, None, :2]], 1)                 # [N, K+1, 2] normalised
        labelled = torch.cat([vis > 0, torch.ones_like(vis[:, :1], dtype=torch.bool)], 1)
        scale = valid_ratios[b, 0] * torch.tensor([w, h], device=device, dtype=torch.float32)
        last = (scale.ceil() - 1).clamp(min=0)                             # last cell of image, not padding
        cells = torch.minimum((points * scale).floor().clamp(min=0), last)
        d2 = (xs - cells[..., 0, None, None]) ** 2 + (ys - cells[..., 1, None, None]) ** 2   # [N, K+1, H, W]
        g = torch.exp(-d2 / (2 * sigma ** 2)) * labelled[..., None, None]
        heat[b] = g.amax(0)
    return heat, heat >= 1.0


def dense_focal_loss(logits: Tensor, heat: Tensor, peaks: Tensor, padding: Tensor,
                     alpha: float = 2.0, beta: float = 4.0) -> Tensor:
    """CenterNet's penalty-reduced focal loss, summed over cells and divided by the number of peaks.

    logits, heat, peaks [B, C, H, W]; padding [B, H, W] bool (True: no image there, ignored).
    """
    p = logits.sigmoid().clamp(1e-4, 1 - 1e-4)
    valid = (~padding)[:, None].float()
    pos = torch.log(p) * (1 - p) ** alpha * peaks
    neg = torch.log(1 - p) * p ** alpha * (1 - heat) ** beta * ~peaks
    return -((pos + neg) * valid).sum() / peaks.sum().clamp(min=1)


def dense_loss(head: DenseKeypointHead, mem: EncoderMemory, targets: list[dict[str, Tensor]]) -> Tensor:
    """The auxiliary loss of one batch (a scalar)."""
    logits = head(mem)
    h, w = logits.shape[-2:]
    heat, peaks = heatmap_targets(targets, mem.valid_ratios, (h, w), head.num_keypoints)
    return dense_focal_loss(logits.float(), heat, peaks, mem.padding[:, :h * w].view(-1, h, w))
