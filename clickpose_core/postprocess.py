"""Model outputs -> persons in original-image pixels (official conventions).

Two selections exist in the official code and they differ:

* `select_top` — the interactive one (`human_feedback_loop_inference`): the top-k *groups* by
  `pred_logits.max(-1)`. Every interactive session starts from these rows.
* `coco_postprocess` — `PostProcess` used for COCO AP: top-k over the flattened (group, class) scores,
  so a group can appear twice with different labels. Kept for evaluation parity only.
"""
from __future__ import annotations

import torch

Outputs = dict[str, torch.Tensor]


def split_keypoints(pred_keypoints: torch.Tensor, num_keypoints: int) -> torch.Tensor:
    """[..., 3K] official layout [x1, y1, ..., xK, yK, v1..vK] -> xy [..., K, 2]."""
    if pred_keypoints.shape[-1] != 3 * num_keypoints:
        raise ValueError(f"pred_keypoints last dim is {pred_keypoints.shape[-1]}, expected "
                         f"3 * num_keypoints = {3 * num_keypoints}")
    return pred_keypoints[..., : 2 * num_keypoints].unflatten(-1, (num_keypoints, 2))


def person_scores(pred_logits: torch.Tensor) -> torch.Tensor:
    """[..., 2] raw logits -> [...] score = max over classes of sigmoid (the class is irrelevant)."""
    return pred_logits.sigmoid().max(-1).values


def select_top(outputs: Outputs, k: int) -> dict[str, torch.Tensor]:
    """Gather the k best groups, best first: the round-0 state of an interactive session.

    outputs: pred_logits [B, G, 2], pred_boxes [B, G, 4], pred_keypoints [B, G, 3K]
    -> same keys gathered to [B, k, ...] plus "index" [B, k] (group ids).
    """
    logits = outputs["pred_logits"]
    if not 0 < k <= logits.shape[1]:
        raise ValueError(f"cannot select {k} persons from {logits.shape[1]} groups")
    index = torch.topk(logits.max(-1).values, k, dim=1).indices
    gathered = {name: outputs[name].gather(1, index[..., None].expand(-1, -1, outputs[name].shape[-1]))
                for name in ("pred_logits", "pred_boxes", "pred_keypoints")}
    gathered["index"] = index
    return gathered


def box_cxcywh_to_xyxy(boxes: torch.Tensor) -> torch.Tensor:
    """[..., 4] (cx, cy, w, h) -> (x0, y0, x1, y1), same arithmetic as the official box_ops."""
    cx, cy, w, h = boxes.unbind(-1)
    return torch.stack([cx - 0.5 * w, cy - 0.5 * h, cx + 0.5 * w, cy + 0.5 * h], dim=-1)


def box_xyxy_to_cxcywh(boxes: torch.Tensor) -> torch.Tensor:
    """[..., 4] (x0, y0, x1, y1) -> (cx, cy, w, h), same arithmetic as the official box_ops."""
    x0, y0, x1, y1 = boxes.unbind(-1)
    return torch.stack([(x0 + x1) / 2, (y0 + y1) / 2, x1 - x0, y1 - y0], dim=-1)


def to_pixels(boxes: torch.Tensor, keypoints: torch.Tensor,
              size: tuple[int, int]) -> tuple[torch.Tensor, torch.Tensor]:
    """Normalised boxes [..., 4] cxcywh and keypoints [..., K, 2] -> pixels of an (H, W) image.

    Returns boxes [..., 4] xyxy * (W, H, W, H) and keypoints [..., K, 2] * (W, H). Normalised
    coordinates refer to the unpadded image, so the original size is the right scale.
    """
    h, w = size
    scale = boxes.new_tensor([w, h, w, h])
    return box_cxcywh_to_xyxy(boxes) * scale, keypoints * scale[:2]


def coco_postprocess(outputs: Outputs, sizes: torch.Tensor, num_select: int,
                     num_keypoints: int) -> list[dict[str, torch.Tensor]]:
    """The official `PostProcess` for COCO evaluation.

    sizes: [B, 2] original (H, W). Returns per image: scores [n], labels [n], boxes [n, 4] xyxy
    pixels, keypoints [n, 3K] interleaved (x, y, v) pixels, with n = num_select.
    """
    logits, boxes = outputs["pred_logits"], outputs["pred_boxes"]
    prob = logits.sigmoid()
    scores, flat = torch.topk(prob.flatten(1), num_select, dim=1)
    group, labels = flat // logits.shape[2], flat % logits.shape[2]
    h, w = sizes.to(boxes.dtype).unbind(1)
    scale = torch.stack([w, h, w, h], dim=1)[:, None, :]
    xyxy = box_cxcywh_to_xyxy(boxes).gather(1, group[..., None].expand(-1, -1, 4)) * scale
    kpts = outputs["pred_keypoints"].gather(1, group[..., None].expand(-1, -1, 3 * num_keypoints))
    xy = split_keypoints(kpts, num_keypoints) * scale[..., None, :2]
    vis = kpts[..., 2 * num_keypoints:, None]
    interleaved = torch.cat([xy, vis], dim=-1).flatten(-2)
    return [{"scores": s, "labels": lab, "boxes": b, "keypoints": k}
            for s, lab, b, k in zip(scores, labels, xyxy, interleaved)]
