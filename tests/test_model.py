"""Properties of the network that the parity fixture does not cover: small configs, padding,
group independence of the refinement, pinning, memory handling and errors."""
from __future__ import annotations

import pytest
import torch

from clickpose_core import ClickPoseConfig, build_model
from clickpose_core.model.deformable_attention import LevelLayout, deformable_sample, deformable_sample_reference


def tiny_model(num_keypoints: int = 17, seed: int = 0):
    torch.manual_seed(seed)
    model = build_model(ClickPoseConfig.tiny(num_keypoints)).double().eval()
    # Non-trivial heads: the official init zeroes the last layers, which would hide bugs.
    with torch.no_grad():
        for p in model.parameters():
            p.add_(torch.randn_like(p) * 0.05)
    return model


def random_batch(b=2, h=96, w=128, seed=1):
    g = torch.Generator().manual_seed(seed)
    return torch.randn(b, 3, h, w, generator=g, dtype=torch.float64), torch.zeros(b, h, w, dtype=torch.bool)


@pytest.mark.parametrize("dtype", [torch.float64, torch.float32])
def test_deformable_sampling_equals_grid_sample_including_outside_points(dtype):
    g = torch.Generator().manual_seed(0)
    layout = LevelLayout(torch.tensor([[12, 17], [6, 9], [3, 5], [2, 3]]))
    values = torch.randn(2, 4, layout.num_tokens, 8, generator=g, dtype=dtype)
    loc = torch.rand(2, 3000, 4, 4, 3, 2, generator=g, dtype=dtype) * 1.4 - 0.2   # many samples off the map
    weights = torch.rand(2, 3000, 4, 4, 3, generator=g, dtype=dtype)
    table = layout.pad(values)
    assert torch.equal(layout.unpad(table), values)
    fast = deformable_sample(table, layout, loc, weights)
    slow = deformable_sample_reference(table, layout, loc, weights)
    assert torch.allclose(fast, slow, atol=1e-12 if dtype == torch.float64 else 2e-5)


def test_deformable_sampling_is_differentiable():
    g = torch.Generator().manual_seed(0)
    layout = LevelLayout(torch.tensor([[5, 6], [3, 3]]))
    values = torch.randn(1, 2, layout.num_tokens, 3, generator=g, dtype=torch.float64, requires_grad=True)
    loc = (torch.rand(1, 6, 2, 2, 2, 2, generator=g, dtype=torch.float64) * 1.2 - 0.1).requires_grad_()
    weights = torch.rand(1, 6, 2, 2, 2, generator=g, dtype=torch.float64, requires_grad=True)
    assert torch.autograd.gradcheck(lambda v, l, w: deformable_sample(layout.pad(v), layout, l, w),
                                    (values, loc, weights))


@pytest.mark.parametrize("k", [17, 5])
def test_output_layout_follows_the_config(k):
    model = tiny_model(k)
    images, masks = random_batch()
    with torch.no_grad():
        mem = model.encode(images, masks)
        out = model.decode(mem)
    g = model.config.num_group
    assert out["pred_logits"].shape == (2, g, 2)
    assert out["pred_boxes"].shape == (2, g, 4)
    assert out["pred_keypoints"].shape == (2, g, 3 * k)
    assert ((out["pred_keypoints"][..., :2 * k] > 0) & (out["pred_keypoints"][..., :2 * k] < 1)).all()
    assert torch.allclose(out["pred_keypoints"][..., 2 * k:], torch.sigmoid(torch.tensor(1.0, dtype=torch.float64)))


def test_an_image_gives_the_same_answer_alone_and_padded_in_a_batch():
    model = tiny_model()
    small, _ = random_batch(1, 64, 96, seed=3)
    big, _ = random_batch(1, 96, 128, seed=4)
    images = torch.zeros(2, 3, 96, 128, dtype=torch.float64)
    images[0], images[1, :, :64, :96] = big[0], small[0]
    masks = torch.ones(2, 96, 128, dtype=torch.bool)
    masks[0], masks[1, :64, :96] = False, False
    with torch.no_grad():
        batched = model.decode(model.encode(images, masks))
        alone = model.decode(model.encode(big, masks[:1]))
    for key in alone:
        assert torch.allclose(batched[key][:1], alone[key], atol=1e-10)


def refine_inputs(model, out, rows):
    k = model.config.num_keypoints
    return (out["pred_boxes"][:, rows], out["pred_keypoints"][:, rows, :2 * k].reshape(1, len(rows), k, 2))


def test_refinement_rows_are_independent():
    """Groups only attend to themselves: refining a row alone or with others gives the same row.
    The predictor relies on this to refine only the persons that were clicked."""
    model = tiny_model()
    images, masks = random_batch(1)
    with torch.no_grad():
        mem = model.encode(images, masks)
        out = model.decode(mem)
        together = model.refine(mem, *refine_inputs(model, out, [0, 1, 2, 3]))
        alone = model.refine(mem, *refine_inputs(model, out, [2]))
    for key in together:
        assert torch.allclose(together[key][:, 2:3], alone[key], atol=1e-12)


def test_pinned_keypoints_stay_and_others_move():
    model = tiny_model()
    images, masks = random_batch(1)
    with torch.no_grad():
        mem = model.encode(images, masks)
        out = model.decode(mem)
        boxes, kpts = refine_inputs(model, out, [0, 1])
        kpts = kpts.clone()
        kpts[0, 1, 4] = torch.tensor([0.37, 0.61], dtype=torch.float64)
        pinned = torch.zeros(1, 2, 17, dtype=torch.bool)
        pinned[0, 1, 4] = True
        free = model.refine(mem, boxes, kpts, None)["pred_keypoints"][..., :34].reshape(1, 2, 17, 2)
        held = model.refine(mem, boxes, kpts, pinned)["pred_keypoints"][..., :34].reshape(1, 2, 17, 2)
    assert torch.equal(held[0, 1, 4], kpts[0, 1, 4]) or torch.allclose(held[0, 1, 4], kpts[0, 1, 4], atol=1e-15)
    assert not torch.allclose(free[0, 1, 4], kpts[0, 1, 4], atol=1e-4)
    others = torch.ones(17, dtype=torch.bool)
    others[4] = False
    assert (held[0, 1, others] - kpts[0, 1, others]).abs().max() > 1e-4


def test_reduced_memory_refines_identically_and_is_smaller():
    model = tiny_model()
    images, masks = random_batch(2)
    with torch.no_grad():
        mem = model.encode(images, masks)
        out = model.decode(mem)
        row = mem.select(1)
        boxes, kpts = out["pred_boxes"][1:, :3], out["pred_keypoints"][1:, :3, :34].reshape(1, 3, 17, 2)
        a = model.refine(row, boxes, kpts)
        b = model.refine(row.for_refinement(), boxes, kpts)
    assert all(torch.equal(a[k], b[k]) for k in a)
    assert row.for_refinement().nbytes() < row.nbytes() < mem.nbytes()
    with pytest.raises(ValueError, match="for_refinement"):
        model.decode(row.for_refinement())


def test_bad_shapes_get_clear_errors():
    model = tiny_model()
    images, masks = random_batch(1)
    with pytest.raises(ValueError, match=r"masks \[B,H,W\]"):
        model.encode(images, masks[:, :10])
    with torch.no_grad():
        mem = model.encode(images, masks)
    with pytest.raises(ValueError, match="keypoints"):
        model.refine(mem, torch.rand(1, 2, 4), torch.rand(1, 2, 16, 2))
    with pytest.raises(ValueError, match="pinned"):
        model.refine(mem, torch.rand(1, 2, 4), torch.rand(1, 2, 17, 2), torch.zeros(1, 2, 5, dtype=torch.bool))


def test_config_rejects_inconsistent_settings():
    with pytest.raises(ValueError, match="keypoint_names"):
        ClickPoseConfig(num_keypoints=5)
    with pytest.raises(ValueError, match="num_select"):
        ClickPoseConfig(num_select=60)
    cfg = ClickPoseConfig.small()
    assert ClickPoseConfig.from_dict(cfg.to_dict()) == cfg
    with pytest.raises(ValueError, match="unknown"):
        ClickPoseConfig.from_dict({**cfg.to_dict(), "bogus": 1})


def test_one_training_step_reaches_every_trainable_parameter():
    torch.manual_seed(0)
    model = build_model(ClickPoseConfig.tiny()).train()
    images, masks = random_batch(1)
    out = model.decode(model.encode(images.float(), masks), with_aux=True)
    k = model.config.num_keypoints
    boxes, kpts = out["pred_boxes"][:, :2].detach(), out["pred_keypoints"][:, :2, :2 * k].detach().reshape(1, 2, k, 2)
    mem = model.encode(images.float(), masks)
    ref = model.refine(mem, boxes, kpts)
    loss = sum(p[key].sum() for p in [out, *out["aux_outputs"], out["interm_outputs"], ref]
               for key in ("pred_logits", "pred_boxes", "pred_keypoints"))
    loss.backward()
    # Frozen BN buffers are not parameters; keypoint_embed and the label embeddings are reached.
    unreached = [n for n, p in model.named_parameters() if p.grad is None]
    assert unreached == ["label_enc.weight"] or unreached == []
