"""Evaluation metrics and the simulated-annotator protocol on hand-made cases with known answers."""
from __future__ import annotations

import json
import math

import numpy as np
import pytest

from clickpose_core.config import COCO_SIGMAS
from clickpose_core.evaluation import metrics, noc
from clickpose_core.evaluation.data import EvalDataset
from clickpose_core.evaluation.refiners import ManualCorrection
from clickpose_core.evaluation.runner import evaluate
from clickpose_core.types import Click, Person

W, H = 200, 200
K = 17


def skeleton(x0: float, y0: float) -> np.ndarray:
    """17 distinct joints spread over a 100 x 150 box starting at (x0, y0); extent is exactly that box."""
    xs = np.linspace(x0, x0 + 100, K)
    ys = np.concatenate([np.linspace(y0, y0 + 150, K - 1), [y0 + 150]])
    return np.stack([xs, ys], 1)


def coco(people: dict[int, list[np.ndarray]], vis: dict | None = None, k: int = K) -> dict:
    """COCO dict: people[image_id] = list of [k, 2] joints; all joints v=2 unless vis overrides."""
    anns, images = [], []
    for image_id, joints in people.items():
        images.append({"id": image_id, "file_name": f"{image_id}.png", "width": W, "height": H})
        for n, j in enumerate(joints):
            v = np.full(k, 2.0) if vis is None else np.asarray(vis[(image_id, n)], float)
            kp = np.concatenate([np.where(v[:, None] > 0, j, 0), v[:, None]], 1)
            shown = j[v > 0] if (v > 0).any() else j
            lo, hi = shown.min(0), shown.max(0)
            anns.append({"id": len(anns) + 1, "image_id": image_id, "category_id": 1, "iscrowd": 0,
                         "keypoints": kp.reshape(-1).tolist(), "num_keypoints": int((v > 0).sum()),
                         "bbox": [*lo.tolist(), *(hi - lo).tolist()], "area": 15000.0})
    return {"images": images, "annotations": anns,
            "categories": [{"id": 1, "name": "person", "keypoints": [f"k{i}" for i in range(k)], "skeleton": []}]}


def person(index: int, joints: np.ndarray, score: float = 0.9) -> Person:
    j = np.asarray(joints, float)
    return Person(index=index, score=score, box=np.concatenate([j.min(0), j.max(0)]), keypoints=j.copy(),
                  clicked=np.zeros(len(j), bool))


class Fixed:
    """A refiner whose model output is given up front and which ignores every click."""

    name = "fixed"

    def __init__(self, outputs: dict[int, list[Person]]):
        self.outputs = outputs
        self.refined = 0

    def predict(self, image_id, image):
        return list(self.outputs[image_id])

    def refine(self, image_id, clicks):
        self.refined += 1
        return list(self.outputs[image_id])


class NoImages(EvalDataset):
    def image(self, image_id):
        return np.zeros((H, W, 3), np.uint8)


# ---- OKS and AP ------------------------------------------------------------------------------

def test_oks_matches_hand_computation_and_ignores_unlabelled_joints():
    gt = np.array([[[10, 10, 2], [20, 20, 1], [90, 90, 0]]], float)
    pred = np.array([[[10, 10], [22, 20], [0, 0]]], float)
    sig = (0.1, 0.1, 0.1)
    # joint 1: d^2 = 4, e = 4 / (2 * area 100 * (2 * 0.1)^2) = 0.5; joint 2 unlabelled
    expected = (1 + math.exp(-0.5)) / 2
    assert metrics.oks(pred, gt, np.array([100.0]), sig)[0, 0] == pytest.approx(expected, rel=1e-9)


def test_oks_rejects_wrong_sigma_count():
    with pytest.raises(ValueError, match="sigmas"):
        metrics.oks(np.zeros((1, 3, 2)), np.zeros((1, 3, 3)), np.ones(1), (0.1, 0.1))


def test_perfect_predictions_give_ap_one_and_noc_zero():
    people = {1: [skeleton(10, 20), skeleton(90, 40)], 2: [skeleton(50, 30)]}
    ds = NoImages(coco(people))
    fixed = Fixed({i: [person(n, j) for n, j in enumerate(js)] for i, js in people.items()})
    res = evaluate(fixed, ds, COCO_SIGMAS, ap_clicks=(0,), box_clicks=(0,), max_rounds=5)
    assert res["keypoint_ap"]["0"]["AP"] == pytest.approx(1.0)
    assert res["box_ap"]["0"]["AP"] == pytest.approx(1.0)
    for t in ("NoC@85", "NoC@90", "NoC@95"):
        assert res["noc"][t] == {"noc": 0.0, "failed": 0.0, "images": 2, "person_clicks": 0.0}
    assert fixed.refined == 0      # nothing to do: already above every threshold
    json.dumps(res)                # the result is plain JSON


def test_two_wrong_joints_need_exactly_two_clicks_with_manual_correction():
    gt = skeleton(40, 20)
    pred = gt.copy()
    pred[9] += (150, 0)      # left wrist, error 150 / 200 = 0.75 normalised: clicked first
    pred[15] += (0, 100)     # left ankle, error 0.5: clicked second
    ds = NoImages(coco({1: [gt]}))
    base = Fixed({1: [person(0, pred)]})
    res = evaluate(ManualCorrection(base), ds, COCO_SIGMAS, ap_clicks=(0, 1, 2), box_clicks=(),
                   thresholds=(0.85, 0.95), max_rounds=10)
    # OKS 15/17 = 0.882 passes 8 of the 10 thresholds .50:.95, 16/17 = 0.941 passes 9, then 1.0
    assert [res["keypoint_ap"][k]["AP"] for k in ("0", "1", "2")] == pytest.approx([0.8, 0.9, 1.0])
    assert res["noc"]["NoC@85"]["noc"] == 1 and res["noc"]["NoC@95"]["noc"] == 2
    assert res["noc"]["NoC@95"]["failed"] == 0 and res["noc"]["NoC@95"]["person_clicks"] == 2
    assert res["per_image"][0]["ap"] == pytest.approx([0.8, 0.9, 1.0])


def test_simulated_click_targets_worst_labelled_joint_at_ground_truth_position():
    gt_xy = skeleton(40, 20)
    v = np.full(K, 2.0)
    v[3] = 0                                  # unlabelled ear: never clicked, however wrong
    gt = np.concatenate([gt_xy, v[:, None]], 1)[None]
    pred = gt_xy.copy()
    pred[3] += (180, 180)
    pred[12] += (5, 0)
    pred[7] += (0, 8)                         # 8 / H beats 5 / W
    clicks = noc.simulate_clicks(np.array([7]), pred[None], gt, np.array([0]), np.array([0]), W, H)
    assert clicks == [Click(person=7, joint=7, x=gt_xy[7, 0], y=gt_xy[7, 1])]


def test_error_is_normalised_by_image_width_and_height_separately():
    gt_xy = skeleton(10, 10)
    gt = np.concatenate([gt_xy, np.full((K, 1), 2.0)], 1)[None]
    pred = gt_xy.copy()
    pred[0] += (30, 0)      # 30 / 400 = 0.075
    pred[1] += (0, 20)      # 20 / 100 = 0.2  -> wins on a wide image
    [(row, g, joint)] = noc.worst_joints(pred[None], gt, np.array([0]), np.array([0]), 400, 100)
    assert (row, g, joint) == (0, 0, 1)


def test_hungarian_matching_pairs_people_regardless_of_order():
    a, b = skeleton(0, 0), skeleton(95, 45)
    gt = np.stack([np.concatenate([j, np.full((K, 1), 2.0)], 1) for j in (a, b)])
    pred = np.stack([b + 1, a - 1, a + 60])     # reversed, plus a stray detection
    rows, cols = noc.match(np.array([0.9, 0.8, 0.95]), pred, gt, np.array([15000.0, 15000.0]), W, H, COCO_SIGMAS)
    assert dict(zip(rows.tolist(), cols.tolist())) == {0: 1, 1: 0}


def test_match_with_no_people_is_empty():
    rows, cols = noc.match(np.zeros(0), np.zeros((0, K, 2)), np.zeros((1, K, 3)), np.ones(1), W, H, COCO_SIGMAS)
    assert rows.size == 0 and cols.size == 0


def test_clicks_to_reach_and_cap():
    traj = [0.5, 0.8, 0.96]
    assert noc.clicks_to_reach(traj, 0.5, 10) == noc.NocResult(0, True)
    assert noc.clicks_to_reach(traj, 0.85, 10) == noc.NocResult(2, True)
    assert noc.clicks_to_reach(traj, 0.99, 10) == noc.NocResult(10, False)
    assert noc.clicks_to_reach(traj, 0.85, 1) == noc.NocResult(1, False)   # reached only after the cap
    s = noc.noc_summary([traj, [1.0]], (0.85,), 4)
    assert s["NoC@85"] == {"noc": 1.0, "failed": 0.0, "images": 2}


def test_refiner_that_ignores_clicks_hits_the_cap():
    gt = skeleton(40, 20)
    pred = gt.copy()
    pred[9] += (150, 0)
    ds = NoImages(coco({1: [gt]}))
    fixed = Fixed({1: [person(0, pred)]})
    res = evaluate(fixed, ds, COCO_SIGMAS, ap_clicks=(0,), box_clicks=(), thresholds=(0.95,), max_rounds=4)
    assert res["noc"]["NoC@95"] == {"noc": 4.0, "failed": 1.0, "images": 1, "person_clicks": 4.0}
    assert fixed.refined == 4


def test_default_cap_is_the_number_of_keypoints():
    gt = skeleton(40, 20)
    pred = gt + (0, 300)                       # hopeless and never fixed
    res = evaluate(Fixed({1: [person(0, pred)]}), NoImages(coco({1: [gt]})), COCO_SIGMAS,
                   ap_clicks=(0,), box_clicks=(), thresholds=(0.85,))
    assert res["max_rounds"] == 17 and res["noc"]["NoC@85"]["noc"] == 17


def test_other_keypoint_counts_use_the_given_sigmas():
    k = 5
    sig = (0.05,) * k
    gt = skeleton(40, 20)[:k]
    pred = gt.copy()
    pred[2] += (120, 0)                        # OKS 4/5 = 0.8 passes .50 .. .80: 7 of 10
    ds = NoImages(coco({1: [gt]}, k=k))
    res = evaluate(Fixed({1: [person(0, pred)]}), ds, sig, ap_clicks=(0,), box_clicks=(), max_rounds=1)
    assert res["keypoint_ap"]["0"]["AP"] == pytest.approx(0.7)
    with pytest.raises(ValueError, match="sigmas"):
        evaluate(Fixed({1: [person(0, pred)]}), ds, COCO_SIGMAS)


def test_box_ap_uses_boxes_grown_to_the_clicked_keypoints():
    gt = skeleton(40, 20)                      # box (40, 20)-(140, 170)
    pred = gt.copy()
    pred[-1] = (140, 90)                       # last joint (an ankle) predicted inside a short box
    p = Person(index=0, score=0.9, box=np.array([40, 20, 140, 100.0]), keypoints=pred,
               clicked=np.zeros(K, bool))
    res = evaluate(ManualCorrection(Fixed({1: [p]})), NoImages(coco({1: [gt]})), COCO_SIGMAS,
                   ap_clicks=(), box_clicks=(0, 1), thresholds=(), max_rounds=1)
    # IoU 80/150 = 0.53 passes only the .50 threshold; the click restores the full box
    assert res["box_ap"]["0"]["AP"] == pytest.approx(0.1)
    assert res["box_ap"]["1"]["AP"] == pytest.approx(1.0)


def test_grow_boxes_only_touches_selected_rows():
    boxes = np.array([[10, 10, 20, 20], [10, 10, 20, 20]], float)
    kp = np.array([[[5, 15], [25, 30]], [[5, 15], [25, 30]]], float)
    out = metrics.grow_boxes(boxes, kp, np.array([True, False]))
    assert out.tolist() == [[5, 10, 25, 30], [10, 10, 20, 20]]


def test_images_without_labelled_keypoints_are_not_evaluated():
    d = coco({1: [skeleton(10, 10)], 2: [skeleton(10, 10)]}, vis={(1, 0): np.full(K, 2), (2, 0): np.zeros(K)})
    d["annotations"][1]["bbox"] = [10, 10, 50, 50]
    d["images"].append({"id": 3, "file_name": "3.png", "width": W, "height": H})
    assert EvalDataset(d).image_ids == [1]


def test_detections_and_dataset_errors_are_clear(tmp_path):
    with pytest.raises(ValueError, match="shapes disagree"):
        metrics.Detections(np.arange(2), np.ones(3), np.zeros((2, 4)), np.zeros((2, K, 2)))
    with pytest.raises(FileNotFoundError, match="annotations.json"):
        EvalDataset.from_folder(tmp_path)
    (tmp_path / "x.json").write_text("{}")
    with pytest.raises(ValueError, match="not a COCO annotation file"):
        EvalDataset(tmp_path / "x.json")
    ds = NoImages(coco({1: [skeleton(10, 10)]}))
    with pytest.raises(ValueError, match="max_rounds"):
        evaluate(Fixed({1: []}), ds, COCO_SIGMAS, max_rounds=0)
    with pytest.raises(ValueError, match="not evaluable"):
        evaluate(Fixed({1: []}), ds, COCO_SIGMAS, image_ids=[5])


def test_no_detections_count_as_zero_ap():
    res = evaluate(Fixed({1: []}), NoImages(coco({1: [skeleton(10, 10)]})), COCO_SIGMAS,
                   ap_clicks=(0,), box_clicks=(0,), thresholds=(0.5,), max_rounds=2)
    assert res["keypoint_ap"]["0"]["AP"] == 0.0 and res["noc"]["NoC@50"]["noc"] == 2
