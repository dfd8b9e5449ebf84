"""Plain result and input types shared by the predictor, evaluation, the CLI and adapters."""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np


@dataclass(frozen=True)
class Click:
    """An annotator's correction: joint `joint` of person `person` is at (x, y) pixels.

    `person` is the row of the person in the interactive session (0..num_select-1), the same
    index as `Person.index` returned by `Predictor.predict` / `Predictor.refine`.
    """
    person: int
    joint: int
    x: float
    y: float


@dataclass(frozen=True)
class Person:
    """One detected person in original-image pixel coordinates.

    box: [4] float64 (x0, y0, x1, y1); keypoints: [K, 2] float64 (x, y); score: sigmoid of the
    person logit; index: the row in the interactive session (stable across refine calls);
    clicked: [K] bool, True where the joint was set by a click and is held there.
    """
    index: int
    score: float
    box: np.ndarray
    keypoints: np.ndarray
    clicked: np.ndarray
