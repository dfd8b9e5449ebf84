"""Our model against the official Click-Pose R50 outputs in ../shared/reference (filled weights)."""
from __future__ import annotations

import numpy as np
import pytest
import torch

from clickpose_core import ClickPoseConfig, build_model
from clickpose_core.interaction import apply_clicks
from clickpose_core.types import Click

from . import parity

pytestmark = pytest.mark.skipif(not parity.fixture_available(),
                                reason=f"parity fixture not found in {parity.REFERENCE_DIR}")

DTYPES = {"f64": (torch.float64, "", 1e-5), "f32": (torch.float32, "_f32", 1e-4)}
CASES = ("r1", "r2", "r2c", "r1m", "r2cm")


def ref(name: str, suffix: str) -> np.ndarray:
    a = parity.arrays()
    return a[name + suffix] if name + suffix in a else a[name]


def max_err(x: torch.Tensor, expected: np.ndarray) -> float:
    assert tuple(x.shape) == expected.shape, (tuple(x.shape), expected.shape)
    return float(np.abs(x.detach().double().numpy() - expected).max())


@pytest.fixture(scope="module", params=list(DTYPES))
def run(request):
    """(dtype tag, suffix, tolerance, model, encoder memory of case A, decode output with aux)."""
    dtype, suffix, tol = DTYPES[request.param]
    model = parity.filled_model(dtype)
    a = parity.arrays()
    with torch.inference_mode():
        mem = model.encode(torch.from_numpy(a["input_image"]).to(dtype), torch.from_numpy(a["input_mask"]))
        out = model.decode(mem, with_aux=True)
    return request.param, suffix, tol, model, mem, out


def test_state_dict_has_the_official_keys_shapes_and_order():
    model = build_model(ClickPoseConfig.r50())
    ours = [(k, tuple(v.shape)) for k, v in model.state_dict().items()]
    assert ours == parity.state_dict_spec()
    assert sum(p.numel() for p in model.parameters()) == 48_299_800  # tied heads counted once


def test_filled_weights_load_strictly_with_tied_heads():
    model = parity.filled_model(torch.float64)
    assert model.bbox_embed[3] is model.transformer.decoder.bbox_embed[3]
    assert model.pose_hw_embed[0] is model.pose_hw_embed[3]   # one MLP for all pose layers
    missing = build_model(ClickPoseConfig.r50()).load_state_dict(parity.filled_state_dict(torch.float32))
    assert not missing.missing_keys and not missing.unexpected_keys


def test_encoder_memory(run):
    tag, suffix, tol, _, mem, _ = run
    if tag == "f64":   # the fixture stores the full memory of the f64 run only
        assert max_err(mem.memory, ref("memory", "")) < tol
    assert max_err(mem.valid_ratios, ref("valid_ratios", "")) == 0.0


def test_two_stage_selection(run):
    tag, suffix, _, _, _, out = run
    idx = out["proposal_index"][0].numpy()
    expected = ref("enc_topk_idx", "")
    if tag == "f64":
        assert (idx == expected).all()
    else:   # near-ties may swap order in float32 (fixture README); the kept set must agree
        assert set(idx.tolist()) == set(expected.tolist())
    assert (out["group_index"][0].numpy() == ref("dec_group_topk_idx", "")).all()


def test_full_forward_every_decoder_layer(run):
    _, suffix, tol, _, _, out = run
    # Box layers hold one row per proposal; put ours in the fixture's proposal order (f32 near-ties).
    position = {int(t): i for i, t in enumerate(out["proposal_index"][0])}
    order = torch.tensor([position[int(t)] for t in ref("enc_topk_idx", "")])
    layers = out["aux_outputs"] + [out]
    for lid, pred in enumerate(layers):
        rows = order if lid < parity.filled_model(torch.float64).config.num_box_decoder_layers else slice(None)
        assert max_err(pred["pred_logits"][:, rows], ref(f"dec_logits_l{lid}", suffix)) < tol, lid
        assert max_err(pred["pred_boxes"][:, rows], ref(f"dec_boxes_l{lid}", suffix)) < tol, lid
        if lid >= 2:
            assert max_err(pred["pred_keypoints"], ref(f"dec_keypoints_l{lid}", suffix)) < tol, lid
    for key in ("pred_logits", "pred_boxes", "pred_keypoints"):
        assert max_err(out[key], ref(key, suffix)) < tol


def test_padded_batch(run):
    """Case B: image A and a smaller image B zero-padded into one batch."""
    _, suffix, tol, model, _, _ = run
    a = parity.arrays()
    dtype = model.transformer.level_embed.dtype
    images = torch.zeros(2, 3, 320, 480, dtype=dtype)
    images[0] = torch.from_numpy(a["input_image"][0])
    images[1, :, :256, :384] = torch.from_numpy(a["b_input_image"][0])
    masks = torch.ones(2, 320, 480, dtype=torch.bool)
    masks[0] = False
    masks[1, :256, :384] = False
    assert (masks[1].numpy() == a["b_input_mask"][0]).all()
    with torch.inference_mode():
        mem = model.encode(images, masks)
        out = model.decode(mem)
    for key in ("pred_logits", "pred_boxes", "pred_keypoints"):
        assert max_err(out[key][:1], ref(key, suffix)) < tol
    for key in ("pred_boxes", "pred_keypoints"):
        assert max_err(out[key][1:], ref("b_" + key, suffix)) < tol
    assert max_err(mem.valid_ratios[1:], ref("b_valid_ratios", "")) == 0.0
    # One refinement round on B's own top-20 with the round-1 click.
    b_mem = mem.select(1)
    top = torch.from_numpy(ref("b_refine_topk_idx", ""))
    boxes, kpts = out["pred_boxes"][1, top], out["pred_keypoints"][1, top, :34].reshape(20, 17, 2)
    p, k, x, y = ref("clicks_round1", "")[0]
    boxes, kpts, _ = apply_clicks(boxes, kpts, [Click(int(p), int(k), float(x), float(y))])
    assert max_err(boxes[None], ref("b_r1_in_boxes", suffix)) < tol
    with torch.inference_mode():
        r = model.refine(b_mem, boxes[None], kpts[None], None)
    assert max_err(r["pred_boxes"], ref("b_r1_boxes", suffix)) < tol
    assert max_err(r["pred_keypoints"], ref("b_r1_keypoints", suffix)) < tol


def case_clicks(case: str) -> list[Click]:
    return [Click(int(p), int(k), float(x), float(y)) for p, k, x, y in parity.meta()["refinement_cases"][case]["clicks"]]


def case_start(case: str, suffix: str, dtype: torch.dtype) -> tuple[torch.Tensor, torch.Tensor]:
    """The state a round starts from: the top-20 of the first pass, or the previous round's output."""
    prev = {"r1": None, "r1m": None, "r2": "r1", "r2c": "r1", "r2cm": "r1m"}[case]
    if prev is None:
        boxes, kpts = ref("r0_boxes", suffix)[0], ref("r0_keypoints", suffix)[0]
    else:
        boxes, kpts = ref(f"{prev}_boxes_l3", suffix)[0], ref(f"{prev}_keypoints_l3", suffix)[0]
    return torch.from_numpy(boxes).to(dtype), torch.from_numpy(kpts[:, :34].reshape(20, 17, 2)).to(dtype)


def test_refinement_input_is_the_top20_of_the_first_pass(run):
    _, suffix, tol, _, _, out = run
    top = out["pred_logits"][0].max(-1)[0].topk(20)[1]
    assert (top.numpy() == ref("refine_topk_idx", "")).all()
    assert max_err(out["pred_boxes"][0, top][None], ref("r0_boxes", suffix)) < tol
    assert max_err(out["pred_keypoints"][0, top][None], ref("r0_keypoints", suffix)) < tol


@pytest.mark.parametrize("case", CASES)
def test_refinement_round(run, case):
    """Click step + the four feedback layers, every layer, official (r1, r2, r2c) and pinned (m)."""
    _, suffix, tol, model, mem, _ = run
    dtype = model.transformer.level_embed.dtype
    boxes, kpts = case_start(case, suffix, dtype)
    boxes, kpts, pinned = apply_clicks(boxes, kpts, case_clicks(case))
    assert max_err(boxes[None], ref(f"{case}_in_boxes", suffix)) < tol
    assert max_err(kpts[None], ref(f"{case}_in_keypoints", suffix)) < tol
    official = case in ("r1", "r2", "r2c")
    assert (pinned.numpy() == (ref(f"{case}_delta_mask", "")[0] == 0)).all() or official
    with torch.inference_mode():
        out = model.refine(mem.for_refinement(), boxes[None], kpts[None], None if official else pinned[None],
                           with_aux=True)
    for lid, pred in enumerate(out["aux_outputs"] + [out]):
        assert max_err(pred["pred_logits"], ref(f"{case}_logits_l{lid}", suffix)) < tol
        assert max_err(pred["pred_boxes"], ref(f"{case}_boxes_l{lid}", suffix)) < tol
        assert max_err(pred["pred_keypoints"], ref(f"{case}_keypoints_l{lid}", suffix)) < tol
    final = out["pred_keypoints"][0, :, :34].reshape(20, 17, 2)
    for c in case_clicks(case):
        moved = float((final[c.person, c.joint] - torch.tensor([c.x, c.y], dtype=dtype)).abs().max())
        if official:
            assert moved > 0.05      # the official loop lets the clicked joint drift
        else:
            assert moved <= (0.0 if dtype == torch.float64 else 1e-7)
