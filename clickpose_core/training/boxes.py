"""Box geometry used by matching and losses (cxcywh <-> xyxy, pairwise IoU and GIoU)."""
from __future__ import annotations

import torch
from torch import Tensor

from ..postprocess import box_cxcywh_to_xyxy, box_xyxy_to_cxcywh

__all__ = ["box_cxcywh_to_xyxy", "box_xyxy_to_cxcywh", "box_area", "pairwise_giou"]


def box_area(boxes: Tensor) -> Tensor:
    """[..., 4] xyxy -> [...]."""
    return (boxes[..., 2] - boxes[..., 0]) * (boxes[..., 3] - boxes[..., 1])


def pairwise_giou(a: Tensor, b: Tensor) -> Tensor:
    """Generalised IoU of every pair: a [..., N, 4], b [..., M, 4] xyxy -> [..., N, M] (leading
    dims broadcast: one image, or a batch of them).

    Degenerate boxes (zero area) are allowed; the small epsilons only keep 0/0 finite.
    """
    a, b = a[..., :, None, :], b[..., None, :, :]
    area_a, area_b = box_area(a), box_area(b)
    lt = torch.maximum(a[..., :2], b[..., :2])
    rb = torch.minimum(a[..., 2:], b[..., 2:])
    inter = (rb - lt).clamp(min=0).prod(-1)
    union = area_a + area_b - inter
    iou = inter / union.clamp(min=1e-7)
    hull = torch.maximum(a[..., 2:], b[..., 2:]) - torch.minimum(a[..., :2], b[..., :2])
    hull_area = hull.clamp(min=0).prod(-1)
    return iou - (hull_area - union) / hull_area.clamp(min=1e-7)
