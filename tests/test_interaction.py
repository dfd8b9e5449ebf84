"""The click step: clicked joints move, clicked rows' boxes grow, nothing else changes."""
import os

import numpy as np
import pytest
import torch

from tests import parity
from clickpose_core.interaction import apply_clicks, grow_boxes_to_keypoints
from clickpose_core.postprocess import box_cxcywh_to_xyxy
from clickpose_core.types import Click

FIXTURE = str(parity.REFERENCE_DIR / "clickpose_parity.npz")


def _state(rows=4, k=5, dtype=torch.float32, seed=0):
    g = torch.Generator().manual_seed(seed)
    kpts = 0.4 + 0.2 * torch.rand(rows, k, 2, generator=g, dtype=dtype)
    boxes = torch.tensor([[0.5, 0.5, 0.3, 0.3]], dtype=dtype).repeat(rows, 1)
    return boxes, kpts


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64, torch.float16])
def test_click_moves_joint_grows_box_and_leaves_other_rows(dtype):
    boxes, kpts = _state(dtype=dtype)
    b0, k0 = boxes.clone(), kpts.clone()
    nb, nk, pin = apply_clicks(boxes, kpts, [Click(1, 3, 0.05, 0.9)])
    assert torch.equal(boxes, b0) and torch.equal(kpts, k0)  # caller's tensors untouched
    assert nb.dtype == nk.dtype == dtype
    assert nk[1, 3].tolist() == [torch.tensor(0.05, dtype=dtype).item(), torch.tensor(0.9, dtype=dtype).item()]
    assert torch.equal(nk[[0, 2, 3]], k0[[0, 2, 3]]) and torch.equal(nb[[0, 2, 3]], b0[[0, 2, 3]])
    x0, y0, x1, y1 = box_cxcywh_to_xyxy(nb[1]).tolist()
    tol = 1e-3 if dtype == torch.float16 else 1e-6
    assert x0 == pytest.approx(0.05, abs=tol) and y1 == pytest.approx(0.9, abs=tol)
    assert y0 == pytest.approx(0.35, abs=tol) and x1 == pytest.approx(0.65, abs=tol)  # old sides kept
    assert pin.dtype == torch.bool and pin.sum() == 1 and pin[1, 3]


def test_box_grows_to_all_keypoints_of_the_row_not_just_the_click():
    boxes = torch.tensor([[0.5, 0.5, 0.1, 0.1]])
    kpts = torch.tensor([[[0.5, 0.5], [0.9, 0.5], [0.5, 0.5]]])  # joint 1 already outside the box
    nb, _, _ = apply_clicks(boxes, kpts, [Click(0, 0, 0.5, 0.2)])
    assert box_cxcywh_to_xyxy(nb[0]).tolist() == pytest.approx([0.45, 0.2, 0.9, 0.55])


def test_box_never_shrinks():
    boxes = torch.tensor([[0.5, 0.5, 0.8, 0.8]])
    kpts = torch.full((1, 3, 2), 0.5)
    nb, _, _ = apply_clicks(boxes, kpts, [Click(0, 1, 0.6, 0.6)])
    assert torch.allclose(nb, boxes)


def test_later_click_on_same_joint_wins_and_pinned_accumulates():
    boxes, kpts = _state()
    prior = torch.zeros(4, 5, dtype=torch.bool)
    prior[0, 0] = True
    _, nk, pin = apply_clicks(boxes, kpts, [Click(2, 1, 0.1, 0.1), Click(2, 1, 0.3, 0.7)], prior)
    assert nk[2, 1].tolist() == pytest.approx([0.3, 0.7])
    assert pin.nonzero().tolist() == [[0, 0], [2, 1]]
    assert not prior[2, 1]  # the caller's pinned mask is not modified


def test_no_clicks_is_identity():
    boxes, kpts = _state()
    nb, nk, pin = apply_clicks(boxes, kpts, [])
    assert torch.equal(nb, boxes) and torch.equal(nk, kpts) and not pin.any()


@pytest.mark.parametrize("click, needle", [
    (Click(4, 0, 0.5, 0.5), "person 4 is out of range 0..3"),
    (Click(-1, 0, 0.5, 0.5), "person -1"),
    (Click(0, 5, 0.5, 0.5), "joint 5 is out of range 0..4"),
    (Click(0, 0, float("nan"), 0.5), "finite"),
    (Click(0, 0, 0.5, float("inf")), "finite"),
    (Click(0.0, 0, 0.5, 0.5), "integers"),
])
def test_invalid_clicks_are_named(click, needle):
    boxes, kpts = _state()
    with pytest.raises(ValueError, match="click 1 .*" + needle):
        apply_clicks(boxes, kpts, [Click(0, 0, 0.5, 0.5), click])


def test_shape_errors():
    boxes, kpts = _state()
    with pytest.raises(ValueError, match="boxes must be"):
        apply_clicks(boxes[None], kpts, [])
    with pytest.raises(ValueError, match="keypoints must be"):
        apply_clicks(boxes, kpts[:2], [])
    with pytest.raises(ValueError, match="pinned must be"):
        apply_clicks(boxes, kpts, [], torch.zeros(4, 5))


def test_grow_boxes_batched():
    boxes = torch.tensor([[0.5, 0.5, 0.2, 0.2], [0.5, 0.5, 0.2, 0.2]])
    kpts = torch.tensor([[[0.5, 0.5]], [[0.0, 1.0]]])
    out = box_cxcywh_to_xyxy(grow_boxes_to_keypoints(boxes, kpts))
    assert out.flatten().tolist() == pytest.approx([0.4, 0.4, 0.6, 0.6, 0.0, 0.4, 0.6, 1.0])


@pytest.mark.parametrize("suffix", ["", "_f32"])
def test_matches_official_click_step_bit_for_bit(suffix):
    if not os.path.exists(FIXTURE):
        pytest.skip("parity fixture not available")
    z = np.load(FIXTURE)
    c1, c2 = Click(2, 9, 0.31, 0.62), Click(7, 0, 0.55, 0.40)
    cases = {"r1": ("r0_boxes", "r0_keypoints", [c1]), "r2": ("r1_boxes_l3", "r1_keypoints_l3", [c2]),
             "r2c": ("r1_boxes_l3", "r1_keypoints_l3", [c1, c2]),
             "r2cm": ("r1m_boxes_l3", "r1m_keypoints_l3", [c1, c2])}
    for case, (b, k, clicks) in cases.items():
        boxes = torch.from_numpy(z[b + suffix][0])
        kpts = torch.from_numpy(z[k + suffix][0][:, :34]).reshape(20, 17, 2)
        nb, nk, pin = apply_clicks(boxes, kpts, clicks)
        assert np.array_equal(nb.numpy(), z[f"{case}_in_boxes{suffix}"][0]), case
        assert np.array_equal(nk.numpy(), z[f"{case}_in_keypoints{suffix}"][0]), case
    # The masked (intended) variant zeroes delta_mask exactly where we pin.
    _, _, pin = apply_clicks(torch.from_numpy(z["r0_boxes"][0]),
                             torch.from_numpy(z["r0_keypoints"][0][:, :34]).reshape(20, 17, 2), [c1])
    assert np.array_equal(pin.numpy(), z["r1m_delta_mask"][0] == 0)
