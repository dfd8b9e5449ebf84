"""Drive a Refiner through the simulated-annotator protocol and compute every metric.

One pass per image runs the feedback rounds once and keeps every round's predictions; AP after k
clicks, box AP and NoC at every threshold are then read off those trajectories. This equals
running the official NoC loop once per threshold (it stops at the threshold, but the rounds before
the stop are the same deterministic rounds) and the official AP loop once per k.
"""
from __future__ import annotations

import math
import time
from dataclasses import dataclass, field
from typing import Sequence

import numpy as np

from clickpose_core.evaluation import metrics, noc
from clickpose_core.evaluation.data import EvalDataset
from clickpose_core.evaluation.refiners import Refiner
from clickpose_core.types import Person

DEFAULT_THRESHOLDS = (0.85, 0.90, 0.95)


def to_detections(people: Sequence[Person], num_keypoints: int) -> Detections:
    """Person list -> arrays ordered by session index (so rows stay put across rounds)."""
    people = sorted(people, key=lambda p: p.index)
    if not people:
        return metrics.Detections(np.zeros(0, np.int64), np.zeros(0), np.zeros((0, 4)),
                                  np.zeros((0, num_keypoints, 2)))
    kp = np.stack([np.asarray(p.keypoints, np.float64) for p in people])
    if kp.shape[1:] != (num_keypoints, 2):
        raise ValueError(f"refiner returned keypoints of shape {kp.shape[1:]}, dataset has "
                         f"{num_keypoints} keypoints")
    return metrics.Detections(indices=np.array([p.index for p in people], np.int64),
                              scores=np.array([p.score for p in people], np.float64),
                              boxes=np.stack([np.asarray(p.box, np.float64) for p in people]),
                              keypoints=kp)


Detections = metrics.Detections


@dataclass
class ImageRun:
    """Every round of one image: rounds[r] / ap[r] after r click rounds; clicked[r] the bool [P]
    rows of rounds[r] clicked at least once so far; clicks[r] clicks placed in round r (0 for r=0)."""

    image_id: int
    rounds: list[Detections] = field(default_factory=list)
    clicked: list[np.ndarray] = field(default_factory=list)
    ap: list[float] = field(default_factory=list)
    clicks: list[int] = field(default_factory=list)
    matched: int = 0


def run_image(refiner: Refiner, dataset: EvalDataset, image_id: int, sigmas: Sequence[float],
              min_rounds: int, max_rounds: int, stop_ap: float) -> ImageRun:
    """Predict, match once, then click rounds until round >= min_rounds and (AP >= stop_ap or
    round == max(min_rounds, max_rounds))."""
    truth = dataset.truth(image_id)
    k = dataset.num_keypoints
    det = to_detections(refiner.predict(image_id, dataset.image(image_id)), k)
    run = ImageRun(image_id)
    clicked_idx: set[int] = set()

    def record(d: Detections, n_clicks: int) -> None:
        run.rounds.append(d)
        run.clicked.append(np.array([i in clicked_idx for i in d.indices], dtype=bool))
        run.ap.append(metrics.image_keypoint_ap(dataset.coco, image_id, d, sigmas))
        run.clicks.append(n_clicks)

    record(det, 0)
    pred_rows, gt_rows = noc.match(det.scores, det.keypoints, truth.keypoints, truth.areas,
                                   truth.width, truth.height, sigmas)
    matched_idx = det.indices[pred_rows]            # matches are kept by session index
    run.matched = len(matched_idx)
    last = max(min_rounds, max_rounds)
    for r in range(1, last + 1):
        if r > min_rounds and run.ap[-1] >= stop_ap:
            break
        rows = np.array([det.row_of(int(i)) for i in matched_idx], dtype=np.int64)
        clicks = noc.simulate_clicks(det.indices, det.keypoints, truth.keypoints, rows, gt_rows,
                                     truth.width, truth.height)
        if clicks:
            clicked_idx.update(c.person for c in clicks)
            det = to_detections(refiner.refine(image_id, clicks), k)
        record(det, len(clicks))
    return run


def summarise(runs: Sequence[ImageRun], dataset: EvalDataset, sigmas: Sequence[float],
              ap_clicks: Sequence[int], box_clicks: Sequence[int], thresholds: Sequence[float],
              max_rounds: int) -> dict:
    """Dataset metrics from per-image runs (see docs/evaluation.md for definitions)."""
    ids = [r.image_id for r in runs]
    out: dict = {"images": len(runs), "persons_matched": int(sum(r.matched for r in runs))}

    def at(run: ImageRun, k: int) -> int:
        return min(k, len(run.rounds) - 1)       # an image that stopped early stays as it was

    kp_ap, box_ap, box_raw = {}, {}, {}
    for k in sorted(set(ap_clicks)):
        res = [x for r in runs for x in metrics.coco_results(r.image_id, r.rounds[at(r, k)], "keypoints")]
        kp_ap[str(k)] = metrics.coco_ap(dataset.coco, res, "keypoints", ids, sigmas)
    for k in sorted(set(box_clicks)):
        reg, raw = [], []
        for r in runs:
            d = r.rounds[at(r, k)]
            grown = metrics.Detections(d.indices, d.scores,
                                       metrics.grow_boxes(d.boxes, d.keypoints, r.clicked[at(r, k)]), d.keypoints)
            reg += metrics.coco_results(r.image_id, grown, "bbox")
            raw += metrics.coco_results(r.image_id, d, "bbox")
        box_ap[str(k)] = metrics.coco_ap(dataset.coco, reg, "bbox", ids)
        box_raw[str(k)] = metrics.coco_ap(dataset.coco, raw, "bbox", ids)
    out["keypoint_ap"], out["box_ap"], out["box_ap_unregularised"] = kp_ap, box_ap, box_raw
    out["noc"] = noc.noc_summary([r.ap for r in runs], thresholds, max_rounds)
    # Clicks an annotator actually places (one per matched person per round) until NoC@t.
    for t in thresholds:
        placed = [sum(r.clicks[:noc.clicks_to_reach(r.ap, t, max_rounds).clicks + 1]) for r in runs]
        out["noc"][f"NoC@{round(t * 100)}"]["person_clicks"] = float(np.mean(placed)) if placed else math.nan
    return out


def evaluate(refiner: Refiner, dataset: EvalDataset, sigmas: Sequence[float],
             ap_clicks: Sequence[int] = (0, 1, 3, 5), box_clicks: Sequence[int] = (0, 3, 5),
             thresholds: Sequence[float] = DEFAULT_THRESHOLDS, max_rounds: int | None = None,
             image_ids: Sequence[int] | None = None, progress: bool = False) -> dict:
    """Run the whole protocol for one refiner. max_rounds None -> K (the official cap)."""
    k = dataset.num_keypoints
    if len(sigmas) != k:
        raise ValueError(f"{len(sigmas)} OKS sigmas for a dataset with {k} keypoints")
    max_rounds = k if max_rounds is None else int(max_rounds)
    if max_rounds < 1:
        raise ValueError(f"max_rounds must be at least 1, got {max_rounds}")
    if any(c < 0 for c in list(ap_clicks) + list(box_clicks)):
        raise ValueError("click counts must be >= 0")
    if any(not 0 < t <= 1 for t in thresholds):
        raise ValueError(f"NoC thresholds must be in (0, 1], got {list(thresholds)}")
    ids = list(dataset.image_ids if image_ids is None else image_ids)
    unknown = set(ids) - set(dataset.image_ids)
    if unknown:
        raise ValueError(f"image ids not evaluable (absent, or no labelled keypoints): {sorted(unknown)[:5]}")
    min_rounds = max(list(ap_clicks) + list(box_clicks) + [0])
    stop_ap = max(thresholds) if thresholds else -1.0
    it = ids
    if progress:
        from tqdm import tqdm
        it = tqdm(ids, desc=refiner.name, unit="img")
    start = time.perf_counter()
    runs = [run_image(refiner, dataset, i, sigmas, min_rounds, max_rounds, stop_ap) for i in it]
    result = {"mode": refiner.name, "max_rounds": max_rounds, "thresholds": list(thresholds)}
    result.update(summarise(runs, dataset, sigmas, ap_clicks, box_clicks, thresholds, max_rounds))
    result["seconds"] = round(time.perf_counter() - start, 3)
    result["per_image"] = [{"image_id": r.image_id, "ap": [round(a, 6) for a in r.ap], "clicks": r.clicks}
                           for r in runs]
    return result
