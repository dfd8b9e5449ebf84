"""Model outputs -> Label Studio regions, one small class per labeling-config control tag.

The shape follows label_studio_ml/examples/yolo/control_models: each control model knows its tag
and turns `Person` objects (original-image pixels) into result dicts (percent of the image).
Region ids encode the person's session row, `<token>-p<row>` for a box and
`<token>-p<row>-k<joint>` for a keypoint; `token` is fresh for every reply because the editor
fails on suggestion ids that already exist in the annotation.
"""
from __future__ import annotations

import re
import secrets
from dataclasses import dataclass
from typing import Any, Sequence

import numpy as np

from clickpose_core.types import Person

from .label_config import BoxControl, KeypointControl

_ID_RE = re.compile(r"^(?P<token>[0-9a-f]{8})-p(?P<row>\d{1,4})(?:-k(?P<joint>\d{1,4}))?$")


def new_token() -> str:
    """8 hex characters; a reply's region ids all share one token."""
    return secrets.token_hex(4)


def parse_region_id(region_id: str) -> tuple[int, int | None] | None:
    """(person row, joint or None) of an id this backend emitted, else None."""
    m = _ID_RE.match(region_id or "")
    if not m:
        return None
    return int(m["row"]), (int(m["joint"]) if m["joint"] is not None else None)


def _pct(value: float, size: int) -> float:
    return float(value) / float(size) * 100.0


@dataclass(frozen=True)
class ImageFrame:
    """The image the annotator sees: EXIF-transposed natural size in pixels."""

    width: int
    height: int

    def clip_xy(self, xy: np.ndarray) -> np.ndarray:
        return np.stack([np.clip(xy[..., 0], 0, self.width), np.clip(xy[..., 1], 0, self.height)], axis=-1)

    def base(self, from_name: str, to_name: str) -> dict[str, Any]:
        return {"from_name": from_name, "to_name": to_name, "original_width": self.width,
                "original_height": self.height, "image_rotation": 0}


class RectangleLabelsModel:
    """Person boxes as `rectanglelabels` regions."""

    def __init__(self, control: BoxControl) -> None:
        self.control = control

    def region(self, person: Person, frame: ImageFrame, region_id: str) -> dict[str, Any]:
        # Clip to the image: the click step grows a box to hold all its keypoints, which may
        # lie outside the frame; keypoints are clipped the same way so the box still holds them.
        x0, y0 = frame.clip_xy(np.asarray(person.box[:2], dtype=np.float64))
        x1, y1 = frame.clip_xy(np.asarray(person.box[2:], dtype=np.float64))
        return {
            **frame.base(self.control.from_name, self.control.to_name),
            "id": region_id, "type": "rectanglelabels", "score": float(person.score),
            "value": {"x": _pct(x0, frame.width), "y": _pct(y0, frame.height),
                      "width": _pct(x1 - x0, frame.width), "height": _pct(y1 - y0, frame.height),
                      "rotation": 0, "rectanglelabels": [self.control.label]},
        }


class KeyPointLabelsModel:
    """Person joints as `keypointlabels` regions, grouped under their box by `parentID`."""

    def __init__(self, control: KeypointControl) -> None:
        self.control = control

    def regions(self, person: Person, frame: ImageFrame, token: str, parent_id: str | None) -> list[dict]:
        kps = frame.clip_xy(np.asarray(person.keypoints, dtype=np.float64))
        # `width` is the point's drawn size in percent of the image width.
        size = _pct(self.control.stroke_width, frame.width)
        out = []
        for label, joint in self.control.joints.items():
            x, y = kps[joint]
            region = {
                **frame.base(self.control.from_name, self.control.to_name),
                "id": f"{token}-p{person.index}-k{joint}", "type": "keypointlabels",
                "score": float(person.score),
                "value": {"x": _pct(x, frame.width), "y": _pct(y, frame.height), "width": size,
                          "keypointlabels": [label]},
            }
            if parent_id is not None:
                region["parentID"] = parent_id
            out.append(region)
        return out


class PersonRegions:
    """All control models of a served config: `Person` list -> one prediction dict."""

    def __init__(self, keypoints: KeypointControl, box: BoxControl | None) -> None:
        self.keypoints = KeyPointLabelsModel(keypoints)
        self.box = RectangleLabelsModel(box) if box is not None else None

    def prediction(self, persons: Sequence[Person], frame: ImageFrame, model_version: str) -> dict[str, Any]:
        token = new_token()
        result: list[dict] = []
        for person in persons:
            parent = None
            if self.box is not None:
                parent = f"{token}-p{person.index}"
                result.append(self.box.region(person, frame, parent))
            result.extend(self.keypoints.regions(person, frame, token, parent))
        score = float(np.mean([p.score for p in persons])) if persons else 0.0
        return {"result": result, "score": score, "model_version": model_version}

    def pre_annotation(self, persons: Sequence[Person], frame: ImageFrame, model_version: str) -> dict[str, Any]:
        """The prediction of a full-model run: the persons scoring at least the config's threshold.

        One rule for the serving backend and the batch tool, so both send the same regions.
        """
        threshold = self.keypoints.control.score_threshold
        return self.prediction([p for p in persons if p.score >= threshold], frame, model_version)


def percent_to_pixels(value: dict, frame: ImageFrame) -> tuple[float, float]:
    """A region's percent (x, y) -> pixels of the image the backend decoded."""
    return float(value["x"]) / 100.0 * frame.width, float(value["y"]) / 100.0 * frame.height
