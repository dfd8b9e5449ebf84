"""Hungarian matcher: assignments and cost values on hand-made cases."""
import math

import torch

from clickpose_core.training.matcher import HungarianMatcher, MatchCosts, oks

K = 3
SIGMAS = (0.05, 0.05, 0.05)


def target(boxes, kpts, vis=None, area=None):
    boxes = torch.tensor(boxes, dtype=torch.float32)
    kpts = torch.tensor(kpts, dtype=torch.float32).view(len(boxes), K * 2)
    vis = torch.ones(len(boxes), K) if vis is None else torch.tensor(vis, dtype=torch.float32)
    area = torch.full((len(boxes),), 0.04) if area is None else torch.tensor(area)
    return {"labels": torch.ones(len(boxes), dtype=torch.int64), "boxes": boxes,
            "keypoints": torch.cat([kpts, vis], 1), "area": area}


def outputs(boxes, kpts, logit=0.0):
    boxes = torch.tensor(boxes, dtype=torch.float32)[None]
    q = boxes.shape[1]
    kp = torch.tensor(kpts, dtype=torch.float32).view(1, q, 2 * K)
    return {"pred_logits": torch.full((1, q, 2), logit), "pred_boxes": boxes,
            "pred_keypoints": torch.cat([kp, torch.ones(1, q, K)], -1)}


PERSON_A = [[0.2, 0.2], [0.25, 0.3], [0.2, 0.4]]
PERSON_B = [[0.7, 0.6], [0.75, 0.7], [0.7, 0.8]]
FAR = [[0.5, 0.95], [0.5, 0.95], [0.5, 0.95]]


def test_obvious_assignment_by_keypoints_and_by_boxes():
    gt = target([[0.2, 0.3, 0.1, 0.3], [0.7, 0.7, 0.1, 0.3]], [PERSON_A, PERSON_B])
    # Predictions: [near B, far away, near A] -> B matched to 0, A to 2.
    near_b = [[x + 0.01, y] for x, y in PERSON_B]
    near_a = [[x, y - 0.01] for x, y in PERSON_A]
    out = outputs([[0.71, 0.7, 0.1, 0.3], [0.5, 0.5, 0.05, 0.05], [0.2, 0.31, 0.1, 0.3]], [near_b, FAR, near_a])
    m = HungarianMatcher(SIGMAS)
    for use_kpts in (True, False):
        (rows, cols), = m(out, [gt], use_keypoints=use_kpts)
        assert dict(zip(rows.tolist(), cols.tolist())) == {0: 1, 2: 0}


def test_keypoint_mode_ignores_boxes():
    # Prediction 0 has the right keypoints of A but the box of B; prediction 1 the reverse.
    gt = target([[0.2, 0.3, 0.1, 0.3]], [PERSON_A])
    out = outputs([[0.7, 0.7, 0.1, 0.3], [0.2, 0.3, 0.1, 0.3]], [PERSON_A, PERSON_B])
    m = HungarianMatcher(SIGMAS)
    assert m(out, [gt], use_keypoints=True)[0][0].tolist() == [0]
    assert m(out, [gt], use_keypoints=False)[0][0].tolist() == [1]


def test_cost_values():
    c = MatchCosts()
    m = HungarianMatcher(SIGMAS, c)
    gt = target([[0.5, 0.5, 0.2, 0.2]], [[[0.5, 0.5]] * 3], vis=[[1, 1, 0]], area=[0.04])
    logits = torch.zeros(1, 2)                                   # p = 0.5
    focal = c.focal_alpha * 0.25 * math.log(2) - (1 - c.focal_alpha) * 0.25 * math.log(2)
    # Box mode: L1 = 0.1 (cx off by 0.1); boxes of equal size offset by half their width: GIoU = 1/3 - 0.
    box = torch.tensor([[0.6, 0.5, 0.2, 0.2]])
    cost = m.cost_matrix(logits, box, None, gt)
    assert torch.allclose(cost, torch.tensor([[c.cls * focal + c.box * 0.1 - c.giou * (1 / 3)]]), atol=1e-5)
    # Keypoint mode: joints 0 and 1 off by (0.03, 0.04) -> L1 0.07 each; joint 2 unlabelled (ignored).
    kp = torch.tensor([[0.53, 0.54] * 2 + [0.9, 0.9, 1, 1, 1]])
    d2 = 0.05 ** 2
    sim = math.exp(-d2 / (2 * 0.04 * (2 * 0.05) ** 2))
    cost = m.cost_matrix(logits, box, kp, gt)
    want = c.cls * focal + c.keypoints * 0.14 + c.oks * (1 - sim)
    assert torch.allclose(cost, torch.tensor([[want]]), atol=1e-5)


def test_oks_is_one_at_the_target_and_ignores_unlabelled_joints():
    gt = torch.tensor([[[0.2, 0.2], [0.4, 0.4]]])
    vis = torch.tensor([[1.0, 0.0]])
    area = torch.tensor([0.1])
    sig = torch.tensor(SIGMAS[:2])
    assert torch.allclose(oks(gt, gt, vis, area, sig), torch.ones(1), atol=1e-5)
    moved_unlabelled = torch.tensor([[[0.2, 0.2], [0.9, 0.1]]])
    assert torch.allclose(oks(moved_unlabelled, gt, vis, area, sig), torch.ones(1), atol=1e-5)


def test_more_predictions_than_targets_and_empty_image():
    gt = target([[0.2, 0.3, 0.1, 0.3]], [PERSON_A])
    empty = {"labels": torch.zeros(0, dtype=torch.int64), "boxes": torch.zeros(0, 4),
             "keypoints": torch.zeros(0, 3 * K), "area": torch.zeros(0)}
    out = outputs([[0.5, 0.5, 0.1, 0.1], [0.2, 0.3, 0.1, 0.3]], [FAR, PERSON_A])
    two = {k: v.repeat(2, 1, 1) for k, v in out.items()}
    matches = HungarianMatcher(SIGMAS)(two, [gt, empty], use_keypoints=True)
    assert matches[0][0].tolist() == [1] and matches[0][1].tolist() == [0]
    assert len(matches[1][0]) == 0


def random_batch(g, persons, q=12):
    """Outputs for len(persons) images of q queries and targets with those person counts."""
    b = len(persons)
    out = {"pred_logits": torch.randn(b, q, 2, generator=g), "pred_boxes": 0.1 + 0.8 * torch.rand(b, q, 4, generator=g),
           "pred_keypoints": torch.cat([torch.rand(b, q, 2 * K, generator=g), torch.ones(b, q, K)], -1)}
    targets = []
    for n in persons:
        cxcy, wh = 0.2 + 0.6 * torch.rand(n, 2, generator=g), 0.05 + 0.3 * torch.rand(n, 2, generator=g)
        vis = (torch.rand(n, K, generator=g) > 0.3).float()
        targets.append({"labels": torch.ones(n, dtype=torch.int64), "boxes": torch.cat([cxcy, wh], 1),
                        "keypoints": torch.cat([torch.rand(n, 2 * K, generator=g), vis], 1),
                        "area": 0.01 + 0.1 * torch.rand(n, generator=g)})
    return out, targets


def test_batched_costs_and_matches_equal_those_of_each_image_alone():
    from scipy.optimize import linear_sum_assignment
    g = torch.Generator().manual_seed(3)
    m = HungarianMatcher(SIGMAS)
    out, targets = random_batch(g, [3, 0, 1, 5, 2])
    for use_kpts in (True, False):
        batched = m(out, targets, use_keypoints=use_kpts)
        for b, t in enumerate(targets):
            alone = m.cost_matrix(out["pred_logits"][b], out["pred_boxes"][b],
                                  out["pred_keypoints"][b] if use_kpts else None, t)
            assert alone.shape == (12, len(t["labels"]))
            rows, cols = linear_sum_assignment(alone.numpy()) if len(t["labels"]) else ([], [])
            assert batched[b][0].tolist() == list(rows) and batched[b][1].tolist() == list(cols), (b, use_kpts)
    # no person in any image: empty matches, no cost computed
    assert all(len(r) == len(c) == 0 for r, c in m(*random_batch(g, [0, 0]), use_keypoints=True))


def test_batched_cost_matrix_is_the_per_image_one_stacked():
    from clickpose_core.training.matcher import pad_targets
    g = torch.Generator().manual_seed(4)
    m = HungarianMatcher(SIGMAS)
    out, targets = random_batch(g, [2, 4])
    cost = m.cost_matrix(out["pred_logits"], out["pred_boxes"], out["pred_keypoints"], pad_targets(targets))
    assert cost.shape == (2, 12, 4)
    for b, t in enumerate(targets):
        alone = m.cost_matrix(out["pred_logits"][b], out["pred_boxes"][b], out["pred_keypoints"][b], t)
        assert torch.allclose(cost[b, :, :len(t["labels"])], alone, atol=1e-6)
