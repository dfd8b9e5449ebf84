"""Predictor on a tiny random model: sessions, click accumulation, pinning, cache behaviour."""
import logging
import threading

import numpy as np
import pytest
import torch

from clickpose_core import ClickPoseConfig, build_model
from clickpose_core.checkpoint import save_checkpoint
from clickpose_core.predictor import Predictor, SessionNotFound
from clickpose_core.types import Click

H, W = 90, 120


def _model(seed=0):
    torch.manual_seed(seed)
    model = build_model(ClickPoseConfig.tiny())
    # Fresh init leaves some heads at zero (keypoints stuck at box centres); noise makes every
    # output depend on the input so that "this joint moved" is a meaningful check.
    with torch.no_grad():
        for p in model.parameters():
            p.add_(0.05 * torch.randn_like(p))
    return model.eval()


@pytest.fixture(scope="module")
def model():
    return _model()


def _image(seed):
    return np.random.default_rng(seed).integers(0, 256, (H, W, 3), dtype=np.uint8)


def _by_index(persons):
    return {p.index: p for p in persons}


def _assert_boxes_hold_keypoints(persons):
    for p in persons:
        assert (p.box[:2] <= p.keypoints.min(0)).all() and (p.box[2:] >= p.keypoints.max(0)).all()


def _same(a, b, atol=0.0):
    a, b = _by_index(a), _by_index(b)
    assert a.keys() == b.keys()
    for i in a:
        np.testing.assert_allclose(a[i].keypoints, b[i].keypoints, atol=atol, rtol=0)
        np.testing.assert_allclose(a[i].box, b[i].box, atol=atol, rtol=0)
        assert a[i].score == pytest.approx(b[i].score, abs=max(atol, 1e-12))
        assert (a[i].clicked == b[i].clicked).all()


def test_predict_returns_num_select_sorted_persons(model):
    pred = Predictor(model)
    persons = pred.predict("a", _image(0))
    cfg = model.config
    assert sorted(p.index for p in persons) == list(range(cfg.num_select))
    scores = [p.score for p in persons]
    assert scores == sorted(scores, reverse=True) and all(0 < s < 1 for s in scores)
    for p in persons:
        assert p.box.shape == (4,) and p.keypoints.shape == (cfg.num_keypoints, 2)
        assert p.box.dtype == np.float64 and not p.clicked.any()
    _assert_boxes_hold_keypoints(persons)
    assert len({tuple(p.keypoints.ravel().round(6)) for p in persons}) == cfg.num_select


def test_refine_pins_clicked_joint_moves_its_person_and_leaves_the_others(model):
    pred = Predictor(model)
    before = _by_index(pred.predict("a", _image(0)))
    click = Click(1, 9, 33.3, 71.7)
    after = _by_index(pred.refine("a", [click]))
    assert after[1].keypoints[9].tolist() == [33.3, 71.7]  # exactly, in pixels
    held = pred.session("a").state.keypoints[1, 9]  # the model itself kept it (normalised)
    assert torch.allclose(held, torch.tensor([33.3 / W, 71.7 / H]), rtol=0, atol=1e-6)
    assert after[1].clicked.tolist() == [j == 9 for j in range(17)]
    others = np.delete(np.arange(17), 9)
    assert np.abs(after[1].keypoints[others] - before[1].keypoints[others]).max() > 1e-3
    for untouched in (0, 2, 3):   # only clicked persons are refined
        assert np.array_equal(after[untouched].keypoints, before[untouched].keypoints)
        assert np.array_equal(after[untouched].box, before[untouched].box)
    _assert_boxes_hold_keypoints(after.values())


def _all_row_round(model, session, clicks):
    """Reference: one pinned feedback round over every row of the session, from round 0."""
    from clickpose_core.interaction import apply_clicks
    boxes, kpts, pin = apply_clicks(session.round0.boxes, session.round0.keypoints,
                                    [Click(c.person, c.joint, c.x / W, c.y / H) for c in clicks])
    with torch.inference_mode():
        return model.refine(session.memory, boxes[None], kpts[None], pin[None])


def test_refining_clicked_rows_alone_equals_a_round_over_all_rows(model):
    """The product refines only clicked persons; for them it must equal the official all-row round."""
    pred = Predictor(model)
    pred.predict("a", _image(0))
    session = pred.session("a")
    after = _by_index(pred.refine("a", [Click(2, 5, 40.0, 50.0)]))
    full = _all_row_round(model, session, [Click(2, 5, 40.0, 50.0)])
    expected = full["pred_keypoints"][0, 2, :34].reshape(17, 2).double() * torch.tensor([W, H])
    expected[5] = torch.tensor([40.0, 50.0], dtype=torch.float64)
    assert np.allclose(after[2].keypoints, expected.numpy(), atol=1e-3)


def test_a_click_never_lowers_a_persons_score(model):
    """A refined person scores max(detection score, feedback layers' score); the others keep theirs."""
    pred = Predictor(model)
    before = _by_index(pred.predict("a", _image(2)))   # an image where feedback scores go both ways
    session = pred.session("a")
    clicks = [Click(p, 5, 40.0, 50.0) for p in range(4)]
    after = _by_index(pred.refine("a", clicks))
    from clickpose_core.postprocess import person_scores
    feedback = person_scores(_all_row_round(model, session, clicks)["pred_logits"][0].double())
    raised = lowered = 0
    for p in range(4):
        assert after[p].score == pytest.approx(max(before[p].score, float(feedback[p])), abs=1e-6)
        raised += float(feedback[p]) > before[p].score + 1e-6
        lowered += float(feedback[p]) < before[p].score - 1e-6
    assert raised and lowered, "the model must give some feedback scores above and some below"
    for p in set(before) - set(range(4)):
        assert after[p].score == before[p].score
    scores = [q.score for q in pred.refine("a", clicks[:1], replace=True)]
    assert scores == sorted(scores, reverse=True)


def test_unpinned_is_the_official_mode_where_clicked_joints_drift(model):
    pred = Predictor(model)
    pred.predict("a", _image(0))
    out = _by_index(pred.refine("a", [Click(1, 9, 33.3, 71.7)], pinned=False))
    assert out[1].clicked[9]
    assert np.abs(out[1].keypoints[9] - [33.3, 71.7]).max() > 1e-3


def test_clicks_accumulate_and_same_joint_replaces(model):
    pred = Predictor(model)
    pred.predict("a", _image(0))
    pred.refine("a", [Click(0, 0, 10.0, 20.0)])
    pred.refine("a", [Click(2, 5, 50.0, 40.0)])
    out = _by_index(pred.refine("a", [Click(0, 0, 12.5, 22.5)]))
    assert out[0].keypoints[0].tolist() == [12.5, 22.5]
    assert out[2].keypoints[5].tolist() == [50.0, 40.0]
    assert sorted(pred.session("a").clicks) == [(0, 0), (2, 5)]
    assert pred.session("a").clicks[(0, 0)] == Click(0, 0, 12.5, 22.5)


def test_repeating_the_same_click_set_runs_no_extra_round(model):
    pred = Predictor(model)
    pred.predict("a", _image(0))
    first = pred.refine("a", [Click(0, 0, 10.0, 20.0)])
    assert pred.refine("a", [Click(0, 0, 10.0, 20.0)]) is first
    assert pred.refine("a", [Click(0, 0, 10.0, 20.0)], replace=True) is first
    assert pred.refine("a", []) is first


def test_losing_a_click_restarts_from_round_zero(model):
    c1, c2 = Click(0, 0, 10.0, 20.0), Click(2, 5, 50.0, 40.0)
    a = Predictor(model)
    a.predict("x", _image(0))
    a.refine("x", [c1])
    a.refine("x", [c2])
    dropped = a.refine("x", [c2], replace=True)
    b = Predictor(model)
    b.predict("x", _image(0))
    _same(dropped, b.refine("x", [c2]))
    assert list(a.session("x").clicks) == [(2, 5)]
    round0 = b.predict("y", _image(0))
    _same(a.refine("x", [], replace=True), round0)  # no clicks left: back to the detector output


def test_cache_miss_recomputes_to_the_same_answer(model):
    clicks = [Click(1, 3, 40.0, 30.0), Click(4, 16, 100.0, 80.0)]
    warm = Predictor(model, cache_size=1)
    warm.predict("a", _image(0))
    expected = warm.refine("a", clicks)

    cold = Predictor(model, cache_size=1)
    cold.predict("a", _image(0))
    cold.predict("b", _image(1))  # evicts "a"
    assert cold.session("a") is None
    with pytest.raises(SessionNotFound, match="'a'.*pass `image`"):
        cold.refine("a", clicks)
    assert isinstance(SessionNotFound("a"), KeyError)
    calls = []
    loader = lambda: calls.append(1) or _image(0)  # noqa: E731
    _same(cold.refine("a", clicks, image=loader), expected)
    assert calls == [1]
    cold.refine("a", [Click(0, 0, 1.0, 1.0)], image=loader)  # cached now: loader not called
    assert calls == [1]


def test_lru_eviction_and_memory_accounting(model):
    pred = Predictor(model, cache_size=2)
    pred.predict("a", _image(0))
    pred.predict("b", _image(1))
    assert pred.session("a") is not None  # touch "a": "b" is now least recently used
    pred.predict("c", _image(2))
    assert pred.cached_keys() == ["a", "c"]
    s = pred.session("c")
    mem = s.memory.nbytes()
    assert mem > 0 and s.nbytes > mem and pred.cache_bytes("c") == s.nbytes
    assert pred.cache_bytes("b") == 0
    pred.forget("a")
    assert pred.cached_keys() == ["c"]
    with pytest.raises(ValueError, match="cache_size"):
        Predictor(model, cache_size=0)


def test_prefetch_tier_never_evicts_active_sessions(model):
    pred = Predictor(model, cache_size=2, prefetch_size=2)
    pred.predict("a", _image(0))
    pred.refine("a", [Click(0, 0, 10.0, 10.0)])
    pred.predict_batch(["p1", "p2", "p3", "a"], [_image(i) for i in (1, 2, 3, 4)], prefetch=True)
    assert pred.cached_keys() == ["a"] and pred.cached_keys(prefetched=True) == ["p2", "p3"]
    assert pred.session("a").clicks, "a prefetch of an active key keeps the annotator's session and clicks"
    pred.refine("p3", [Click(0, 0, 5.0, 5.0)])           # refining a prefetched session makes it active
    assert pred.cached_keys() == ["a", "p3"] and pred.cached_keys(prefetched=True) == ["p2"]
    none = Predictor(model, cache_size=1)                 # prefetch_size 0: prefetched sessions are not kept
    none.predict_batch(["x"], [_image(5)], prefetch=True)
    assert none.session("x") is None and none.cached_keys(prefetched=True) == []
    with pytest.raises(ValueError, match="prefetch_size"):
        Predictor(model, prefetch_size=-1)


@pytest.mark.parametrize("forward_batch_size", [1, 2])
def test_batch_matches_single_images_of_equal_size(model, forward_batch_size):
    pred = Predictor(model)
    pred.forward_batch_size = forward_batch_size      # 2: one padded forward for both images
    batch = pred.predict_batch(["a", "b"], [_image(0), _image(1)])
    single = Predictor(model)
    for key, img, got in zip("ab", [_image(0), _image(1)], batch):
        _same(got, single.predict(key, img), atol=1e-3)
    # The batch-row session must be usable and own its storage.
    out = pred.refine("b", [Click(0, 0, 5.0, 5.0)])
    _same(out, single.refine("b", [Click(0, 0, 5.0, 5.0)]), atol=1e-3)


def test_predict_accepts_grey_and_rgba_arrays(model):
    pred = Predictor(model)
    grey = _image(0)[:, :, 0]
    _same(pred.predict("g", grey), pred.predict("g3", np.repeat(grey[:, :, None], 3, 2)))
    rgba = np.dstack([_image(0), np.full((H, W), 255, np.uint8)])
    _same(pred.predict("r", rgba), pred.predict("r3", _image(0)))


def test_bad_clicks_are_rejected_and_leave_the_session_alone(model):
    pred = Predictor(model)
    pred.predict("a", _image(0))
    good = pred.refine("a", [Click(0, 0, 10.0, 20.0)])
    with pytest.raises(ValueError, match="person 99"):
        pred.refine("a", [Click(99, 0, 1.0, 1.0)])
    with pytest.raises(ValueError, match="finite"):
        pred.refine("a", [Click(0, 1, float("nan"), 1.0)])
    assert pred.session("a").persons is good and list(pred.session("a").clicks) == [(0, 0)]


def test_clicks_outside_the_image_are_held_at_the_border(model):
    pred = Predictor(model)
    pred.predict("a", _image(0))
    out = _by_index(pred.refine("a", [Click(0, 2, -15.0, H + 40.0)]))
    assert out[0].keypoints[2].tolist() == [0.0, float(H)]


def test_concurrent_refines(model):
    pred = Predictor(model, cache_size=4)
    for key in "abc":
        pred.predict(key, _image(ord(key)))
    errors = []

    def work(key, joint):
        try:
            pred.refine(key, [Click(0, joint, 20.0 + joint, 30.0)])
        except Exception as e:  # noqa: BLE001 — surfaced through `errors`
            errors.append(e)

    threads = [threading.Thread(target=work, args=(k, j)) for k in "abc" for j in (1, 2)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert not errors
    for key in "abc":
        assert sorted(pred.session(key).clicks) == [(0, 1), (0, 2)]


def test_from_checkpoint_matches_the_model_it_was_saved_from(model, tmp_path, caplog):
    path = tmp_path / "tiny.pth"
    save_checkpoint(path, model, {"licence": "Apache-2.0"})
    with caplog.at_level(logging.WARNING, logger="clickpose_core.weights"):
        pred = Predictor.from_checkpoint(str(path))
    assert str(path) in caplog.text and "licence: Apache-2.0" in caplog.text
    assert pred.config == model.config
    assert pred.model_version.startswith("clickpose-custom-tiny@")
    assert pred.weights_info["licence"] == "Apache-2.0" and pred.weights_info["kind"] == "custom"
    _same(pred.predict("a", _image(0)), Predictor(model).predict("a", _image(0)))


def test_from_checkpoint_uses_default_demo_weights(model, tmp_path):
    save_checkpoint(tmp_path / "clickpose_demo_synthetic.pth", model, {"licence": "Apache-2.0"})
    pred = Predictor.from_checkpoint(None, weights_dir=str(tmp_path))
    assert pred.weights_info["kind"] == "demo" and pred.weights_info["licence"] == "Apache-2.0"
    assert pred.model_version.startswith("clickpose-demo@")


def test_from_checkpoint_without_weights_explains(tmp_path):
    with pytest.raises(FileNotFoundError, match="no weights in"):
        Predictor.from_checkpoint(None, weights_dir=str(tmp_path))
