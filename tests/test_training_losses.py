"""Loss terms on hand-made cases with known values."""
import math

import torch

from clickpose_core.training.denoising import DenoisingTargets
from clickpose_core.training.losses import LossWeights, SetCriterion, sigmoid_focal_loss
from clickpose_core.training.matcher import HungarianMatcher

K = 2
SIGMAS = (0.1, 0.1)


def gt():
    return {"labels": torch.tensor([1, 1]), "boxes": torch.tensor([[0.3, 0.3, 0.2, 0.2], [0.7, 0.6, 0.2, 0.4]]),
            "keypoints": torch.tensor([[0.25, 0.25, 0.35, 0.35, 1, 1], [0.7, 0.5, 0.7, 0.7, 1, 0]]),
            "area": torch.tensor([0.04, 0.08])}


def pred_from(t, extra_rows=1):
    """Predictions equal to the targets (rows 0..N-1), plus far-away rows."""
    n = len(t["labels"])
    boxes = torch.cat([t["boxes"], torch.full((extra_rows, 4), 0.05)])
    kp = torch.cat([t["keypoints"][:, :2 * K], torch.full((extra_rows, 2 * K), 0.95)])
    logits = torch.full((n + extra_rows, 2), -20.0)
    logits[:n, 1] = 20.0
    return {"pred_logits": logits[None], "pred_boxes": boxes[None],
            "pred_keypoints": torch.cat([kp, torch.ones(n + extra_rows, K)], -1)[None]}


def criterion():
    return SetCriterion(HungarianMatcher(SIGMAS), num_classes=2)


def test_focal_loss_matches_the_formula():
    x = torch.tensor([-2.0, -0.3, 0.0, 0.7, 3.0])
    y = torch.tensor([0.0, 1.0, 1.0, 0.0, 1.0])
    got = sigmoid_focal_loss(x, y, alpha=0.25, gamma=2.0)
    for xi, yi, gi in zip(x.tolist(), y.tolist(), got.tolist()):
        p = 1 / (1 + math.exp(-xi))
        want = -0.25 * (1 - p) ** 2 * math.log(p) if yi == 1 else -0.75 * p ** 2 * math.log(1 - p)
        assert math.isclose(gi, want, rel_tol=1e-5, abs_tol=1e-7)


def test_set_losses_vanish_when_prediction_equals_target():
    t = gt()
    out = pred_from(t)
    c = criterion()
    matches = c.matcher(out, [t], use_keypoints=True)
    losses = c.set_losses(out, [t], matches, num_persons=2, with_keypoints=True)
    for name in ("loss_bbox", "loss_giou", "loss_keypoints", "loss_oks"):
        assert losses[name].abs() < 1e-5, name
    assert losses["loss_ce"] < 1e-6          # confident and right everywhere


def test_known_values_for_simple_offsets():
    t = gt()
    out = pred_from(t)
    out["pred_boxes"][0, 0, 0] += 0.1                  # person 0: cx + 0.1 (same size boxes, half overlap)
    out["pred_keypoints"][0, 1, 1] += 0.05             # person 1, joint 0: y + 0.05 (labelled)
    out["pred_keypoints"][0, 1, 3] += 0.3              # person 1, joint 1: unlabelled -> no loss
    c = criterion()
    matches = [(torch.tensor([0, 1]), torch.tensor([0, 1]))]
    losses = c.set_losses(out, [t], matches, num_persons=2, with_keypoints=True)
    assert math.isclose(losses["loss_bbox"].item(), 0.1 / 2, rel_tol=1e-5)
    # boxes [0.2,0.4]x[0.2,0.4] vs [0.3,0.5]x[0.2,0.4]: IoU 1/3, hull = union -> GIoU 1/3.
    assert math.isclose(losses["loss_giou"].item(), (1 - 1 / 3) / 2, rel_tol=1e-5)
    assert math.isclose(losses["loss_keypoints"].item(), 0.05 / 2, rel_tol=1e-4)
    sim = math.exp(-0.05 ** 2 / (2 * 0.08 * (2 * 0.1) ** 2))
    assert math.isclose(losses["loss_oks"].item(), (1 - sim) / 2, rel_tol=1e-4)


def test_classification_loss_counts_unmatched_rows_as_background():
    t = gt()
    out = pred_from(t)
    out["pred_logits"] = torch.zeros_like(out["pred_logits"])       # p = 0.5 everywhere
    c = criterion()
    losses = c.set_losses(out, [t], c.matcher(out, [t], True), num_persons=2, with_keypoints=False)
    pos, neg = 0.25 * 0.25 * math.log(2), 0.75 * 0.25 * math.log(2)
    # 3 rows x 2 logits: the 2 matched rows are positive on class 1 only.
    assert math.isclose(losses["loss_ce"].item(), (2 * pos + 4 * neg) / 2, rel_tol=1e-5)


def test_denoising_losses_and_weighted_total():
    t = gt()
    out = pred_from(t, extra_rows=0)
    dn = DenoisingTargets(labels=t["labels"][None], boxes=t["boxes"][None].clone(),
                          keypoints=t["keypoints"][None].clone(), valid=torch.tensor([[True, True]]))
    out["pred_boxes"] = out["pred_boxes"].clone()
    out["pred_boxes"][0, 1, 3] -= 0.2                   # h 0.4 -> 0.2 around the same centre
    losses = criterion().denoising_losses(out, dn, with_keypoints=True)
    # one image of 2 queries: the sum over the batch / (2 queries x 1 image / the official 2)
    assert math.isclose(losses["dn_loss_bbox"].item(), 0.2 / 1, rel_tol=1e-5)
    assert math.isclose(losses["dn_loss_giou"].item(), (1 - 0.5) / 1, rel_tol=1e-5)
    assert losses["dn_loss_keypoints"].abs() < 1e-6
    # the same image twice (the official batch of 2) or 8 times: the same values, as the matched
    # terms (divided by the persons in the batch) are
    for copies in (2, 8):
        many = {k: v.expand(copies, *v.shape[1:]) for k, v in out.items() if k.startswith("pred_")}
        dn_many = DenoisingTargets(*(x.expand(copies, *x.shape[1:]) for x in (dn.labels, dn.boxes, dn.keypoints, dn.valid)))
        again = criterion().denoising_losses(many, dn_many, with_keypoints=True)
        for name in ("dn_loss_ce", "dn_loss_bbox", "dn_loss_giou"):
            assert math.isclose(again[name].item(), losses[name].item(), rel_tol=1e-5), (name, copies)
    w = LossWeights()
    assert w.of("dn_loss_bbox/d3") == 2.5 and w.of("loss_keypoints/r1") == 10.0 and w.of("loss_ce/enc") == 2.0
    total = criterion().total({"dn_loss_bbox/d0": torch.tensor(1.0), "loss_oks/d2": torch.tensor(0.5)})
    assert math.isclose(total.item(), 2.5 + 4.0 * 0.5)
