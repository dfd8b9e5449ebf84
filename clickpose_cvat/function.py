"""Click-Pose as a cvat-sdk auto-annotation detection function (`cvat-cli task auto-annotate`,
`cvat-cli function create-native` / `run-agent`).

Every person scoring at least the threshold becomes one skeleton on the label `label` with one
element per keypoint (all of them: CVAT requires it), plus, when `box_label` is set, a rectangle on
that label. See `clickpose_cvat.shapes` for why every keypoint is sent visible.
"""
from __future__ import annotations

import itertools
from typing import Sequence

import cvat_sdk.auto_annotation as cvataa
import PIL.Image

from clickpose_core.image import pil_to_rgb
from clickpose_core.predictor import Predictor

from .shapes import DEFAULT_SCORE_THRESHOLD, PersonShape, person_shapes
from .skeleton import DEFAULT_LABEL, SkeletonLabel

_SKELETON_ID, _BOX_ID = 0, 1  # the function's own label ids; the SDK maps them to the task's by name


class ClickPoseFunction:
    """A `cvataa.DetectionFunction` over one Predictor.

    score_threshold applies when the caller passes no `--conf-threshold` (context.conf_threshold None).
    """

    def __init__(self, predictor: Predictor, label: str = DEFAULT_LABEL, box_label: str = "",
                 score_threshold: float = DEFAULT_SCORE_THRESHOLD) -> None:
        if not 0.0 <= score_threshold <= 1.0:
            raise ValueError(f"score_threshold must be between 0 and 1, got {score_threshold}")
        self.predictor = predictor
        self.skeleton = SkeletonLabel.from_config(predictor.config, label)
        if box_label == label:
            raise ValueError(f"box_label must differ from label, both are {label!r}")
        self.box_label = box_label
        self.score_threshold = score_threshold
        self._frames = itertools.count()
        labels = [cvataa.skeleton_label_spec(
            self.skeleton.name, _SKELETON_ID,
            [cvataa.keypoint_spec(name, i) for i, name in enumerate(self.skeleton.keypoints)])]
        if box_label:
            labels.append(cvataa.label_spec(box_label, _BOX_ID, type="rectangle"))
        self.spec = cvataa.DetectionFunctionSpec(labels=labels)

    def detect(self, context: cvataa.DetectionFunctionContext,
               image: PIL.Image.Image) -> list[cvataa.DetectionAnnotation]:
        """One frame -> skeletons (and boxes), in the function's label ids, frame 0 (SDK rules)."""
        rgb = pil_to_rgb(image, f"frame {context.frame_name!r}")
        threshold = self.score_threshold if context.conf_threshold is None else context.conf_threshold
        # A fresh key per call: frames are seen once, and one cached session is all a run needs.
        key = f"cvat-{next(self._frames)}"
        persons = self.predictor.predict(key, rgb)
        self.predictor.forget(key)
        h, w = rgb.shape[:2]
        return self._annotations(person_shapes(persons, w, h, threshold))

    def _annotations(self, shapes: Sequence[PersonShape]) -> list[cvataa.DetectionAnnotation]:
        out: list[cvataa.DetectionAnnotation] = []
        for s in shapes:
            elements = [cvataa.keypoint(i, list(xy), outside=False, occluded=False)
                        for i, xy in enumerate(s.points)]
            out.append(cvataa.skeleton(_SKELETON_ID, elements, score=s.score))
            if self.box_label:
                out.append(cvataa.rectangle(_BOX_ID, list(s.box), score=s.score))
        return out


def create(weights: str = "", device: str = "cpu", score_threshold: float = DEFAULT_SCORE_THRESHOLD,
           label: str = DEFAULT_LABEL, box_label: str = "") -> ClickPoseFunction:
    """The factory cvat-cli calls with the `-p name=type:value` parameters (all optional).

    weights: a checkpoint path; "" = the default weights (official interactive R50 if present in the
    checkout's weights/ folder, else the demo weights; `clickpose_core.weights.resolve_default`).
    """
    predictor = Predictor.from_checkpoint(weights or None, device=device, cache_size=1)
    return ClickPoseFunction(predictor, label=label, box_label=box_label, score_threshold=score_threshold)
