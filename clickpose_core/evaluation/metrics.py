"""COCO keypoint and box AP (pycocotools) and the OKS similarity, over plain arrays.

Keypoint AP always passes the configured per-keypoint sigmas to COCOeval
(`params.kpt_oks_sigmas`), so datasets with other keypoint counts evaluate correctly.
"""
from __future__ import annotations

import contextlib
import io
from dataclasses import dataclass
from typing import Iterable, Sequence

import numpy as np
from pycocotools.coco import COCO
from pycocotools.cocoeval import COCOeval

KEYPOINT_STATS = ("AP", "AP50", "AP75", "AP_M", "AP_L", "AR", "AR50", "AR75", "AR_M", "AR_L")
BOX_STATS = ("AP", "AP50", "AP75", "AP_S", "AP_M", "AP_L", "AR1", "AR10", "AR100", "AR_S", "AR_M", "AR_L")


@dataclass(frozen=True)
class Detections:
    """People predicted in one image at one feedback round (pixels).

    indices: [P] int session rows (Person.index); scores: [P]; boxes: [P, 4] xyxy;
    keypoints: [P, K, 2].
    """

    indices: np.ndarray
    scores: np.ndarray
    boxes: np.ndarray
    keypoints: np.ndarray

    def __post_init__(self) -> None:
        p = len(self.indices)
        if self.scores.shape != (p,) or self.boxes.shape != (p, 4) or self.keypoints.ndim != 3 \
                or self.keypoints.shape[0] != p or self.keypoints.shape[2] != 2:
            raise ValueError(f"Detections shapes disagree: indices {self.indices.shape}, scores "
                             f"{self.scores.shape}, boxes {self.boxes.shape}, keypoints {self.keypoints.shape}")

    def row_of(self, index: int) -> int:
        """Position of session row `index` in these arrays."""
        hits = np.nonzero(self.indices == index)[0]
        if len(hits) != 1:
            raise KeyError(f"person index {index} not in detections (have {self.indices.tolist()})")
        return int(hits[0])


def oks(pred: np.ndarray, gt: np.ndarray, areas: np.ndarray, sigmas: Sequence[float]) -> np.ndarray:
    """COCO object keypoint similarity over labelled joints.

    pred: [P, K, 2]; gt: [G, K, 3] (x, y, v); areas: [G]; sigmas: [K] -> [P, G].
    OKS = mean over joints with v > 0 of exp(-d^2 / (2 * area * (2 sigma)^2)); a person without
    labelled joints gets 0 (COCO instead compares to its box; such people are never clicked).
    """
    pred, gt = np.asarray(pred, np.float64), np.asarray(gt, np.float64)
    sig = np.asarray(sigmas, np.float64)
    if pred.ndim != 3 or gt.ndim != 3 or pred.shape[1:] != (sig.size, 2) or gt.shape[1:] != (sig.size, 3):
        raise ValueError(f"oks expects pred [P, K, 2], gt [G, K, 3] with K = {sig.size} sigmas; "
                         f"got {pred.shape} and {gt.shape}")
    d2 = ((pred[:, None, :, :] - gt[None, :, :, :2]) ** 2).sum(-1)             # [P, G, K]
    e = d2 / ((2 * sig) ** 2)[None, None] / (np.asarray(areas, np.float64)[None, :, None] + np.spacing(1)) / 2
    vis = (gt[:, :, 2] > 0)[None]
    n = vis.sum(-1)
    return np.where(n > 0, (np.exp(-e) * vis).sum(-1) / np.maximum(n, 1), 0.0)


def coco_results(image_id: int, det: Detections, kind: str) -> list[dict]:
    """COCO result dicts ('keypoints': flat [x, y, 1] * K, or 'bbox': xywh) for one image."""
    out = []
    for i in range(len(det.indices)):
        r = {"image_id": int(image_id), "category_id": 1, "score": float(det.scores[i])}
        if kind == "keypoints":
            k = det.keypoints[i]
            r["keypoints"] = np.concatenate([k, np.ones((len(k), 1))], 1).reshape(-1).tolist()
        elif kind == "bbox":
            x0, y0, x1, y1 = (float(v) for v in det.boxes[i])
            r["bbox"] = [x0, y0, x1 - x0, y1 - y0]
        else:
            raise ValueError(f"kind must be 'keypoints' or 'bbox', got {kind!r}")
        out.append(r)
    return out


def coco_ap(gt: COCO, results: list[dict], iou_type: str, image_ids: Iterable[int],
            sigmas: Sequence[float] | None = None) -> dict[str, float]:
    """Run COCOeval quietly on `image_ids`; returns the summary stats by name.

    iou_type 'keypoints' (needs sigmas) or 'bbox'. With no results at all every stat is 0.
    """
    names = KEYPOINT_STATS if iou_type == "keypoints" else BOX_STATS
    if iou_type not in ("keypoints", "bbox"):
        raise ValueError(f"iou_type must be 'keypoints' or 'bbox', got {iou_type!r}")
    if iou_type == "keypoints" and sigmas is None:
        raise ValueError("keypoint AP needs the per-keypoint OKS sigmas")
    if not results:
        return {n: 0.0 for n in names}
    with contextlib.redirect_stdout(io.StringIO()):
        dt = gt.loadRes(results)
        ev = COCOeval(gt, dt, iou_type)
        ev.params.imgIds = sorted(int(i) for i in image_ids)
        if iou_type == "keypoints":
            ev.params.kpt_oks_sigmas = np.asarray(sigmas, dtype=np.float64)
        ev.evaluate()
        ev.accumulate()
        ev.summarize()
    return {n: float(v) for n, v in zip(names, ev.stats)}


def image_keypoint_ap(gt: COCO, image_id: int, det: Detections, sigmas: Sequence[float]) -> float:
    """Keypoint AP (OKS .50:.95, COCOeval stats[0]) of one image: the official NoC criterion."""
    return coco_ap(gt, coco_results(image_id, det, "keypoints"), "keypoints", [image_id], sigmas)["AP"]


def grow_boxes(boxes: np.ndarray, keypoints: np.ndarray, rows: np.ndarray) -> np.ndarray:
    """Box regularisation: grow the xyxy box of each selected row to hold all its keypoints.

    boxes [P, 4] xyxy; keypoints [P, K, 2]; rows [P] bool -> new [P, 4].
    """
    out = np.array(boxes, dtype=np.float64, copy=True)
    rows = np.asarray(rows, dtype=bool)
    if rows.any():
        k = keypoints[rows]
        out[rows, :2] = np.minimum(out[rows, :2], k.min(1))
        out[rows, 2:] = np.maximum(out[rows, 2:], k.max(1))
    return out
