"""The click step of one feedback round (official `human_feedback_loop_inference`, steps 3-4).

A click moves one keypoint of one person row; the row's box is then grown (in xyxy) to hold all K
keypoints of that row. Rows without clicks are left untouched, bit for bit, as in the official loop.
"""
from __future__ import annotations

import math
import numbers
from typing import Sequence

import torch

from .postprocess import box_cxcywh_to_xyxy, box_xyxy_to_cxcywh
from .types import Click


def apply_clicks(boxes: torch.Tensor, keypoints: torch.Tensor, clicks: Sequence[Click],
                 pinned: torch.Tensor | None = None
                 ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Apply normalised clicks to one image's person rows.

    boxes: [R, 4] cxcywh in [0, 1]; keypoints: [R, K, 2] normalised xy; clicks: Click with x, y in
    [0, 1] image units (a later click on the same (person, joint) wins); pinned: [R, K] bool or None.
    Returns new tensors (the inputs are not modified): boxes [R, 4], keypoints [R, K, 2] and
    pinned [R, K] = the given pinned OR the clicked joints.
    """
    _check_shapes(boxes, keypoints, pinned)
    rows, num_kpts = keypoints.shape[:2]
    latest = {}
    for i, click in enumerate(clicks):
        _check_click(i, click, rows, num_kpts)
        latest[(click.person, click.joint)] = click
    boxes, keypoints = boxes.clone(), keypoints.clone()
    pinned = (torch.zeros(rows, num_kpts, dtype=torch.bool, device=keypoints.device)
              if pinned is None else pinned.clone())
    for (p, k), click in latest.items():
        keypoints[p, k, 0] = click.x
        keypoints[p, k, 1] = click.y
        pinned[p, k] = True
    clicked_rows = sorted({p for p, _ in latest})
    if clicked_rows:
        idx = torch.tensor(clicked_rows, device=boxes.device)
        boxes[idx] = grow_boxes_to_keypoints(boxes[idx], keypoints[idx])
    return boxes, keypoints, pinned


def grow_boxes_to_keypoints(boxes: torch.Tensor, keypoints: torch.Tensor) -> torch.Tensor:
    """Smallest change that makes each box hold its keypoints (the official box rule).

    boxes: [..., 4] cxcywh; keypoints: [..., K, 2] -> [..., 4] cxcywh. The xyxy box becomes
    (min(x0, min_k x), min(y0, min_k y), max(x1, max_k x), max(y1, max_k y)).
    """
    xyxy = box_cxcywh_to_xyxy(boxes)
    lo = torch.minimum(xyxy[..., :2], keypoints.min(dim=-2).values)
    hi = torch.maximum(xyxy[..., 2:], keypoints.max(dim=-2).values)
    return box_xyxy_to_cxcywh(torch.cat([lo, hi], dim=-1))


def _check_shapes(boxes: torch.Tensor, keypoints: torch.Tensor, pinned: torch.Tensor | None) -> None:
    if boxes.ndim != 2 or boxes.shape[-1] != 4:
        raise ValueError(f"boxes must be [R, 4] cxcywh, got {list(boxes.shape)}")
    if keypoints.ndim != 3 or keypoints.shape[-1] != 2 or keypoints.shape[0] != boxes.shape[0]:
        raise ValueError(f"keypoints must be [R, K, 2] with R = {boxes.shape[0]}, "
                         f"got {list(keypoints.shape)}")
    if not (boxes.is_floating_point() and keypoints.is_floating_point()):
        raise ValueError(f"boxes and keypoints must be floating point, got {boxes.dtype} "
                         f"and {keypoints.dtype}")
    if pinned is not None and (pinned.dtype != torch.bool or pinned.shape != keypoints.shape[:2]):
        raise ValueError(f"pinned must be a bool tensor of shape {list(keypoints.shape[:2])}, "
                         f"got {pinned.dtype} {list(pinned.shape)}")


def _check_click(i: int, click: Click, rows: int, num_kpts: int) -> None:
    if not isinstance(click, Click):
        raise ValueError(f"click {i}: expected a Click, got {type(click).__name__}")
    if not all(isinstance(v, numbers.Integral) and not isinstance(v, bool)
               for v in (click.person, click.joint)):
        raise ValueError(f"click {i} {click}: person and joint must be integers")
    if not 0 <= click.person < rows:
        raise ValueError(f"click {i} {click}: person {click.person} is out of range 0..{rows - 1}")
    if not 0 <= click.joint < num_kpts:
        raise ValueError(f"click {i} {click}: joint {click.joint} is out of range 0..{num_kpts - 1}")
    if not (math.isfinite(click.x) and math.isfinite(click.y)):
        raise ValueError(f"click {i} {click}: coordinates must be finite numbers")
