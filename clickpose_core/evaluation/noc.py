"""The simulated annotator and the Number-of-Clicks metric, as pure functions over arrays.

Follows `human_feedback_loop_NOC_test` / `human_feedback_loop_inference` of the official code:

* Predictions are matched to ground-truth people ONCE, before the first click, by the Hungarian
  matcher with the official cost 2 * focal class cost + 10 * L1(keypoints) + 4 * (1 - OKS), all in
  image-normalised coordinates over labelled joints.
* Every round, each matched prediction gets one click: on its labelled (v > 0) joint with the
  largest L1 error |dx|/W + |dy|/H, moved to the ground-truth position.
* NoC@t of an image is the first round r (0 = before any click) at which the image's keypoint AP
  reaches t; if it never does within `max_rounds` rounds, it counts as `max_rounds` (official:
  the loop runs K + 1 times, so the cap is K = 17 for COCO). NoC@t of a dataset is the mean.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Sequence

import numpy as np
from scipy.optimize import linear_sum_assignment

from clickpose_core.types import Click

# Official matcher weights (config/clickpose.cfg.py: set_cost_class, set_cost_keypoints, set_cost_oks).
COST_CLASS, COST_KEYPOINTS, COST_OKS = 2.0, 10.0, 4.0
FOCAL_ALPHA, FOCAL_GAMMA = 0.25, 2.0


def _normalised(xy: np.ndarray, width: int, height: int) -> np.ndarray:
    return xy / np.array([width, height], dtype=np.float64)


def match_cost(scores: np.ndarray, pred: np.ndarray, gt: np.ndarray, gt_areas: np.ndarray,
               width: int, height: int, sigmas: Sequence[float]) -> np.ndarray:
    """Official matching cost [P, G].

    scores [P] person probabilities; pred [P, K, 2] pixels; gt [G, K, 3] pixels + flags;
    gt_areas [G] pixels. OKS here is the matcher's own variant (normalised coordinates and area,
    visibility 0/1), not COCOeval's.
    """
    p = np.clip(np.asarray(scores, np.float64), 0.0, 1.0)[:, None]
    neg = (1 - FOCAL_ALPHA) * p ** FOCAL_GAMMA * -np.log(1 - p + 1e-8)
    pos = FOCAL_ALPHA * (1 - p) ** FOCAL_GAMMA * -np.log(p + 1e-8)
    zp = _normalised(np.asarray(pred, np.float64), width, height)             # [P, K, 2]
    zg = _normalised(gt[..., :2], width, height)                               # [G, K, 2]
    vis = (gt[..., 2] > 0).astype(np.float64)                                  # [G, K]
    l1 = (np.abs(zp[:, None] - zg[None]).sum(-1) * vis[None]).sum(-1)          # [P, G]
    area = np.asarray(gt_areas, np.float64) / (width * height)
    var = (np.asarray(sigmas, np.float64) * 2) ** 2
    d2 = ((zp[:, None] - zg[None]) ** 2).sum(-1)                               # [P, G, K]
    sim = np.exp(-d2 / (area[None, :, None] * var[None, None] * 2)) * vis[None]
    oks_m = np.clip(sim.sum(-1) / (vis.sum(-1)[None] + 1e-6), 1e-6, None)
    return COST_CLASS * (pos - neg) + COST_KEYPOINTS * l1 + COST_OKS * (1 - oks_m)


def match(scores: np.ndarray, pred: np.ndarray, gt: np.ndarray, gt_areas: np.ndarray,
          width: int, height: int, sigmas: Sequence[float]) -> tuple[np.ndarray, np.ndarray]:
    """Hungarian matching -> (prediction rows, gt rows), both int arrays of length min(P, G)."""
    if len(pred) == 0 or len(gt) == 0:
        return np.zeros(0, dtype=np.int64), np.zeros(0, dtype=np.int64)
    rows, cols = linear_sum_assignment(match_cost(scores, pred, gt, gt_areas, width, height, sigmas))
    return rows.astype(np.int64), cols.astype(np.int64)


def worst_joints(pred: np.ndarray, gt: np.ndarray, pred_rows: np.ndarray, gt_rows: np.ndarray,
                 width: int, height: int) -> list[tuple[int, int, int]]:
    """(prediction row, gt row, joint) to click for every matched pair: the labelled joint with
    the largest normalised L1 error (ties -> lowest joint index). Pairs whose ground truth has no
    labelled joint get no click.
    """
    out = []
    for r, g in zip(pred_rows, gt_rows):
        vis = gt[g, :, 2] > 0
        if not vis.any():
            continue
        err = np.abs(_normalised(pred[r] - gt[g, :, :2], width, height)).sum(-1)
        out.append((int(r), int(g), int(np.argmax(np.where(vis, err, -1.0)))))
    return out


def simulate_clicks(indices: np.ndarray, pred: np.ndarray, gt: np.ndarray, pred_rows: np.ndarray,
                    gt_rows: np.ndarray, width: int, height: int) -> list[Click]:
    """One round of the simulated annotator: a Click in pixels per matched person.

    indices [P] maps prediction rows to session person indices (Click.person).
    """
    return [Click(person=int(indices[r]), joint=j, x=float(gt[g, j, 0]), y=float(gt[g, j, 1]))
            for r, g, j in worst_joints(pred, gt, pred_rows, gt_rows, width, height)]


@dataclass(frozen=True)
class NocResult:
    """NoC of one image at one threshold: `clicks` rounds; `reached` False when capped."""

    clicks: int
    reached: bool


def clicks_to_reach(ap_per_round: Sequence[float], threshold: float, max_rounds: int) -> NocResult:
    """First round r <= max_rounds with AP_r >= threshold, else max_rounds (not reached).

    ap_per_round[r] is the image AP after r rounds (index 0 = model only). Rounds beyond what was
    computed count as not reached.
    """
    if max_rounds < 0:
        raise ValueError(f"max_rounds must be >= 0, got {max_rounds}")
    for r, ap in enumerate(list(ap_per_round)[:max_rounds + 1]):
        if ap >= threshold:
            return NocResult(r, True)
    return NocResult(max_rounds, False)


def noc_summary(trajectories: Sequence[Sequence[float]], thresholds: Sequence[float],
                max_rounds: int) -> dict[str, dict[str, float]]:
    """Dataset NoC per threshold: {'NoC@85': {'noc': mean rounds, 'failed': fraction capped,
    'images': n}} from per-image AP trajectories."""
    out = {}
    for t in thresholds:
        res = [clicks_to_reach(tr, t, max_rounds) for tr in trajectories]
        n = len(res)
        out[f"NoC@{round(t * 100)}"] = {
            "noc": float(np.mean([r.clicks for r in res])) if n else float("nan"),
            "failed": float(np.mean([not r.reached for r in res])) if n else float("nan"),
            "images": n,
        }
    return out
