"""Labeling config -> served controls: joint mapping, subsets, thresholds, and clear errors."""
from __future__ import annotations

import pytest

from backend.label_config import LabelConfigError, normalise_joint_name, parse_label_config
from clickpose_core.config import COCO_KEYPOINT_NAMES

from backend_fixtures import payload

NAMES = COCO_KEYPOINT_NAMES


def cfg(keypoints: str, rect: str = "", image: str = '<Image name="image" value="$image"/>') -> str:
    return f"<View>{image}{rect}{keypoints}</View>"


def test_recorded_coco17_config_maps_every_joint_by_model_index():
    served = parse_label_config(payload("02_setup")["schema"], NAMES, 0.3)
    assert served.keypoints.from_name == "keypoints" and served.keypoints.to_name == "image"
    assert served.keypoints.value_key == "image"
    assert served.keypoints.joints == {name: i for i, name in enumerate(NAMES)}
    assert served.box is not None and served.box.from_name == "person_bbox" and served.box.label == "person"
    assert served.keypoints.stroke_width == 2.0


@pytest.mark.parametrize("spelling,joint", [("left_wrist", 9), ("Left Wrist", 9), ("left-wrist", 9),
                                            ("LEFT_WRIST", 9), ("RightAnkle", 16), ("Nose", 0)])
def test_labels_without_model_index_map_by_joint_name(spelling, joint):
    served = parse_label_config(cfg(f'<KeyPointLabels name="kp" toName="image"><Label value="{spelling}"/>'
                                    "</KeyPointLabels>"), NAMES, 0.3)
    assert served.keypoints.joints == {spelling: joint}


def test_subset_of_joints_and_model_index_override_and_unmapped_labels():
    served = parse_label_config(cfg(
        '<KeyPointLabels name="kp" toName="image">'
        '<Label value="head" model_index="0"/><Label value="Left Knee"/><Label value="tail"/>'
        "</KeyPointLabels>"), NAMES, 0.3)
    assert served.keypoints.joints == {"head": 0, "Left Knee": 13}
    assert served.unmapped_labels == ("tail",)
    assert served.box is None


def test_threshold_from_config_else_default_and_model_skip():
    text = cfg('<KeyPointLabels name="skipped" toName="image" model_skip="true"><Label value="nose"/></KeyPointLabels>'
               '<KeyPointLabels name="kp" toName="image" model_score_threshold="0.65"><Label value="nose"/>'
               "</KeyPointLabels>",
               rect='<RectangleLabels name="r" toName="image" model_skip="true"><Label value="person"/></RectangleLabels>')
    served = parse_label_config(text, NAMES, 0.3)
    assert served.keypoints.from_name == "kp" and served.keypoints.score_threshold == 0.65
    assert served.box is None
    plain = parse_label_config(cfg('<KeyPointLabels name="kp" toName="image"><Label value="nose"/></KeyPointLabels>'),
                               NAMES, 0.42)
    assert plain.keypoints.score_threshold == 0.42


def test_rectangle_label_prefers_person():
    served = parse_label_config(cfg(
        '<KeyPointLabels name="kp" toName="image"><Label value="nose"/></KeyPointLabels>',
        rect='<RectangleLabels name="r" toName="image"><Label value="car"/><Label value="Person"/></RectangleLabels>'),
        NAMES, 0.3)
    assert served.box.label == "Person"


@pytest.mark.parametrize("text,message", [
    ("", "empty"),
    ("<View><Image name='image' value='$image'/>", "not valid XML"),
    (cfg('<RectangleLabels name="r" toName="image"><Label value="person"/></RectangleLabels>'), "no <KeyPointLabels>"),
    (cfg('<KeyPointLabels name="kp" toName="image"><Label value="tail"/><Label value="wing"/></KeyPointLabels>'),
     "no label"),
    (cfg('<KeyPointLabels name="kp" toName="image"><Label value="a" model_index="17"/></KeyPointLabels>'),
     "out of range"),
    (cfg('<KeyPointLabels name="kp" toName="image"><Label value="a" model_index="x"/></KeyPointLabels>'),
     "not an integer"),
    (cfg('<KeyPointLabels name="kp" toName="image"><Label value="nose"/><Label value="Nose "/></KeyPointLabels>'),
     "both map"),
    (cfg('<KeyPointLabels name="kp" toName="image" model_score_threshold="2"><Label value="nose"/></KeyPointLabels>'),
     "between 0 and 1"),
])
def test_configs_the_backend_cannot_serve_raise_a_clear_error(text, message):
    with pytest.raises(LabelConfigError, match=message):
        parse_label_config(text, NAMES, 0.3)


def test_normalise_joint_name():
    assert {normalise_joint_name(s) for s in ("left_wrist", "Left Wrist", "left-wrist", " LEFT wrist ")} == {"leftwrist"}
