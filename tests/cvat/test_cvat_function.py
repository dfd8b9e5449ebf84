"""The cvat-sdk detection function, checked through cvat-sdk 2.80.0's own driver code.

`_AnnotationMapper` is what `cvataa.annotate_task` (cvat-cli task auto-annotate) and the agent
driver (cvat-cli function run-agent) run on every frame's output before uploading it; a live CVAT
server is not used (see README, CVAT section).
"""
from __future__ import annotations

import io
import logging

import numpy as np
import pytest
from cvat_sdk import models
from cvat_sdk.auto_annotation import BadFunctionError
from cvat_sdk.auto_annotation.driver import _AnnotationMapper, _DetectionFunctionContextImpl
from cvat_cli._internal.agent_driver_detection import AgentDetectionFunctionDriver
from PIL import Image

from clickpose_core.image import load_image
from clickpose_cvat.function import ClickPoseFunction

from cvat_fixtures import cvat_labels_json, png_bytes

BOX = "person-box"


def task_labels(drop: tuple[str, ...] = (), extra: tuple[str, ...] = ()) -> list[models.Label]:
    """The labels of cvat/labels.json as a CVAT server returns them: its own ids (not the
    function's 0..16), sublabels optionally dropped or added (another skeleton)."""
    out = []
    for i, label in enumerate(cvat_labels_json()):
        subs = [s["name"] for s in label.get("sublabels", []) if s["name"] not in drop] + list(extra)
        sublabels = [models.Sublabel(name=n, id=100 + j, type="points", attributes=[])
                     for j, n in enumerate(subs)]
        svg = {"svg": label["svg"]} if label["type"] == "skeleton" else {}
        out.append(models.Label(name=label["name"], id=40 + 37 * i, type=label["type"],
                                attributes=[], sublabels=sublabels, **svg))
    return out


def context(conf_threshold=None):
    return _DetectionFunctionContextImpl(frame_name="frame_000.png", conf_threshold=conf_threshold)


def mapper(function, labels, allow_unmatched=False):
    return _AnnotationMapper(logging.getLogger("test"), function.spec.labels, labels,
                             allow_unmatched_labels=allow_unmatched, conv_mask_to_poly=False)


def pil(rgb: np.ndarray) -> Image.Image:
    return Image.open(io.BytesIO(png_bytes(rgb)))  # as the SDK hands frames over: opened, not decoded


def test_spec_declares_model_keypoints_and_optional_box(predictor):
    names = list(predictor.config.keypoint_names)
    (skeleton,) = ClickPoseFunction(predictor).spec.labels
    assert (skeleton.name, skeleton.type) == ("person", "skeleton")
    assert [s.name for s in skeleton.sublabels] == names
    assert [s.id for s in skeleton.sublabels] == list(range(len(names)))
    assert {s.type for s in skeleton.sublabels} == {"points"}
    labels = ClickPoseFunction(predictor, box_label=BOX).spec.labels
    assert [(l.name, l.type) for l in labels] == [("person", "skeleton"), (BOX, "rectangle")]
    # What `cvat-cli function create-native` sends to CVAT for this spec.
    fields = AgentDetectionFunctionDriver.get_remote_function_fields(ClickPoseFunction(predictor).spec)
    assert [s["name"] for s in fields["labels_v2"][0]["sublabels"]] == names


def test_detect_passes_the_sdk_mapper_with_remapped_ids(predictor, frame):
    function = ClickPoseFunction(predictor, box_label=BOX, score_threshold=0.0)
    labels = task_labels()
    output = function.detect(context(), pil(frame))
    tags, shapes = mapper(function, labels).validate_and_remap(output, 7)
    expected = Predictor_persons(predictor, frame)
    assert tags == [] and len(shapes) == 2 * len(expected) > 0
    skeleton_id, box_id = labels[0].id, labels[1].id
    sub_ids = [s.id for s in labels[0].sublabels]
    for person, skel, box in zip(expected, shapes[0::2], shapes[1::2]):
        assert (skel.label_id, skel.type.value, skel.frame, skel.source) == (skeleton_id, "skeleton", 7, "auto")
        assert skel.score == pytest.approx(person.score)
        assert [e.label_id for e in skel.elements] == sub_ids
        assert {(e.frame, e.source, e.outside, e.occluded) for e in skel.elements} == {(7, "auto", False, False)}
        np.testing.assert_allclose([e.points for e in skel.elements], person.keypoints)
        assert (box.label_id, box.type.value, box.frame) == (box_id, "rectangle", 7)
        x0, y0, x1, y1 = box.points
        assert 0 <= x0 <= x1 <= 160 and 0 <= y0 <= y1 <= 120


def Predictor_persons(predictor, frame):
    """The persons the model itself returns for `frame` (a fresh key, so no cached state)."""
    persons = predictor.predict("reference", frame)
    predictor.forget("reference")
    return persons


@pytest.mark.parametrize("conf", [None, 0.75])
def test_conf_threshold_is_honoured(predictor, frame, conf):
    function = ClickPoseFunction(predictor, score_threshold=0.0)
    persons = Predictor_persons(predictor, frame)
    kept = [p for p in persons if p.score >= (conf or 0.0)]
    assert 0 < len([p for p in persons if p.score >= 0.75]) < len(persons)  # 0.75 really filters
    output = function.detect(context(conf), pil(frame))
    assert [s.score for s in output] == pytest.approx([p.score for p in kept])
    mapper(function, task_labels()).validate_and_remap(output, 0)


def test_default_threshold_applies_without_conf(predictor, frame):
    output = ClickPoseFunction(predictor, score_threshold=0.9).detect(context(None), pil(frame))
    assert [s.score for s in output] == pytest.approx(
        [p.score for p in Predictor_persons(predictor, frame) if p.score >= 0.9])


def test_task_skeleton_with_more_sublabels_gets_the_sdk_error(predictor, frame):
    function = ClickPoseFunction(predictor, score_threshold=0.0)
    output = function.detect(context(), pil(frame))
    with pytest.raises(BadFunctionError, match=r"fewer elements than expected \(17 vs 18\)"):
        mapper(function, task_labels(extra=("neck",))).validate_and_remap(output, 0)


def test_task_skeleton_with_fewer_sublabels(predictor, frame):
    function = ClickPoseFunction(predictor, score_threshold=0.0)
    with pytest.raises(BadFunctionError, match="sublabel 'left_ear' of label 'person' is not in dataset"):
        mapper(function, task_labels(drop=("left_ear", "right_ear")))
    # --allow-unmatched-labels: the two joints are dropped, the rest maps.
    _, shapes = mapper(function, task_labels(drop=("left_ear", "right_ear")), allow_unmatched=True) \
        .validate_and_remap(function.detect(context(), pil(frame)), 0)
    assert shapes and {len(s.elements) for s in shapes} == {15}


def test_box_label_missing_in_task_needs_allow_unmatched(predictor):
    function = ClickPoseFunction(predictor, box_label="pedestrian-box")
    with pytest.raises(BadFunctionError, match="label 'pedestrian-box' is not in dataset"):
        mapper(function, task_labels())


def test_exif_orientation_matches_the_upright_frame(predictor, frame):
    """A JPEG stored sideways with orientation 6 is detected in its upright (displayed) geometry."""
    sideways = np.ascontiguousarray(np.rot90(frame, 1))  # [160, 120]: what the file stores
    exif = Image.Exif()
    exif[0x0112] = 6  # rotate 90 CW to display
    buf = io.BytesIO()
    Image.fromarray(sideways).save(buf, format="JPEG", quality=95, exif=exif.tobytes())
    upright = load_image(buf.getvalue())
    assert upright.shape == (120, 160, 3)
    output = ClickPoseFunction(predictor, score_threshold=0.0).detect(context(), Image.open(io.BytesIO(buf.getvalue())))
    expected = Predictor_persons(predictor, upright)
    np.testing.assert_allclose([[e.points for e in s.elements] for s in output],
                               [p.keypoints for p in expected])


@pytest.mark.parametrize("mode", ["L", "RGBA", "P", "I;16"])
def test_any_pil_mode_is_accepted(predictor, frame, mode):
    img = Image.fromarray(frame).convert("L" if mode == "I;16" else mode)
    if mode == "I;16":
        img = Image.fromarray(np.asarray(img).astype(np.uint16) * 257)
    output = ClickPoseFunction(predictor, score_threshold=0.0).detect(context(), img)
    mapper(ClickPoseFunction(predictor), task_labels()).validate_and_remap(output, 0)
    assert len(output) == predictor.config.num_select


def test_bad_parameters_are_named(predictor):
    with pytest.raises(ValueError, match="score_threshold must be between 0 and 1, got 1.5"):
        ClickPoseFunction(predictor, score_threshold=1.5)
    with pytest.raises(ValueError, match="box_label must differ from label"):
        ClickPoseFunction(predictor, box_label="person")
    with pytest.raises(ValueError, match="label name must not be empty"):
        ClickPoseFunction(predictor, label=" ")
