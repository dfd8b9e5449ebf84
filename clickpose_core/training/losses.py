"""The official Click-Pose training losses.

Every decoder layer, every feedback (refinement) layer and the encoder proposals are matched to the
ground truth on their own and scored with: sigmoid focal classification, box L1 + GIoU, and for layers
that predict keypoints, visibility-weighted keypoint L1 + OKS. Denoising queries need no matching:
each one reconstructs a known person. Sums are divided by the number of persons in the batch, as
in the official criterion; denoising sums by the queries per image x batch / 2, which is the
official normaliser at its per-GPU batch of 2 (see `denoising_losses`).
"""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor

from .boxes import box_cxcywh_to_xyxy, pairwise_giou
from .denoising import DenoisingTargets
from .matcher import HungarianMatcher, Matches, keypoint_xy_vis, oks


@dataclass(frozen=True)
class LossWeights:
    """Coefficients of the weighted sum; defaults are the official ones (dn_* = base * dn coef)."""
    ce: float = 2.0
    bbox: float = 5.0
    giou: float = 2.0
    keypoints: float = 10.0
    oks: float = 4.0
    dn_ce: float = 0.3
    dn_bbox: float = 2.5
    dn_giou: float = 1.0
    dn_keypoints: float = 5.0
    interm: float = 1.0          # multiplies the encoder-proposal terms
    heatmap: float = 0.0         # the dense auxiliary objective (training/dense.py); off in the official recipe
    focal_alpha: float = 0.25
    focal_gamma: float = 2.0

    def of(self, name: str) -> float:
        """Weight of a logged loss name such as "loss_giou/d3" or "dn_loss_ce/d0"."""
        base, _, where = name.partition("/")
        key = base.removeprefix("loss_").replace("dn_loss_", "dn_")
        return getattr(self, key) * (self.interm if where == "enc" else 1.0)


def sigmoid_focal_loss(logits: Tensor, targets: Tensor, alpha: float = 0.25, gamma: float = 2.0) -> Tensor:
    """Element-wise focal loss (RetinaNet): alpha_t * (1 - p_t)^gamma * BCE. Same shape as logits."""
    prob = logits.sigmoid()
    ce = F.binary_cross_entropy_with_logits(logits, targets, reduction="none")
    p_t = prob * targets + (1 - prob) * (1 - targets)
    alpha_t = alpha * targets + (1 - alpha) * (1 - targets)
    return alpha_t * (1 - p_t) ** gamma * ce


def one_hot_labels(labels: Tensor, num_classes: int) -> Tensor:
    """Integer labels [...] -> float [..., num_classes]; label == num_classes means background (all 0)."""
    return F.one_hot(labels, num_classes + 1)[..., :num_classes].float()


def matched_rows(matches: Matches, sizes: list[int]) -> tuple[Tensor, Tensor, Tensor]:
    """Per matched pair: its image, its prediction row and its person's row in the batch's
    concatenated targets (int64, CPU). Built in numpy: no tensor operation per image, which on an
    accelerator would be a kernel launch per image and layer."""
    offsets = np.cumsum([0, *sizes[:-1]])
    batch = np.concatenate([np.full(len(src), b, dtype=np.int64) for b, (src, _) in enumerate(matches)])
    src = np.concatenate([src.numpy() for src, _ in matches]).astype(np.int64)
    person = np.concatenate([tgt.numpy() + off for (_, tgt), off in zip(matches, offsets)]).astype(np.int64)
    return torch.from_numpy(batch), torch.from_numpy(src), torch.from_numpy(person)


def giou_loss(pred: Tensor, target: Tensor) -> Tensor:
    """pred, target [N, 4] cxcywh -> [N] 1 - GIoU of corresponding boxes."""
    if len(pred) == 0:
        return pred.new_zeros(0)
    return 1 - pairwise_giou(box_cxcywh_to_xyxy(pred), box_cxcywh_to_xyxy(target)).diagonal()


OFFICIAL_BATCH = 2     # images per GPU in the official training (the denoising normaliser's reference)


class SetCriterion:
    """Computes the (unweighted) loss terms of one training step; `total` weights and sums them.

    Names are "<term>/<where>": where is "d<l>" for decoder layer l, "r<j>" for feedback layer j of
    the last simulated click round, "enc" for the encoder proposals; denoising terms are "dn_loss_*".
    """

    def __init__(self, matcher: HungarianMatcher, num_classes: int, weights: LossWeights = LossWeights()):
        self.matcher = matcher
        self.num_classes = num_classes
        self.weights = weights
        self.sigmas = matcher.sigmas
        self.num_keypoints = len(matcher.sigmas)

    # ---- matched (set) losses -----------------------------------------------------------------
    def set_losses(self, outputs: dict[str, Tensor], targets: list[dict[str, Tensor]], matches: Matches,
                   num_persons: float, with_keypoints: bool) -> dict[str, Tensor]:
        logits = outputs["pred_logits"]
        batch, src, person = matched_rows(matches, [len(t["labels"]) for t in targets])

        def matched(key: str) -> Tensor:     # the matched persons' `key`, in the order of (batch, src)
            return torch.cat([t[key] for t in targets])[person.to(targets[0][key].device)]

        labels = torch.full(logits.shape[:2], self.num_classes, dtype=torch.int64, device=logits.device)
        labels[batch, src] = matched("labels")
        focal = sigmoid_focal_loss(logits, one_hot_labels(labels, logits.shape[-1]),
                                   self.weights.focal_alpha, self.weights.focal_gamma)
        losses = {"loss_ce": focal.sum() / num_persons}

        pred_boxes = outputs["pred_boxes"][batch, src]
        gt_boxes = matched("boxes")
        losses["loss_bbox"] = F.l1_loss(pred_boxes, gt_boxes, reduction="sum") / num_persons
        losses["loss_giou"] = giou_loss(pred_boxes, gt_boxes).sum() / num_persons
        if with_keypoints:
            k = self.num_keypoints
            pred_xy, _ = keypoint_xy_vis(outputs["pred_keypoints"][batch, src], k)
            gt_xy, vis = keypoint_xy_vis(matched("keypoints"), k)
            area = matched("area")
            losses["loss_keypoints"] = ((pred_xy - gt_xy).abs() * vis[..., None]).sum() / num_persons
            sim = oks(pred_xy, gt_xy, vis, area, self.sigmas.to(pred_xy)).clamp(min=1e-6)
            losses["loss_oks"] = (1 - sim).sum() / num_persons
        return losses

    # ---- denoising losses (no matching: query i reconstructs dn.boxes[:, i]) -------------------
    def denoising_losses(self, outputs: dict[str, Tensor], dn: DenoisingTargets, with_keypoints: bool
                         ) -> dict[str, Tensor]:
        # The official code divides the sum over its per-GPU batch of 2 by the queries per image,
        # which makes these terms grow with the batch while the matched ones (divided by the
        # persons in the batch) do not. Dividing by queries x batch / 2 is the official value at
        # batch 2 and keeps the balance of the two at any batch.
        batch, per_image = dn.boxes.shape[:2]
        num = per_image * batch / OFFICIAL_BATCH
        logits = outputs["pred_logits"]
        labels = torch.where(dn.valid, dn.labels, torch.full_like(dn.labels, self.num_classes))
        focal = sigmoid_focal_loss(logits, one_hot_labels(labels, logits.shape[-1]),
                                   self.weights.focal_alpha, self.weights.focal_gamma)
        losses = {"dn_loss_ce": focal.sum() / num}
        valid = dn.valid
        pred_boxes, gt_boxes = outputs["pred_boxes"][valid], dn.boxes[valid]
        losses["dn_loss_bbox"] = F.l1_loss(pred_boxes, gt_boxes, reduction="sum") / num
        losses["dn_loss_giou"] = giou_loss(pred_boxes, gt_boxes).sum() / num
        if with_keypoints:
            k = self.num_keypoints
            pred_xy, _ = keypoint_xy_vis(outputs["pred_keypoints"][valid], k)
            gt_xy, vis = keypoint_xy_vis(dn.keypoints[valid], k)
            losses["dn_loss_keypoints"] = ((pred_xy - gt_xy).abs() * vis[..., None]).sum() / num
        return losses

    # ---- one step ------------------------------------------------------------------------------
    def __call__(self, outputs: dict, targets: list[dict[str, Tensor]], num_box_layers: int,
                 dn: DenoisingTargets | None = None, feedback: list[dict[str, Tensor]] | None = None
                 ) -> dict[str, Tensor]:
        """outputs: `model.decode(..., with_aux=True)`; feedback: the per-layer outputs of the last
        simulated refinement round (earliest layer first), or None. Returns name -> loss."""
        num_persons = max(float(sum(len(t["labels"]) for t in targets)), 1.0)
        layers = [*outputs["aux_outputs"], {k: outputs[k] for k in ("pred_logits", "pred_boxes", "pred_keypoints")}]
        losses: dict[str, Tensor] = {}

        def add(part: dict[str, Tensor], where: str) -> None:
            losses.update({f"{name}/{where}": v for name, v in part.items()})

        for lid, layer in enumerate(layers):
            pose = lid >= num_box_layers
            add(self.set_losses(layer, targets, self.matcher(layer, targets, pose), num_persons, pose), f"d{lid}")
        for j, layer in enumerate(feedback or []):
            add(self.set_losses(layer, targets, self.matcher(layer, targets, True), num_persons, True), f"r{j}")
        interm = outputs["interm_outputs"]
        add(self.set_losses(interm, targets, self.matcher(interm, targets, False), num_persons, False), "enc")
        if dn is not None:
            for lid, layer in enumerate(outputs["dn_outputs"]):
                add(self.denoising_losses(layer, dn, lid >= num_box_layers), f"d{lid}")
        return losses

    def total(self, losses: dict[str, Tensor]) -> Tensor:
        """The weighted sum that is back-propagated."""
        return sum(self.weights.of(name) * value for name, value in losses.items())
