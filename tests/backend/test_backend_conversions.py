"""Person <-> Label Studio regions, both ways, and smart-point bookkeeping (no model needed)."""
from __future__ import annotations

import numpy as np
import pytest

from backend.clicks import ContextError, TaskClicks, choose_person, read_group, smart_points_of_draft
from backend.control_models import ImageFrame, PersonRegions, parse_region_id, percent_to_pixels
from backend.label_config import parse_label_config
from clickpose_core.config import COCO_KEYPOINT_NAMES
from clickpose_core.types import Person

from backend_fixtures import payload

SERVED = parse_label_config(payload("02_setup")["schema"], COCO_KEYPOINT_NAMES, 0.3)
FRAME = ImageFrame(width=640, height=480)


def make_person(index: int, offset: float, rng: np.random.Generator, score: float = 0.9) -> Person:
    kps = np.stack([rng.uniform(100, 200, 17) + offset, rng.uniform(80, 400, 17)], axis=1)
    box = np.array([kps[:, 0].min() - 5, kps[:, 1].min() - 5, kps[:, 0].max() + 5, kps[:, 1].max() + 5])
    return Person(index=index, score=score, box=box, keypoints=kps, clicked=np.zeros(17, bool))


def test_person_to_regions_percent_coordinates_grouping_and_ids(rng):
    persons = [make_person(3, 0, rng), make_person(7, 300, rng, score=0.5)]
    pred = PersonRegions(SERVED.keypoints, SERVED.box).prediction(persons, FRAME, "v-test")
    assert pred["model_version"] == "v-test" and pred["score"] == pytest.approx(0.7)
    result = pred["result"]
    assert len(result) == 2 * 18
    boxes = [r for r in result if r["type"] == "rectanglelabels"]
    for person, box in zip(persons, boxes):
        v = box["value"]
        assert v["rectanglelabels"] == ["person"] and box["from_name"] == "person_bbox"
        assert v["x"] == pytest.approx(person.box[0] / 640 * 100) and v["y"] == pytest.approx(person.box[1] / 480 * 100)
        assert v["width"] == pytest.approx((person.box[2] - person.box[0]) / 640 * 100)
        assert v["height"] == pytest.approx((person.box[3] - person.box[1]) / 480 * 100)
        assert parse_region_id(box["id"]) == (person.index, None)
        kps = [r for r in result if r.get("parentID") == box["id"]]
        assert len(kps) == 17 and all(r["score"] == person.score for r in kps)
        for r in kps:
            joint = COCO_KEYPOINT_NAMES.index(r["value"]["keypointlabels"][0])
            assert parse_region_id(r["id"]) == (person.index, joint)
            # and back: percent -> pixels gives the model's keypoint
            x, y = percent_to_pixels(r["value"], FRAME)
            assert (x, y) == pytest.approx(tuple(person.keypoints[joint]), abs=1e-9)
            assert r["original_width"] == 640 and r["original_height"] == 480
    ids = [r["id"] for r in result]
    assert len(set(ids)) == len(ids)
    again = PersonRegions(SERVED.keypoints, SERVED.box).prediction(persons, FRAME, "v-test")
    assert not set(ids) & {r["id"] for r in again["result"]}, "every reply needs fresh ids"


def test_regions_are_clipped_to_the_image_and_boxes_still_hold_keypoints(rng):
    p = make_person(0, 0, rng)
    p.keypoints[0] = (-30.0, 500.0)
    p.box[:] = (-40, 10, 300, 520)
    result = PersonRegions(SERVED.keypoints, SERVED.box).prediction([p], FRAME, "v")["result"]
    box = result[0]["value"]
    assert box["x"] == 0 and box["y"] + box["height"] == pytest.approx(100)
    nose = result[1]["value"]
    assert (nose["x"], nose["y"]) == (0.0, 100.0)
    for r in result[1:]:
        assert box["x"] - 1e-9 <= r["value"]["x"] <= box["x"] + box["width"] + 1e-9
        assert box["y"] - 1e-9 <= r["value"]["y"] <= box["y"] + box["height"] + 1e-9


def test_subset_config_without_box_emits_only_its_joints(rng):
    served = parse_label_config('<View><Image name="img" value="$url"/><KeyPointLabels name="k" toName="img">'
                                '<Label value="Left Wrist"/><Label value="nose"/></KeyPointLabels></View>',
                                COCO_KEYPOINT_NAMES, 0.3)
    result = PersonRegions(served.keypoints, None).prediction([make_person(1, 0, rng)], FRAME, "v")["result"]
    assert sorted(r["value"]["keypointlabels"][0] for r in result) == ["Left Wrist", "nose"]
    assert all("parentID" not in r and r["to_name"] == "img" for r in result)


def test_read_group_of_the_recorded_browser_click():
    context = payload("21_browser_A")["params"]["context"]
    joints, points = read_group(context["result"], SERVED.keypoints, FRAME)
    assert joints == {0}
    assert len(points) == 1, "the predicted nose in the group is context, not a click"
    p = points[0]
    assert p.id == "n_NjcXSsru" and p.joint == 0 and p.positive
    assert (p.x, p.y) == pytest.approx((15.023087071240107 * 6.4, 21.96569920844328 * 4.8))


def test_negative_alt_click_is_not_a_click():
    context = payload("21_browser_D")["params"]["context"]
    _, points = read_group(context["result"], SERVED.keypoints, FRAME)
    assert [(p.id, p.positive) for p in points] == [("n_NjcXSsru", True), ("03FBEI1qgf", False)]
    clicks = TaskClicks()
    clicks.update({0}, points)
    assert list(clicks.points) == ["n_NjcXSsru"]


@pytest.mark.parametrize("bad,msg", [
    ("nope", "must be a list"),
    ([1], "must be an object"),
    ([{"from_name": "keypoints", "type": "keypointlabels", "value": "x"}], "value must be an object"),
    ([{"from_name": "keypoints", "type": "keypointlabels", "is_positive": True, "id": "a",
       "value": {"x": "1", "y": 2, "keypointlabels": ["nose"]}}], "finite number"),
    ([{"from_name": "keypoints", "type": "keypointlabels", "is_positive": True, "id": "a",
       "value": {"x": 500, "y": 2, "keypointlabels": ["nose"]}}], "outside the image"),
    ([{"from_name": "keypoints", "type": "keypointlabels", "is_positive": True,
       "value": {"x": 5, "y": 2, "keypointlabels": ["nose"]}}], "id must be"),
])
def test_malformed_context_raises_context_error(bad, msg):
    with pytest.raises(ContextError, match=msg):
        read_group(bad, SERVED.keypoints, FRAME)


def smart(rid: str, label: str, x: float, y: float, positive: bool = True) -> dict:
    return {"id": rid, "from_name": "keypoints", "to_name": "image", "type": "keypointlabels",
            "origin": "manual", "is_positive": positive,
            "value": {"x": x, "y": y, "width": 0.2, "labels": [label], "keypointlabels": [label]}}


def test_clicks_survive_calls_drags_keep_person_deletes_and_relabels(rng):
    persons = [make_person(0, 0, rng), make_person(1, 300, rng)]
    book = TaskClicks()
    # nose click near person 1's nose
    nx, ny = persons[1].keypoints[0]
    book.update(*read_group([smart("a", "nose", nx / 6.4 + 0.5, ny / 4.8)], SERVED.keypoints, FRAME))
    assert [(c.person, c.joint) for c in book.assign(persons, {0, 1})] == [(1, 0)]
    # a wrist click in another call: the nose click is not in that group and must stay
    wx, wy = persons[0].keypoints[9]
    book.update(*read_group([smart("b", "left_wrist", wx / 6.4, wy / 4.8)], SERVED.keypoints, FRAME))
    assert sorted((c.person, c.joint) for c in book.assign(persons, {0, 1})) == [(0, 9), (1, 0)]
    # drag the nose point far towards person 0: same id keeps person 1
    book.update(*read_group([smart("a", "nose", persons[0].keypoints[0][0] / 6.4, 50)], SERVED.keypoints, FRAME))
    nose = [c for c in book.assign(persons, {0, 1}) if c.joint == 0]
    assert nose[0].person == 1 and nose[0].x == pytest.approx(persons[0].keypoints[0][0])
    # relabel the wrist point to right_wrist: the group of right_wrist carries it
    book.update(*read_group([smart("b", "right_wrist", wx / 6.4, wy / 4.8)], SERVED.keypoints, FRAME))
    assert sorted((c.person, c.joint) for c in book.assign(persons, {0, 1})) == [(0, 10), (1, 0)]
    # delete the nose point: its label's group arrives without it (a predicted nose stays in the group)
    predicted_nose = {"id": "x-p0-k0", "from_name": "keypoints", "type": "keypointlabels", "origin": "prediction",
                      "value": {"x": 10, "y": 10, "keypointlabels": ["nose"]}}
    book.update(*read_group([predicted_nose], SERVED.keypoints, FRAME))
    assert [(c.person, c.joint) for c in book.assign(persons, {0, 1})] == [(0, 10)]


def test_two_clicks_on_one_joint_of_one_person_newest_wins(rng):
    persons = [make_person(0, 0, rng)]
    book = TaskClicks()
    book.update(*read_group([smart("a", "nose", 20, 30), smart("b", "nose", 22, 31)], SERVED.keypoints, FRAME))
    clicks = book.assign(persons, {0})
    assert len(clicks) == 1 and clicks[0].x == pytest.approx(22 * 6.4)


def test_choose_person_prefers_box_on_screen_then_nearest_joint_then_unclaimed(rng):
    a, b = make_person(0, 0, rng), make_person(1, 300, rng)
    x, y = b.keypoints[5] + 1
    assert choose_person(x, y, 5, [a, b], {0, 1}, set()) == 1
    # b's shoulder already clicked: a second shoulder click inside b goes to another free person
    assert choose_person(x, y, 5, [a, b], {0, 1}, {(1, 5)}) == 0
    # a hidden (low-score) row is used only when no shown box holds the click
    assert choose_person(x, y, 5, [a, b], {0}, set()) == 1
    far = choose_person(630, 470, 5, [a, b], {0, 1}, set())
    assert far == min((a, b), key=lambda p: np.hypot(*(p.keypoints[5] - (630, 470)))).index


def test_draft_seeds_clicks_when_this_process_has_none():
    task = payload("21_browser_C")["tasks"][0]
    points = smart_points_of_draft(task, SERVED.keypoints, FRAME)
    assert [p.id for p in points] == ["n_NjcXSsru"]
