"""Hungarian matching of predictions to ground-truth persons (the official cost terms).

Targets, one dict per image, all normalised to the unpadded image: "labels" [N] int64 (the person
class, 1), "boxes" [N, 4] cxcywh, "keypoints" [N, 3K] as [x1, y1, ..., xK, yK, v1 .. vK] with v in
{0, 1} (1 = labelled), "area" [N] (segment area / image area, the OKS scale).
"""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch
from scipy.optimize import linear_sum_assignment
from torch import Tensor

from ..postprocess import split_keypoints
from .boxes import box_cxcywh_to_xyxy, pairwise_giou

Matches = list[tuple[Tensor, Tensor]]   # per image: (prediction indices, target indices), int64


@dataclass(frozen=True)
class MatchCosts:
    """Cost weights; the defaults are the official set_cost_* values."""
    cls: float = 2.0
    box: float = 5.0
    giou: float = 2.0
    keypoints: float = 10.0
    oks: float = 4.0
    focal_alpha: float = 0.25
    focal_gamma: float = 2.0


def keypoint_xy_vis(keypoints: Tensor, num_keypoints: int) -> tuple[Tensor, Tensor]:
    """[..., 3K] -> xy [..., K, 2] and visibility [..., K]."""
    return split_keypoints(keypoints, num_keypoints), keypoints[..., 2 * num_keypoints:]


def oks(pred: Tensor, gt: Tensor, vis: Tensor, area: Tensor, sigmas: Tensor) -> Tensor:
    """Object keypoint similarity, broadcasting over leading dims.

    pred, gt [..., K, 2]; vis [..., K] (0/1); area [...]; sigmas [K] -> [...]. The normaliser is the
    official one: exp(-d^2 / (2 * area * (2 sigma)^2)) averaged over labelled joints.
    """
    d2 = (pred - gt).square().sum(-1)
    e = torch.exp(-d2 / (area[..., None] * (2 * sigmas).square() * 2))
    return (e * vis).sum(-1) / (vis.sum(-1) + 1e-6)


class HungarianMatcher:
    """One-to-one assignment minimising the official matching cost.

    Layers that predict keypoints are matched on class + keypoint L1 + OKS (the official matcher zeroes
    the box terms whenever keypoints are predicted); box-only outputs (the first decoder layers and the
    encoder proposals) on class + box L1 + GIoU.
    """

    def __init__(self, sigmas: tuple[float, ...], costs: MatchCosts = MatchCosts()):
        self.sigmas = torch.tensor(sigmas, dtype=torch.float32)
        self.costs = costs

    def cost_matrix(self, logits: Tensor, boxes: Tensor, keypoints: Tensor | None, target: dict[str, Tensor]
                    ) -> Tensor:
        """One image: logits [Q, C], boxes [Q, 4], keypoints [Q, 3K] or None and target tensors
        [N, ...] -> cost [Q, N]; a batch: the same with a leading [B] on every input -> [B, Q, N]."""
        c = self.costs
        labels = target["labels"]
        prob = logits.sigmoid().gather(-1, labels.unsqueeze(-2).expand(*logits.shape[:-1], labels.shape[-1]))
        pos = c.focal_alpha * (1 - prob) ** c.focal_gamma * -(prob + 1e-8).log()
        neg = (1 - c.focal_alpha) * prob ** c.focal_gamma * -(1 - prob + 1e-8).log()
        cost = c.cls * (pos - neg)
        if keypoints is None:
            l1 = torch.cdist(boxes, target["boxes"], p=1)
            giou = pairwise_giou(box_cxcywh_to_xyxy(boxes), box_cxcywh_to_xyxy(target["boxes"]))
            return cost + c.box * l1 - c.giou * giou
        k = len(self.sigmas)
        pred_xy, _ = keypoint_xy_vis(keypoints, k)
        gt_xy, vis = keypoint_xy_vis(target["keypoints"], k)
        pred_xy, gt_xy, vis = pred_xy.unsqueeze(-3), gt_xy.unsqueeze(-4), vis.unsqueeze(-3)   # [.., Q|1, 1|N, K, ..]
        l1 = ((pred_xy - gt_xy).abs() * vis[..., None]).sum((-1, -2))
        sim = oks(pred_xy, gt_xy, vis, target["area"].unsqueeze(-2), self.sigmas.to(keypoints)).clamp(min=1e-6)
        return cost + c.keypoints * l1 + c.oks * (1 - sim)

    @torch.no_grad()
    def __call__(self, outputs: dict[str, Tensor], targets: list[dict[str, Tensor]], use_keypoints: bool
                 ) -> Matches:
        """outputs: pred_logits [B, Q, C], pred_boxes [B, Q, 4], pred_keypoints [B, Q, 3K].

        The costs of the whole batch are one computation over targets padded to the most persons
        of an image (one transfer to the CPU for scipy), not one per image: on an accelerator each
        operation is a kernel launch, and per-image ones would multiply them by the batch size."""
        sizes = [len(t["labels"]) for t in targets]
        empty = torch.zeros(0, dtype=torch.int64)
        if max(sizes, default=0) == 0:
            return [(empty, empty) for _ in targets]
        padded = pad_targets(targets)
        kpts = outputs["pred_keypoints"].float() if use_keypoints else None
        cost = self.cost_matrix(outputs["pred_logits"].float(), outputs["pred_boxes"].float(), kpts, padded)
        cost = np.nan_to_num(cost.cpu().numpy(), nan=1e6)
        matches = []
        for b, n in enumerate(sizes):
            if n == 0:
                matches.append((empty, empty))
                continue
            rows, cols = linear_sum_assignment(cost[b, :, :n])
            matches.append((torch.as_tensor(rows, dtype=torch.int64), torch.as_tensor(cols, dtype=torch.int64)))
        return matches


# Padding of the targets' person dimension: a valid box and area, unlabelled joints, so the padded
# columns of a cost matrix stay finite (they are cut off before the assignment).
_PAD = {"labels": 0, "boxes": 0.25, "keypoints": 0.0, "area": 1.0}


def pad_targets(targets: list[dict[str, Tensor]]) -> dict[str, Tensor]:
    """The targets' labels [B, N], boxes [B, N, 4], keypoints [B, N, 3K] and area [B, N] (float32),
    padded to N = the most persons of an image. A few operations per field whatever the batch:
    the persons of all images are concatenated and scattered into place at once."""
    sizes = [len(t["labels"]) for t in targets]
    rows = (torch.from_numpy(np.repeat(np.arange(len(sizes)), sizes)),
            torch.from_numpy(np.concatenate([np.arange(n) for n in sizes])))
    out = {}
    for key, value in _PAD.items():
        flat = torch.cat([t[key] for t in targets])
        flat = flat if key == "labels" else flat.float()
        padded = flat.new_full((len(sizes), max(sizes), *flat.shape[1:]), value)
        padded[tuple(r.to(flat.device) for r in rows)] = flat
        out[key] = padded
    return out
