"""Simulated annotator: which joint is clicked, how boxes grow, pinning, round count."""
import torch

from clickpose_core import ClickPoseConfig, build_model
from clickpose_core.training.feedback import _click_round, simulate_feedback, worst_joints
from clickpose_core.training.matcher import HungarianMatcher


def test_worst_joint_is_the_largest_labelled_error():
    gt = torch.zeros(2, 4, 2)
    pred = torch.tensor([[[0.1, 0.0], [0.0, 0.3], [0.5, 0.5], [0.2, 0.0]],
                         [[0.1, 0.1], [0.0, 0.0], [0.0, 0.0], [0.0, 0.0]]])
    vis = torch.tensor([[1.0, 1.0, 0.0, 1.0], [0.0, 0.0, 0.0, 0.0]])
    # Person 0: joint 2 is worst but unlabelled -> joint 1; person 1 has no labelled joint.
    assert worst_joints(pred, gt, vis).tolist() == [1, -1]


def test_click_round_fixes_one_joint_per_matched_person_and_grows_its_box():
    k = 3
    boxes = torch.tensor([[[0.5, 0.5, 0.2, 0.2], [0.2, 0.2, 0.1, 0.1]]])
    xy = torch.tensor([[[[0.45, 0.45], [0.5, 0.5], [0.55, 0.55]], [[0.2, 0.2]] * 3]])
    target = {"keypoints": torch.tensor([[0.45, 0.45, 0.5, 0.5, 0.9, 0.9, 1, 1, 1]])}
    matches = [(torch.tensor([0]), torch.tensor([0]))]
    pinned = torch.zeros(1, 2, k, dtype=torch.bool)
    nb, nxy, npin = _click_round(boxes, xy, pinned, [target], matches, k)
    assert torch.allclose(nxy[0, 0, 2], torch.tensor([0.9, 0.9]))          # the worst joint, now exact
    assert torch.equal(nxy[0, 0, :2], xy[0, 0, :2]) and torch.equal(nxy[0, 1], xy[0, 1])
    assert npin[0].tolist() == [[False, False, True], [False, False, False]]
    # Box (xyxy 0.4..0.6) grows to hold the joint at 0.9: 0.4..0.9.
    assert torch.allclose(nb[0, 0], torch.tensor([0.65, 0.65, 0.5, 0.5]))
    assert torch.equal(nb[0, 1], boxes[0, 1])                               # unmatched row untouched


def _setup():
    torch.manual_seed(0)
    cfg = ClickPoseConfig.tiny(num_keypoints=3)
    model = build_model(cfg)
    for mlp in model.pose_embed:        # freshly built heads predict zero moves; make them move joints
        torch.nn.init.normal_(mlp.layers[-1].weight, std=0.5)
    images, masks = torch.randn(1, 3, 128, 128), torch.zeros(1, 128, 128, dtype=torch.bool)
    target = {"labels": torch.tensor([1]), "boxes": torch.tensor([[0.5, 0.5, 0.4, 0.6]]),
              "keypoints": torch.tensor([[0.45, 0.3, 0.55, 0.3, 0.5, 0.7, 1, 1, 1]]), "area": torch.tensor([0.2])}
    mem = model.encode(images, masks)
    return cfg, model, mem, model.decode(mem), [target]


def test_pinned_training_rounds_hold_every_clicked_joint():
    cfg, model, mem, out, targets = _setup()
    matcher = HungarianMatcher(cfg.sigmas)
    layers = simulate_feedback(model, mem, out, targets, matcher, torch.Generator().manual_seed(0),
                               pin=True, rounds=3)
    assert len(layers) == cfg.num_pose_layers
    last = layers[-1]
    assert last["pred_keypoints"].shape == (1, cfg.num_select, 9)
    assert last["pred_keypoints"].requires_grad
    # 3 rounds, one click each on the matched row -> all 3 joints of that row are exact.
    gt = targets[0]["keypoints"][0, :6].view(3, 2)
    rows = [r for r in range(cfg.num_select)
            if torch.allclose(last["pred_keypoints"][0, r, :6].view(3, 2), gt, atol=1e-5)]
    assert len(rows) == 1
    unpinned = simulate_feedback(model, mem, out, targets, matcher, torch.Generator().manual_seed(0),
                                 pin=False, rounds=3)[-1]
    assert not torch.allclose(unpinned["pred_keypoints"][0, rows[0], :6].view(3, 2), gt, atol=1e-5)


def test_round_count_is_drawn_when_not_given():
    cfg, model, mem, out, targets = _setup()
    matcher = HungarianMatcher(cfg.sigmas)
    with torch.no_grad():
        layers = simulate_feedback(model, mem, out, targets, matcher, torch.Generator().manual_seed(3))
    assert len(layers) == cfg.num_pose_layers and not layers[-1]["pred_boxes"].requires_grad
