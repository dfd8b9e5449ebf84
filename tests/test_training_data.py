"""Training data: left/right-aware flips, resizing, targets, loading a COCO file."""
import numpy as np
import pytest
import torch

from clickpose_core import ClickPoseConfig
from clickpose_core.config import COCO_FLIP_INDEX, COCO_KEYPOINT_NAMES
from clickpose_core.training.data import CocoKeypoints, Sample, collate, hflip, resize, to_target, train_scales

from .test_training_engine import make_synth


def sample_with_left_wrist(w=100, h=80):
    kpts = np.zeros((1, 17, 3), np.float32)
    lw, rw, nose = (COCO_KEYPOINT_NAMES.index(n) for n in ("left_wrist", "right_wrist", "nose"))
    kpts[0, lw] = (10, 20, 2)
    kpts[0, rw] = (40, 22, 1)
    kpts[0, nose] = (25, 5, 2)
    image = np.zeros((h, w, 3), np.uint8)
    image[:, :50] = 255                                  # left half white
    return Sample(image, np.array([[5, 2, 45, 70]], np.float32), kpts, np.array([900.0], np.float32), 7), lw, rw, nose


def test_flip_swaps_left_and_right_and_mirrors_x():
    s, lw, rw, nose = sample_with_left_wrist()
    f = hflip(s, COCO_FLIP_INDEX)
    # The person's left wrist was at x=10; mirrored it is at 90 and, seen in the mirror, it is the right wrist.
    assert f.keypoints[0, rw].tolist() == [90, 20, 2]
    assert f.keypoints[0, lw].tolist() == [60, 22, 1]
    assert f.keypoints[0, nose].tolist() == [75, 5, 2]
    unlabelled = [k for k in range(17) if k not in (lw, rw, nose)]
    assert (f.keypoints[0, unlabelled] == 0).all()       # placeholders stay (0, 0, 0)
    assert f.boxes.tolist() == [[55, 2, 95, 70]]
    assert f.image[0, 99, 0] == 255 and f.image[0, 0, 0] == 0
    assert np.array_equal(hflip(f, COCO_FLIP_INDEX).keypoints, s.keypoints)   # flipping twice is identity


def test_resize_scales_geometry_and_area():
    s, lw, _, _ = sample_with_left_wrist(w=100, h=80)
    r = resize(s, short_side=40, max_size=1000)
    assert r.image.shape[:2] == (40, 50)
    assert np.allclose(r.keypoints[0, lw], [5, 10, 2])
    assert np.allclose(r.boxes, [[2.5, 1, 22.5, 35]])
    assert np.isclose(r.area[0], 900 / 4)


def test_targets_are_normalised_cxcywh_with_binary_visibility():
    s, lw, rw, _ = sample_with_left_wrist(w=100, h=80)
    t = to_target(s, 17)
    assert torch.allclose(t["boxes"], torch.tensor([[0.25, 0.45, 0.4, 0.85]]))
    assert torch.allclose(t["keypoints"][0, 2 * lw:2 * lw + 2], torch.tensor([0.1, 0.25]))
    vis = t["keypoints"][0, 34:]
    assert vis[lw] == 1 and vis[rw] == 1 and vis.sum() == 3
    assert torch.isclose(t["area"][0], torch.tensor(900 / 8000))
    assert t["labels"].tolist() == [1]


def test_train_scales_follow_the_official_ratios():
    assert train_scales(ClickPoseConfig.r50()) == list(range(480, 801, 32))
    scales = train_scales(ClickPoseConfig.small())
    assert scales[0] == round(256 * 0.6) and scales[-1] == 256


@pytest.fixture(scope="module")
def synth(tmp_path_factory):
    return make_synth(tmp_path_factory, "synth", 3, seed=11)


def test_dataset_loads_batches_and_augments_reproducibly(synth):
    cfg = ClickPoseConfig.tiny()
    ds = CocoKeypoints(*synth, cfg, train=True, seed=3)
    a, b = ds[1], ds[1]
    assert torch.equal(a[0], b[0]) and torch.equal(a[1]["keypoints"], b[1]["keypoints"])
    assert min(a[0].shape[1:]) in train_scales(cfg)
    images, masks, targets = collate([ds[0], ds[1], ds[2]])
    assert images.shape[0] == 3 and masks.shape == (3, *images.shape[2:])
    for (img, _), m in zip([ds[0], ds[1], ds[2]], masks):
        assert (~m).sum() == img.shape[1] * img.shape[2]   # mask marks exactly the padding
    k = cfg.num_keypoints
    for t in targets:
        xy = t["keypoints"][:, :2 * k].view(-1, k, 2)
        vis = t["keypoints"][:, 2 * k:]
        assert ((xy >= 0) & (xy <= 1)).all() and set(vis.unique().tolist()) <= {0.0, 1.0}
    val = CocoKeypoints(*synth, cfg, train=False)
    assert min(val[0][0].shape[1:]) == cfg.min_size
