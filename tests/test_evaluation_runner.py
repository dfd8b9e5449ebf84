"""The evaluation runner end to end on synthetic images: a noisy oracle, and a tiny random Click-Pose."""
from __future__ import annotations

import json

import numpy as np
import pytest

from clickpose_core.config import COCO_SIGMAS
from clickpose_core.evaluation.data import EvalDataset
from clickpose_core.evaluation.plot import plot_ap_vs_clicks
from clickpose_core.evaluation.refiners import ManualCorrection
from clickpose_core.evaluation.report import format_table
from clickpose_core.evaluation.runner import evaluate
from clickpose_core.synth.generator import generate_dataset
from clickpose_core.types import Person


@pytest.fixture(scope="module")
def synth(tmp_path_factory):
    out = tmp_path_factory.mktemp("synth")
    generate_dataset(out, 4, seed=11, width=160, height=192)
    return out


class NoisyOracle:
    """Ground truth plus fixed Gaussian noise and one stray detection per image; a refine round
    puts the clicked joint on the click and halves the error of that person's other joints (a
    stand-in for a model that learns from the click)."""

    name = "oracle"

    def __init__(self, dataset: EvalDataset, noise: float = 6.0):
        self.ds, self.noise = dataset, noise
        self.state: dict[int, dict[int, Person]] = {}
        self.truth: dict[int, np.ndarray] = {}

    def predict(self, image_id, image):
        assert image.dtype == np.uint8 and image.ndim == 3
        t = self.ds.truth(image_id)
        rng = np.random.default_rng(image_id)
        kps = [g[:, :2] + rng.normal(0, self.noise, g[:, :2].shape) for g in t.keypoints]
        kps.append(rng.uniform(0, 100, (t.keypoints.shape[1], 2)))
        people = {}
        for i, k in enumerate(kps):
            people[i] = Person(i, 0.9 - 0.1 * i if i < len(kps) - 1 else 0.05,
                               np.concatenate([k.min(0), k.max(0)]), k, np.zeros(len(k), bool))
        self.truth[image_id] = np.concatenate([t.keypoints[:, :, :2], kps[-1][None]])
        self.state[image_id] = people
        return list(people.values())

    def refine(self, image_id, clicks):
        people = self.state[image_id]
        for c in clicks:
            p = people[c.person]
            target = self.truth[image_id][c.person]
            kp = target + (p.keypoints - target) / 2
            kp[c.joint] = (c.x, c.y)
            clicked = p.clicked.copy()
            clicked[c.joint] = True
            people[c.person] = Person(p.index, p.score, np.concatenate([kp.min(0), kp.max(0)]), kp, clicked)
        return list(people.values())


def test_oracle_runner_end_to_end(synth, tmp_path):
    ds = EvalDataset.from_folder(synth)
    assert ds.image_ids, "synthetic dataset should have annotated people"
    res = evaluate(NoisyOracle(ds), ds, COCO_SIGMAS, ap_clicks=(0, 1, 3), box_clicks=(0, 3), max_rounds=6)
    ap = [res["keypoint_ap"][k]["AP"] for k in ("0", "1", "3")]
    assert ap[0] < ap[1] < ap[2] <= 1.0      # each round strictly improves every matched person
    assert res["images"] == len(ds.image_ids)
    for t in ("NoC@85", "NoC@90", "NoC@95"):
        assert 0 <= res["noc"][t]["noc"] <= 6
    assert res["noc"]["NoC@85"]["noc"] <= res["noc"]["NoC@95"]["noc"]
    for img in res["per_image"]:
        assert img["clicks"][0] == 0 and len(img["ap"]) == len(img["clicks"]) >= 4
    base = evaluate(ManualCorrection(NoisyOracle(ds)), ds, COCO_SIGMAS, ap_clicks=(0, 3), box_clicks=(0,),
                    max_rounds=6)
    # same model output; the refining oracle must beat fixing one joint per click
    assert base["keypoint_ap"]["0"]["AP"] == pytest.approx(res["keypoint_ap"]["0"]["AP"])
    assert base["keypoint_ap"]["3"]["AP"] < res["keypoint_ap"]["3"]["AP"]
    json.loads(json.dumps([res, base]))
    table = format_table([res, base])
    assert "oracle" in table and "model+manual" in table and "NoC@95" in table
    absent = {**res, "box_ap": {"0": {**res["box_ap"]["0"], "AP_L": -1.0}}}    # COCOeval: no large people
    assert "n/a" in format_table([absent]) and "-100.0" not in format_table([absent])
    img = plot_ap_vs_clicks({r["mode"]: [(int(k), v["AP"]) for k, v in r["keypoint_ap"].items()]
                             for r in (res, base)}, tmp_path / "p.png")
    assert (tmp_path / "p.png").stat().st_size > 1000 and img.std() > 10


def test_plot_rejects_empty_input(tmp_path):
    with pytest.raises(ValueError, match="nothing to plot"):
        plot_ap_vs_clicks({"a": []}, tmp_path / "x.png")


def test_tiny_clickpose_runs_all_modes(synth, tmp_path):
    import torch
    from clickpose_core import ClickPoseConfig, build_model
    from clickpose_core.evaluation.refiners import OfficialLoop, PredictorRefiner
    from clickpose_core.predictor import Predictor

    torch.manual_seed(0)
    predictor = Predictor(build_model(ClickPoseConfig.tiny()), cache_size=2)
    ds = EvalDataset.from_folder(synth)
    ids = ds.image_ids[:2]
    sig = predictor.config.sigmas
    for refiner in (PredictorRefiner(predictor, pinned=True), OfficialLoop(predictor),
                    ManualCorrection(PredictorRefiner(predictor, name="model-only"))):
        res = evaluate(refiner, ds, sig, ap_clicks=(0, 2), box_clicks=(0, 2), max_rounds=2, image_ids=ids)
        assert res["images"] == 2
        for k in ("0", "2"):
            assert 0.0 <= res["keypoint_ap"][k]["AP"] <= 1.0
            assert -1.0 <= res["box_ap"][k]["AP_L"] <= 1.0
        for img in res["per_image"]:
            assert len(img["ap"]) == 3 and all(c >= 1 for c in img["clicks"][1:])


def test_official_loop_holds_nothing_and_does_not_reapply_old_clicks(synth):
    """The released loop: a round sets only its own clicks, and the decoder moves them too."""
    from clickpose_core.evaluation.refiners import OfficialLoop
    from clickpose_core.predictor import Predictor
    from clickpose_core.types import Click
    from tests.models import tiny_random_model

    loop = OfficialLoop(Predictor(tiny_random_model(), cache_size=2))
    ds = EvalDataset.from_folder(synth)
    image_id = ds.image_ids[0]
    first = loop.predict(image_id, ds.image(image_id))
    h, w = ds.image(image_id).shape[:2]
    row = first[0].index
    after = {p.index: p for p in loop.refine(image_id, [Click(row, 3, 0.3 * w, 0.6 * h)])}
    assert np.abs(after[row].keypoints[3] - [0.3 * w, 0.6 * h]).max() > 1e-3     # not held
    again = {p.index: p for p in loop.refine(image_id, [Click(row, 5, 0.5 * w, 0.5 * h)])}
    assert not np.allclose(again[row].keypoints[3], [0.3 * w, 0.6 * h])          # not re-applied
