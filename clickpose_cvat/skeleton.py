"""The CVAT skeleton label of a Click-Pose model: sublabel names, edges and the drawing CVAT shows.

CVAT matches a function's labels and sublabels to a task's by name, so the sublabels are the model's
own keypoint names (`ClickPoseConfig.keypoint_names`, COCO order for the released weights) and the
edges its `skeleton`. `SkeletonLabel.to_cvat()` is the label JSON that CVAT's raw label editor,
`cvat-cli task create --labels` and a nuclio function's `metadata.annotations.spec` all take.
"""
from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any

from clickpose_core.config import ClickPoseConfig

DEFAULT_LABEL = "person"

# Where CVAT draws each COCO joint in its skeleton editor (a 0..100 canvas): a person facing the
# viewer, so the person's left side is on the image's right. Other keypoint sets go on a circle.
_COCO_LAYOUT: dict[str, tuple[float, float]] = {
    "nose": (50, 10), "left_eye": (53, 8), "right_eye": (47, 8), "left_ear": (56, 10),
    "right_ear": (44, 10), "left_shoulder": (60, 22), "right_shoulder": (40, 22),
    "left_elbow": (65, 36), "right_elbow": (35, 36), "left_wrist": (68, 50), "right_wrist": (32, 50),
    "left_hip": (56, 52), "right_hip": (44, 52), "left_knee": (57, 70), "right_knee": (43, 70),
    "left_ankle": (58, 88), "right_ankle": (42, 88),
}


@dataclass(frozen=True)
class SkeletonLabel:
    """A CVAT skeleton label: `name`, sublabel names in model order, edges as 0-based index pairs."""
    name: str
    keypoints: tuple[str, ...]
    edges: tuple[tuple[int, int], ...]

    @classmethod
    def from_config(cls, config: ClickPoseConfig, name: str = DEFAULT_LABEL) -> "SkeletonLabel":
        if not name.strip():
            raise ValueError("the skeleton label name must not be empty")
        return cls(name, tuple(config.keypoint_names), tuple(tuple(e) for e in config.skeleton))

    def positions(self) -> list[tuple[float, float]]:
        """Drawing position of each keypoint on CVAT's 0..100 canvas."""
        if all(k in _COCO_LAYOUT for k in self.keypoints):
            return [_COCO_LAYOUT[k] for k in self.keypoints]
        n = len(self.keypoints)
        return [(round(50 + 40 * math.sin(2 * math.pi * i / n), 2),
                 round(50 - 40 * math.cos(2 * math.pi * i / n), 2)) for i in range(n)]

    def svg(self) -> str:
        """CVAT's skeleton drawing: edges (node ids are 1-based) under the nodes, no <svg> wrapper.

        CVAT replaces each `data-label-name` with the id it gives that sublabel when it stores the label.
        """
        xy = self.positions()
        lines = [f'<line x1="{xy[a][0]}" y1="{xy[a][1]}" x2="{xy[b][0]}" y2="{xy[b][1]}" '
                 f'data-type="edge" data-node-from="{a + 1}" data-node-to="{b + 1}"></line>'
                 for a, b in self.edges]
        nodes = [f'<circle r="0.75" cx="{x}" cy="{y}" data-type="element node" '
                 f'data-element-id="{i + 1}" data-node-id="{i + 1}" data-label-name="{name}"></circle>'
                 for i, (name, (x, y)) in enumerate(zip(self.keypoints, xy))]
        return "\n".join(lines + nodes)

    def to_cvat(self) -> dict[str, Any]:
        """The label as CVAT's label JSON (raw editor, `cvat-cli --labels`, nuclio spec)."""
        return {"name": self.name, "type": "skeleton", "attributes": [],
                "sublabels": [{"name": k, "type": "points", "attributes": []} for k in self.keypoints],
                "svg": self.svg()}


def box_label(name: str) -> dict[str, Any]:
    """A rectangle label for the optional person boxes, as CVAT's label JSON."""
    return {"name": name, "type": "rectangle", "attributes": []}


def cvat_labels(skeleton: SkeletonLabel, box: str = "") -> list[dict[str, Any]]:
    """The labels to create in a CVAT task/project: the skeleton, and the box label when named."""
    if box and box == skeleton.name:
        raise ValueError(f"the box label must differ from the skeleton label, both are {box!r}")
    return [skeleton.to_cvat()] + ([box_label(box)] if box else [])
