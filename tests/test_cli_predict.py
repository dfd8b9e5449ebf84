"""`clickpose predict` end to end on a tiny saved model."""
import json

import cv2
import numpy as np
import pytest
import torch
from PIL import Image

from clickpose_core import ClickPoseConfig, build_model
from clickpose_core.checkpoint import save_checkpoint
from clickpose_core.cli import main
from clickpose_core.visualize import draw_persons


@pytest.fixture(scope="module")
def weights(tmp_path_factory):
    torch.manual_seed(0)
    model = build_model(ClickPoseConfig.tiny())
    with torch.no_grad():
        for p in model.parameters():
            p.add_(0.05 * torch.randn_like(p))
    path = tmp_path_factory.mktemp("w") / "tiny.pth"
    save_checkpoint(path, model, {"licence": "test-only"})
    return str(path)


def _write_image(path, h=80, w=100, seed=0):
    rgb = np.random.default_rng(seed).integers(0, 256, (h, w, 3), dtype=np.uint8)
    Image.fromarray(rgb).save(path)
    return rgb


def test_predict_writes_json_and_png(tmp_path, weights, capsys):
    a = _write_image(tmp_path / "a.png")
    (tmp_path / "sub").mkdir()
    _write_image(tmp_path / "sub" / "a.png", h=60, w=70, seed=1)  # same name, other folder
    out = tmp_path / "out"
    rc = main(["predict", str(tmp_path / "a.png"), str(tmp_path / "sub" / "a.png"),
               "--weights", weights, "--out", str(out), "--score-threshold", "0"])
    assert rc == 0
    rec = json.loads((out / "a.json").read_text())
    assert (rec["width"], rec["height"]) == (100, 80)
    assert rec["model_version"].startswith("clickpose-custom-tiny@")
    assert rec["weights"]["licence"] == "test-only"
    assert rec["keypoint_names"][0] == "nose" and len(rec["keypoint_names"]) == 17
    persons = rec["persons"]
    assert len(persons) == ClickPoseConfig.tiny().num_select
    assert [p["score"] for p in persons] == sorted((p["score"] for p in persons), reverse=True)
    for p in persons:
        x0, y0, x1, y1 = p["box_xyxy"]
        kp = np.array(p["keypoints"])
        assert kp.shape == (17, 2) and x0 <= kp[:, 0].min() and kp[:, 0].max() <= x1
        assert y0 <= kp[:, 1].min() and kp[:, 1].max() <= y1
    png = cv2.cvtColor(cv2.imread(str(out / "a.png")), cv2.COLOR_BGR2RGB)
    assert png.shape == a.shape and (png != a).any()  # drawn on
    assert json.loads((out / "a_2.json").read_text())["width"] == 70
    assert "a.png: 5 person(s)" in capsys.readouterr().out


def test_threshold_filters_persons_and_leaves_image_undrawn(tmp_path, weights):
    a = _write_image(tmp_path / "a.png")
    rc = main(["predict", str(tmp_path / "a.png"), "--weights", weights, "--out", str(tmp_path),
               "--score-threshold", "1"])
    assert rc == 0
    assert json.loads((tmp_path / "a.json").read_text())["persons"] == []
    png = cv2.cvtColor(cv2.imread(str(tmp_path / "a.png")), cv2.COLOR_BGR2RGB)
    assert (png == a).all()


def test_missing_and_corrupt_images_are_reported_and_skipped(tmp_path, weights, capsys):
    _write_image(tmp_path / "ok.png")
    (tmp_path / "bad.jpg").write_bytes(b"not a jpeg")
    rc = main(["predict", str(tmp_path / "nope.png"), str(tmp_path / "bad.jpg"),
               str(tmp_path / "ok.png"), "--weights", weights, "--out", str(tmp_path / "o")])
    err = capsys.readouterr().err
    assert rc == 1
    assert "nope.png" in err and "no such file" in err
    assert "bad.jpg" in err and "not a recognised image format" in err
    assert (tmp_path / "o" / "ok.json").exists() and not (tmp_path / "o" / "bad.json").exists()


def test_missing_weights_and_bad_threshold(tmp_path, capsys):
    _write_image(tmp_path / "a.png")
    rc = main(["predict", str(tmp_path / "a.png"), "--weights", str(tmp_path / "none.pth")])
    assert rc == 2 and "does not exist" in capsys.readouterr().err
    rc = main(["predict", str(tmp_path / "a.png"), "--weights-dir", str(tmp_path)])
    assert rc == 2 and "no weights in" in capsys.readouterr().err
    rc = main(["predict", str(tmp_path / "a.png"), "--score-threshold", "3"])
    assert rc == 2 and "--score-threshold" in capsys.readouterr().err


def test_draw_colours_sides_and_marks_clicks():
    from clickpose_core.types import Person
    cfg = ClickPoseConfig.tiny()
    kp = np.array([[20.0 + 3 * k, 20.0 + 3 * k] for k in range(17)])
    clicked = np.zeros(17, bool)
    clicked[0] = True
    person = Person(0, 0.9, np.array([10.0, 10.0, 90.0, 90.0]), kp, clicked)
    img = np.zeros((100, 100, 3), np.uint8)
    out = draw_persons(img, [person], cfg)
    assert (img == 0).all() and out.shape == img.shape  # input untouched
    assert tuple(out[41, 41]) == (0, 170, 255)   # joint 7 = left_elbow: left colour
    assert tuple(out[44, 44]) == (255, 120, 0)   # joint 8 = right_elbow: right colour
    plain = draw_persons(img, [Person(0, 0.9, person.box, kp, np.zeros(17, bool))], cfg)
    rows, cols = np.nonzero((out != plain).any(-1))  # the ring: only near the clicked nose
    assert len(rows) and np.abs(rows - 20).max() <= 5 and np.abs(cols - 20).max() <= 5
    assert (out[rows, cols].min(-1) >= 200).any()  # and white
    assert (draw_persons(img, [person], cfg, score_threshold=0.95) == 0).all()
