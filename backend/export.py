"""`clickpose-ls export`: a Label Studio project as COCO keypoints, one annotation per person.

Label Studio's own COCO export puts every keypoint of an annotation into one COCO annotation (all
people of the image merged). Here a person is a box of the served `RectangleLabels` with the
keypoints under it by `parentID`; a keypoint without a parent goes to the person whose box holds
it (the smallest such box that lacks that joint), else it is reported. Labels map to joints
through the same `ServedConfig` as the backend, so joint order, names and skeleton are the
model's. Coordinates: a keypoint's (x, y) percent times the image's natural size in pixels, as
the backend reads them (`percent_to_pixels`); visibility 2 for a placed joint, 0 (at 0, 0) else.

`--source predictions` writes a COCO results file (a list with `score`) from the predictions of
one model version, for pycocotools' `loadRes`.
"""
from __future__ import annotations

import dataclasses
import json
import os
from dataclasses import dataclass, field
from typing import Sequence
from urllib.parse import unquote, urlparse

import numpy as np

from .control_models import ImageFrame, percent_to_pixels
from .label_config import ServedConfig, cached_parse
from .ls_client import Credentials, LabelStudioProject


@dataclass
class Person:
    """One person of one annotation: box xyxy pixels (None without a box), joints index -> (x, y) pixels."""

    box: tuple[float, float, float, float] | None
    joints: dict[int, tuple[float, float]] = field(default_factory=dict)
    score: float | None = None

    def holds(self, x: float, y: float) -> bool:
        return self.box is not None and self.box[0] <= x <= self.box[2] and self.box[1] <= y <= self.box[3]

    @property
    def area(self) -> float:
        x0, y0, x1, y1 = self.extent()
        return max(0.0, x1 - x0) * max(0.0, y1 - y0)

    def extent(self) -> tuple[float, float, float, float]:
        """The box, or the tight box of the joints for a person without one."""
        if self.box is not None:
            return self.box
        xy = np.array(list(self.joints.values()), dtype=np.float64).reshape(-1, 2)
        return (float(xy[:, 0].min()), float(xy[:, 1].min()), float(xy[:, 0].max()), float(xy[:, 1].max()))

    def coco(self, num_keypoints: int) -> dict:
        """bbox [x, y, w, h], area (of the box), keypoints [x, y, v] * K, num_keypoints."""
        kps = []
        for j in range(num_keypoints):
            x, y = self.joints.get(j, (0.0, 0.0))
            kps += [float(x), float(y), 2 if j in self.joints else 0]
        x0, y0, x1, y1 = self.extent()
        return {"bbox": [x0, y0, x1 - x0, y1 - y0], "area": self.area, "keypoints": kps,
                "num_keypoints": len(self.joints), "iscrowd": 0}


def _frame(region: dict) -> ImageFrame | None:
    w, h = region.get("original_width"), region.get("original_height")
    if isinstance(w, (int, float)) and isinstance(h, (int, float)) and w > 0 and h > 0:
        return ImageFrame(width=int(w), height=int(h))
    return None


def image_frame(result: Sequence[dict]) -> ImageFrame | None:
    """The natural image size the regions were drawn on, None when no region says."""
    for region in result:
        frame = _frame(region) if isinstance(region, dict) else None
        if frame is not None:
            return frame
    return None


def group_people(result: Sequence[dict], served: ServedConfig, frame: ImageFrame) -> tuple[list[Person], list[str]]:
    """Regions of one annotation -> people, and what could not be placed (one line each)."""
    problems: list[str] = []
    people: dict[str, Person] = {}
    box = served.box
    points = []
    for region in result:
        if not isinstance(region, dict) or not isinstance(region.get("value"), dict):
            continue
        value, name = region["value"], region.get("from_name")
        if box is not None and region.get("type") == "rectanglelabels" and name == box.from_name:
            if box.label in (value.get("rectanglelabels") or []):
                x0, y0 = percent_to_pixels(value, frame)
                x1, y1 = percent_to_pixels({"x": value["x"] + value["width"], "y": value["y"] + value["height"]}, frame)
                people[str(region.get("id"))] = Person((x0, y0, x1, y1), score=region.get("score"))
        elif region.get("type") == "keypointlabels" and name == served.keypoints.from_name:
            points.append(region)
    orphans = []
    for region in points:
        labels = region["value"].get("keypointlabels") or []
        joint = served.keypoints.joint_of(labels[0]) if labels else None
        if joint is None:
            problems.append(f"keypoint {region.get('id')}: label {labels[:1]} maps to no model joint")
            continue
        xy = percent_to_pixels(region["value"], frame)
        parent = people.get(str(region.get("parentID")))
        if parent is not None and joint not in parent.joints:
            parent.joints[joint] = xy
        elif parent is not None:
            problems.append(f"keypoint {region.get('id')}: its person already has a {labels[0]}")
        else:
            orphans.append((region, joint, xy))
    if box is None and orphans:   # no boxes in this config: one person, unless a joint repeats
        joints = [j for _, j, _ in orphans]
        if len(set(joints)) == len(joints):
            people["-"] = Person(None, {j: xy for _, j, xy in orphans})
            orphans = []
    for region, joint, xy in orphans:
        holders = [p for p in people.values() if p.holds(*xy) and joint not in p.joints]
        if holders:
            min(holders, key=lambda p: p.area).joints[joint] = xy
        else:
            problems.append(f"keypoint {region.get('id')} ({region['value'].get('keypointlabels')}) at "
                            f"({xy[0]:.0f}, {xy[1]:.0f}) px has no parent and no person box holds it")
    return list(people.values()), problems


def file_name(url: str) -> str:
    return os.path.basename(unquote(urlparse(str(url)).path)) or str(url)


def _latest(items: Sequence[dict]) -> dict | None:
    return max(items, key=lambda a: (str(a.get("updated_at") or a.get("created_at") or ""), a.get("id") or 0),
               default=None)


@dataclass
class ExportSummary:
    out: str
    source: str
    images: int = 0
    people: int = 0
    problems: list[str] = field(default_factory=list)

    def text(self) -> str:
        return (f"export: {self.images} images, {self.people} people ({self.source}) -> {self.out}; "
                f"{len(self.problems)} problems")


def category(served: ServedConfig, names: Sequence[str], skeleton: Sequence[tuple[int, int]]) -> dict:
    """The COCO person category: the model's joint names and its skeleton (1-based, COCO style)."""
    return {"id": 1, "name": served.box.label if served.box else "person", "supercategory": "person",
            "keypoints": list(names), "skeleton": [[a + 1, b + 1] for a, b in skeleton]}


def _model_config(weights: str | None):
    from clickpose_core.config import ClickPoseConfig

    if weights is None:
        return ClickPoseConfig()
    from clickpose_core.checkpoint import read_checkpoint

    return read_checkpoint(weights).model_config()


def export_project(url: str, api_key: str, project: int, out: str, source: str = "annotations",
                   model_version: str | None = None, weights: str | None = None) -> ExportSummary:
    """Write `out` (COCO keypoints, or a results list for predictions) and say what was written."""
    from .images import ImageError
    from .settings import Settings
    from .task_inference import Loaders

    credentials = Credentials(url, api_key)
    ls = LabelStudioProject(url, credentials, project)
    info = ls.info()
    config = _model_config(weights)
    served = cached_parse(info.label_config, tuple(config.keypoint_names), 0.0)
    mv = model_version or info.model_version
    if source == "predictions" and not mv:
        raise ValueError("the project has no model version: pass --model-version")
    summary = ExportSummary(out=out, source=source if source == "annotations" else f"predictions of {mv}")
    loaders = Loaders(dataclasses.replace(Settings.from_env().image_source(), label_studio_url=ls.url), credentials)
    images, annotations, results = [], [], []
    for task in ls.tasks(fields="all"):
        if source == "annotations":
            items = [a for a in task.get("annotations") or [] if not a.get("was_cancelled")]
        else:
            items = [p for p in task.get("predictions") or [] if p.get("model_version") == mv]
        if len(items) > 1:
            summary.problems.append(f"task {task['id']}: {len(items)} {source}, the latest is exported")
        chosen = _latest(items)
        result = (chosen or {}).get("result") or []
        url_of_image = (task.get("data") or {}).get(served.keypoints.value_key, "")
        frame = image_frame(result)
        if frame is None and source == "annotations":   # no region says how large the image is
            try:
                image = loaders.current().load(url_of_image, task["id"])
                frame = ImageFrame(width=image.shape[1], height=image.shape[0])
            except ImageError as exc:
                summary.problems.append(f"task {task['id']}: left out, its size is unknown ({exc})")
        if frame is None:
            continue
        images.append({"id": task["id"], "file_name": file_name(url_of_image), "width": frame.width,
                       "height": frame.height})
        people, problems = group_people(result, served, frame)
        summary.problems += [f"task {task['id']}: {p}" for p in problems]
        for person in people:
            if not person.joints and person.box is None:
                continue
            entry = {"image_id": task["id"], "category_id": 1, **person.coco(len(config.keypoint_names))}
            if source == "annotations":
                annotations.append({"id": len(annotations) + 1, **entry})
            else:
                score = person.score if person.score is not None else (chosen or {}).get("score") or 0.0
                results.append({**entry, "score": float(score)})
    summary.images, summary.people = len(images), len(annotations) + len(results)
    document = results if source == "predictions" else {
        "info": {"description": f"Label Studio project {info.id} ({info.title})"},
        "images": images, "annotations": annotations,
        "categories": [category(served, config.keypoint_names, config.skeleton)]}
    with open(out, "w") as f:
        json.dump(document, f)
    return summary
