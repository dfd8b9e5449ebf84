"""The official eval transform: sizes, resize, normalisation, padding, output scaling."""
import os

import numpy as np
import pytest
import torch
from PIL import Image

from tests import parity
from clickpose_core.config import ClickPoseConfig
from clickpose_core.postprocess import (coco_postprocess, person_scores, select_top,
                                        split_keypoints, to_pixels)
from clickpose_core.preprocess import (get_size_with_aspect_ratio, normalize, pad_batch,
                                       preprocess, resize)

FIXTURE = str(parity.REFERENCE_DIR / "clickpose_parity.npz")


@pytest.mark.parametrize("w, h, expected", [
    (640, 480, (800, 1066)),     # long side truncated by int(): 1066.67 -> 1066
    (480, 640, (1066, 800)),
    (800, 1000, (1000, 800)),    # short side already 800: unchanged
    (2000, 500, (333, 1332)),    # long side capped: size = round(333.25) = 333
    (2666, 5, (2, 1066)),        # round(2.5) is 2 in Python (banker's rounding), as upstream
    (2666, 3, (2, 1777)),        # round(1.5) = 2, and the long side may then exceed max_size
])
def test_official_size_rule(w, h, expected):
    assert get_size_with_aspect_ratio(w, h, 800, 1333) == expected


def test_size_rule_without_max_size():
    assert get_size_with_aspect_ratio(4000, 1000, 800, None) == (800, 3200)


def test_resize_shape_and_content():
    img = np.full((480, 640, 3), 77, np.uint8)
    out = resize(img, 800, 1333)
    assert out.shape == (800, 1066, 3) and out.dtype == np.uint8
    assert (out == 77).all()  # bilinear keeps a constant image constant
    same = np.zeros((800, 900, 3), np.uint8)
    assert resize(same, 800, 1333) is same


def test_resize_is_pil_bilinear():
    rng = np.random.default_rng(1)
    img = rng.integers(0, 256, (30, 50, 3), dtype=np.uint8)
    out = resize(img, 12, 100)
    ref = np.asarray(Image.fromarray(img).resize((20, 12), Image.BILINEAR))
    np.testing.assert_array_equal(out, ref)


def test_normalize_is_totensor_then_normalize_in_float32():
    img = np.array([[[0, 128, 255]]], np.uint8)
    out = normalize(img, (0.485, 0.456, 0.406), (0.229, 0.224, 0.225))
    assert out.shape == (3, 1, 1) and out.dtype == torch.float32
    x = np.array([0, 128, 255], np.float32) / np.float32(255)
    ref = (x - np.array([0.485, 0.456, 0.406], np.float32)) / np.array([0.229, 0.224, 0.225], np.float32)
    np.testing.assert_array_equal(out.flatten().numpy(), ref)
    assert normalize(img, (0.5,) * 3, (0.5,) * 3, torch.float64).dtype == torch.float64


def test_pad_batch_zero_pads_bottom_right_and_masks_padding():
    a, b = torch.randn(3, 4, 6), torch.randn(3, 5, 3)
    images, masks = pad_batch([a, b])
    assert images.shape == (2, 3, 5, 6) and masks.shape == (2, 5, 6) and masks.dtype == torch.bool
    assert torch.equal(images[0, :, :4], a) and (images[0, :, 4:] == 0).all()
    assert torch.equal(images[1, :, :, :3], b) and (images[1, :, :, 3:] == 0).all()
    assert masks[0].sum() == 6 and masks[0, 4].all() and not masks[0, :4].any()
    assert masks[1].sum() == 15 and masks[1, :, 3:].all() and not masks[1, :, :3].any()


def test_pad_batch_matches_official_fixture():
    if not os.path.exists(FIXTURE):
        pytest.skip("parity fixture not available")
    z = np.load(FIXTURE)
    a, b = torch.from_numpy(z["input_image"][0]), torch.from_numpy(z["b_input_image"][0])
    images, masks = pad_batch([a, b])
    assert torch.equal(masks[1], torch.from_numpy(z["b_input_mask"][0]))
    assert not masks[0].any()


def test_preprocess_batch_records_sizes():
    cfg = ClickPoseConfig.tiny()
    imgs = [np.zeros((100, 200, 3), np.uint8), np.zeros((300, 150, 3), np.uint8)]
    batch = preprocess(imgs, cfg)
    assert batch.sizes == [(100, 200), (300, 150)]
    # tiny: min_size 128, max_size 192 -> (96, 192) and (192, 96)
    assert batch.resized == [(96, 192), (192, 96)]
    assert batch.images.shape == (2, 3, 192, 192) and batch.masks.shape == (2, 192, 192)
    assert (~batch.masks[0]).sum() == 96 * 192 and (~batch.masks[1]).sum() == 192 * 96


@pytest.mark.parametrize("bad", [np.zeros((4, 4), np.uint8), np.zeros((4, 4, 3), np.float32),
                                 np.zeros((0, 4, 3), np.uint8), "img.png"])
def test_preprocess_rejects_bad_images(bad):
    with pytest.raises(ValueError, match="image 0"):
        preprocess([bad], ClickPoseConfig.tiny())


def test_select_top_and_pixels():
    logits = torch.tensor([[[0.0, -1.0], [3.0, -5.0], [-2.0, 1.0]]])  # best: group 1, then 2, then 0
    boxes = torch.tensor([[[0.5, 0.5, 0.2, 0.2], [0.25, 0.5, 0.5, 1.0], [0.1, 0.1, 0.1, 0.1]]])
    kpts = torch.tensor([[[0.1, 0.2, 0.3, 0.4, 0.7, 0.7], [0.5, 0.5, 1.0, 1.0, 0.7, 0.7],
                          [0.0, 0.0, 0.0, 0.0, 0.7, 0.7]]])
    top = select_top({"pred_logits": logits, "pred_boxes": boxes, "pred_keypoints": kpts}, 2)
    assert top["index"].tolist() == [[1, 2]]
    xy = split_keypoints(top["pred_keypoints"], 2)
    assert xy.shape == (1, 2, 2, 2) and xy[0, 0].tolist() == [[0.5, 0.5], [1.0, 1.0]]
    box_px, kp_px = to_pixels(top["pred_boxes"][0], xy[0], (100, 200))  # H=100, W=200
    assert box_px[0].tolist() == [0.0, 0.0, 100.0, 100.0]
    assert kp_px[0].tolist() == [[100.0, 50.0], [200.0, 100.0]]
    assert torch.allclose(person_scores(top["pred_logits"][0]), torch.sigmoid(torch.tensor([3.0, 1.0])))
    with pytest.raises(ValueError, match="3 \\* num_keypoints"):
        split_keypoints(kpts, 3)


def test_coco_postprocess_flattens_group_and_class():
    logits = torch.tensor([[[4.0, 3.0], [0.0, -1.0]]])  # group 0 appears twice in the top-2
    boxes = torch.tensor([[[0.5, 0.5, 1.0, 1.0], [0.2, 0.2, 0.1, 0.1]]])
    kpts = torch.tensor([[[0.5, 0.25, 0.7], [0.1, 0.1, 0.7]]])
    (res,) = coco_postprocess({"pred_logits": logits, "pred_boxes": boxes, "pred_keypoints": kpts},
                              torch.tensor([[10, 20]]), num_select=2, num_keypoints=1)
    assert res["labels"].tolist() == [0, 1]
    assert res["boxes"].tolist() == [[0, 0, 20, 10], [0, 0, 20, 10]]
    assert res["keypoints"][0].tolist() == pytest.approx([10.0, 2.5, 0.7])
