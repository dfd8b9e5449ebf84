"""Interactive training: simulated annotator rounds through the feedback (pose) layers.

The paper's pose-error model, as the official training loop implements it:

* the session starts from the detector's top `num_select` persons (by score), matched once to the
  ground truth with the Hungarian matcher;
* the number of rounds n is drawn from a power law, P(n) proportional to n^-2 over 1..K: most
  sessions need one or two corrections, a few need many;
* in every round each matched person gets exactly one click: its worst labelled joint (largest L1
  error to the ground truth) is moved to the ground truth, and the person's box is grown to hold all
  its joints (`interaction.apply_clicks`);
* the round runs the feedback layers (`ClickPose.refine`) from the corrected state; the next round
  starts from that round's last-layer boxes and keypoints.

Only the last round is trained (the official loss also sees only the last round's layers). Earlier
rounds produce the state the annotator corrects, so they run without gradients, and the corrected
state is treated as data: the detector is not asked to make its mistakes easier to refine.

Pinning. The official code means to hold clicked joints fixed but never does (its delta_mask is
written into a copy; see ../shared/reference/README.md), so its weights learned to move clicked
joints like any others. Our product (`Predictor.refine`) pins clicked joints, so by default training
pins them too: the feedback layers learn the situation they meet at inference, where corrected
joints are exact and every other joint should move towards them. `pin=False` reproduces the
official behaviour.
"""
from __future__ import annotations

import torch
from torch import Tensor

from ..interaction import apply_clicks
from ..model.clickpose import ClickPose, EncoderMemory
from ..postprocess import select_top
from ..types import Click
from .denoising import power_law_count
from .matcher import HungarianMatcher, keypoint_xy_vis


def worst_joints(pred_xy: Tensor, gt_xy: Tensor, vis: Tensor) -> Tensor:
    """The joint an annotator fixes first: largest L1 error among labelled joints.

    pred_xy, gt_xy [N, K, 2]; vis [N, K] (0/1) -> [N] joint indices. Unlabelled joints are never chosen
    (their ground truth is a placeholder); a person without labelled joints gets -1.
    """
    err = (pred_xy - gt_xy).abs().sum(-1).masked_fill(vis <= 0, -1.0)
    worst = err.argmax(-1)
    return torch.where((vis > 0).any(-1), worst, torch.full_like(worst, -1))


def simulate_feedback(model: ClickPose, mem: EncoderMemory, outputs: dict[str, Tensor],
                      targets: list[dict[str, Tensor]], matcher: HungarianMatcher, generator: torch.Generator,
                      pin: bool = True, rounds: int | None = None) -> list[dict[str, Tensor]]:
    """Run simulated click rounds on a batch; return the last round's per-layer outputs (with grad).

    outputs: the detector's `decode` dict (only pred_* are read, detached); rounds: None draws it from
    the power law. Returns one dict per feedback layer, earliest first, each with pred_logits
    [B, R, C], pred_boxes [B, R, 4], pred_keypoints [B, R, 3K] for the R = cfg.num_select rows.
    """
    cfg = model.config
    k = cfg.num_keypoints
    detached = {name: outputs[name].detach() for name in ("pred_logits", "pred_boxes", "pred_keypoints")}
    top = select_top(detached, cfg.num_select)
    matches = matcher({n: top[n] for n in detached}, targets, use_keypoints=True)
    if rounds is None:
        rounds = int(power_law_count(k, 2.0, generator)[0])

    boxes = top["pred_boxes"]
    xy, _ = keypoint_xy_vis(top["pred_keypoints"], k)
    pinned = torch.zeros(xy.shape[:3], dtype=torch.bool, device=xy.device)
    for r in range(rounds):
        boxes, xy, pinned = _click_round(boxes, xy, pinned, targets, matches, k)
        last = r == rounds - 1
        with torch.set_grad_enabled(last and torch.is_grad_enabled()):
            refined = model.refine(mem, boxes, xy, pinned if pin else None, with_aux=True)
        if not last:
            boxes = refined["pred_boxes"].detach()
            xy = keypoint_xy_vis(refined["pred_keypoints"].detach(), k)[0]
    return [*refined["aux_outputs"], {n: refined[n] for n in detached}]


def _click_round(boxes: Tensor, xy: Tensor, pinned: Tensor, targets: list[dict[str, Tensor]],
                 matches: list[tuple[Tensor, Tensor]], k: int) -> tuple[Tensor, Tensor, Tensor]:
    """One click per matched person on its worst joint; returns new boxes, keypoints and pinned."""
    new_boxes, new_xy, new_pinned = [], [], []
    for b, (rows, cols) in enumerate(matches):
        gt_xy, vis = keypoint_xy_vis(targets[b]["keypoints"][cols], k)
        joints = worst_joints(xy[b, rows], gt_xy, vis)
        clicks = [Click(int(p), int(j), float(gt_xy[i, j, 0]), float(gt_xy[i, j, 1]))
                  for i, (p, j) in enumerate(zip(rows.tolist(), joints.tolist())) if j >= 0]
        nb, nx, npin = apply_clicks(boxes[b], xy[b], clicks, pinned[b])
        new_boxes.append(nb)
        new_xy.append(nx)
        new_pinned.append(npin)
    return torch.stack(new_boxes), torch.stack(new_xy), torch.stack(new_pinned)
