"""Persons -> what CVAT stores for them, shared by the cvat-sdk function and the nuclio handler.

Keypoint visibility ("outside"). CVAT wants every sublabel of a skeleton (the SDK rejects fewer
elements) and hides an element sent with `outside=True`. Click-Pose gives no per-keypoint evidence
to base that on: like ED-Pose, its decoder regresses all K joints of every person and emits a
constant visibility channel (`sigmoid(1)` for every joint, `clickpose_core.model.decoder`), which is
why `Person` carries no keypoint scores; and its joints are sigmoid outputs in normalised image
units, so they always lie inside the frame and "beyond the border" never happens either. A
threshold on any of these would be a constant or a guess, so every joint is sent visible
(`outside=False`, `occluded=False`) and the only confidence used is the person score, which decides
whether the whole skeleton is sent. Annotators mark hidden joints as outside in CVAT.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Sequence

import numpy as np

from clickpose_core.types import Person

DEFAULT_SCORE_THRESHOLD = 0.3  # the Label Studio backend's default (MODEL_SCORE_THRESHOLD)


@dataclass(frozen=True)
class PersonShape:
    """One person ready for CVAT, in frame pixels, as plain Python floats (CVAT's API models
    reject numpy scalars). score in [0, 1]; box (x0, y0, x1, y1) clipped to the frame;
    points: K (x, y) pairs in model keypoint order."""
    score: float
    box: tuple[float, float, float, float]
    points: tuple[tuple[float, float], ...]


def person_shapes(persons: Sequence[Person], width: int, height: int,
                  threshold: float) -> list[PersonShape]:
    """The persons scoring at least `threshold`, in the given order (the predictor's: best first)."""
    if not 0.0 <= threshold <= 1.0:
        raise ValueError(f"threshold must be between 0 and 1, got {threshold}")
    shapes = []
    for p in persons:
        if p.score < threshold:
            continue
        # The box head is not bounded to the frame (cx - w/2 may be < 0); joints are.
        x0, y0, x1, y1 = np.clip(np.asarray(p.box, dtype=np.float64), 0, [width, height, width, height])
        points = tuple((float(x), float(y)) for x, y in np.asarray(p.keypoints, dtype=np.float64))
        shapes.append(PersonShape(min(float(p.score), 1.0), (float(x0), float(y0), float(x1), float(y1)),
                                  points))
    return shapes
