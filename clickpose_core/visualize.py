"""Draw persons (box, skeleton, joints, score) on an image with OpenCV.

Joints and limbs are coloured by side, read from the keypoint names ("left_*" / "right_*"), so the
annotator can spot left/right swaps at a glance; clicked joints get a white ring.
"""
from __future__ import annotations

from typing import Sequence

import cv2
import numpy as np

from .config import ClickPoseConfig
from .types import Person

# RGB colours.
LEFT = (0, 170, 255)
RIGHT = (255, 120, 0)
CENTRE = (0, 220, 90)
BOX = (255, 230, 0)
CLICKED = (255, 255, 255)


def side_colour(name: str) -> tuple[int, int, int]:
    """Colour for a keypoint name: left, right, or centre (nose, custom names)."""
    if name.startswith("left"):
        return LEFT
    if name.startswith("right"):
        return RIGHT
    return CENTRE


def draw_persons(image: np.ndarray, persons: Sequence[Person], config: ClickPoseConfig,
                 score_threshold: float = 0.0) -> np.ndarray:
    """RGB uint8 [H, W, 3] + persons in pixels -> a new RGB uint8 image with the drawings.

    Persons scoring below score_threshold are skipped.
    """
    canvas = np.ascontiguousarray(image.copy())
    h, w = canvas.shape[:2]
    thick = max(1, round(max(h, w) / 400))
    names = config.keypoint_names
    for person in persons:
        if person.score < score_threshold:
            continue
        x0, y0, x1, y1 = (int(round(v)) for v in person.box)
        cv2.rectangle(canvas, (x0, y0), (x1, y1), BOX, thick, cv2.LINE_AA)
        cv2.putText(canvas, f"{person.score:.2f}", (x0, max(y0 - 3 * thick, 10 * thick)),
                    cv2.FONT_HERSHEY_SIMPLEX, 0.4 * thick, BOX, thick, cv2.LINE_AA)
        pts = [tuple(int(round(c)) for c in xy) for xy in person.keypoints]
        for a, b in config.skeleton:
            # A limb takes the side of its endpoints when they agree, else the centre colour.
            ca, cb = side_colour(names[a]), side_colour(names[b])
            cv2.line(canvas, pts[a], pts[b], ca if ca == cb else CENTRE, thick, cv2.LINE_AA)
        for k, pt in enumerate(pts):
            cv2.circle(canvas, pt, 2 * thick, side_colour(names[k]), -1, cv2.LINE_AA)
            if person.clicked[k]:
                cv2.circle(canvas, pt, 3 * thick, CLICKED, thick, cv2.LINE_AA)
    return canvas
