"""Ground truth of a COCO-format keypoint dataset, as arrays per image.

Which people the simulated annotator may click follows the official evaluation target filter
(Click-Pose `ConvertCocoPolysToMask`): not crowd, at least one labelled keypoint, a box of positive
size. Which images are evaluated follows the official NoC/AP-vs-clicks dataset filter: images with
at least one annotation and at least one labelled keypoint. AP itself is always computed by
pycocotools against *all* annotations of the evaluated images (crowd and keypoint-less people
become ignore regions there, exactly as in COCO).
"""
from __future__ import annotations

import contextlib
import io
import json
import os
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from pycocotools.coco import COCO

from clickpose_core.image import load_image


@dataclass(frozen=True)
class ImageTruth:
    """Clickable people of one image.

    keypoints: [G, K, 3] pixels (x, y, v) with COCO flags v in {0, 1, 2}; areas: [G] pixels;
    boxes: [G, 4] xyxy pixels; width/height: image size in pixels.
    """

    image_id: int
    width: int
    height: int
    keypoints: np.ndarray
    areas: np.ndarray
    boxes: np.ndarray

    @property
    def num_people(self) -> int:
        return int(self.keypoints.shape[0])


def quiet_coco(dataset: dict) -> COCO:
    """A pycocotools COCO index over an in-memory dict, without its progress prints."""
    coco = COCO()
    coco.dataset = dataset
    with contextlib.redirect_stdout(io.StringIO()):
        coco.createIndex()
    return coco


class EvalDataset:
    """A COCO keypoint json plus its image folder.

    `image_ids` are the evaluated images (sorted); `truth(i)` the clickable people of image i;
    `image(i)` its RGB uint8 pixels.
    """

    def __init__(self, annotations: str | os.PathLike | dict, image_dir: str | os.PathLike | None = None,
                 num_keypoints: int | None = None):
        if isinstance(annotations, dict):
            dataset, source = annotations, "<dict>"
        else:
            source = str(annotations)
            if not Path(source).is_file():
                raise FileNotFoundError(f"annotation file not found: {source}")
            with open(source) as f:
                dataset = json.load(f)
        for key in ("images", "annotations", "categories"):
            if key not in dataset:
                raise ValueError(f"{source}: not a COCO annotation file (no '{key}' list)")
        self.dataset = dataset
        self.coco = quiet_coco(dataset)
        self.image_dir = Path(image_dir) if image_dir is not None else None
        self.num_keypoints = num_keypoints or self._infer_num_keypoints(source)
        ids = []
        for image_id in sorted(self.coco.getImgIds()):
            anns = self.coco.loadAnns(self.coco.getAnnIds(imgIds=image_id))
            if anns and sum(int(a.get("num_keypoints", 0)) for a in anns) > 0:
                ids.append(image_id)
        self.image_ids: list[int] = ids

    @classmethod
    def from_folder(cls, folder: str | os.PathLike, num_keypoints: int | None = None) -> "EvalDataset":
        """`folder/annotations.json` + `folder/images/` (the `clickpose synth` layout)."""
        folder = Path(folder)
        ann = folder / "annotations.json"
        if not ann.is_file():
            raise FileNotFoundError(f"{folder}: expected annotations.json and images/ (as written by "
                                    f"`clickpose synth`)")
        return cls(ann, folder / "images", num_keypoints)

    def _infer_num_keypoints(self, source: str) -> int:
        for a in self.dataset["annotations"]:
            if "keypoints" in a:
                if len(a["keypoints"]) % 3:
                    raise ValueError(f"{source}: annotation {a.get('id')} keypoints length "
                                     f"{len(a['keypoints'])} is not a multiple of 3")
                return len(a["keypoints"]) // 3
        raise ValueError(f"{source}: no annotation has keypoints")

    def truth(self, image_id: int) -> ImageTruth:
        info = self.coco.imgs[image_id]
        w, h = int(info["width"]), int(info["height"])
        k = self.num_keypoints
        kps, areas, boxes = [], [], []
        for a in self.coco.loadAnns(self.coco.getAnnIds(imgIds=image_id)):
            if a.get("iscrowd", 0) or int(a.get("num_keypoints", 0)) == 0:
                continue
            if len(a["keypoints"]) != 3 * k:
                raise ValueError(f"annotation {a['id']}: {len(a['keypoints']) // 3} keypoints, "
                                 f"dataset has {k}")
            x, y, bw, bh = a["bbox"]
            box = np.clip([x, y, x + bw, y + bh], 0, [w, h, w, h])
            if box[2] <= box[0] or box[3] <= box[1]:
                continue
            kps.append(np.asarray(a["keypoints"], dtype=np.float64).reshape(k, 3))
            areas.append(float(a["area"]))
            boxes.append(box)
        return ImageTruth(image_id=image_id, width=w, height=h,
                          keypoints=np.asarray(kps, dtype=np.float64).reshape(-1, k, 3),
                          areas=np.asarray(areas, dtype=np.float64),
                          boxes=np.asarray(boxes, dtype=np.float64).reshape(-1, 4))

    def image(self, image_id: int) -> np.ndarray:
        if self.image_dir is None:
            raise ValueError("this EvalDataset was built without an image folder")
        return load_image(self.image_dir / self.coco.imgs[image_id]["file_name"])

    def subset_dataset(self, image_ids: list[int]) -> dict:
        """The COCO dict restricted to `image_ids` (all their annotations kept)."""
        keep = set(image_ids)
        return {"images": [i for i in self.dataset["images"] if i["id"] in keep],
                "annotations": [a for a in self.dataset["annotations"] if a["image_id"] in keep],
                "categories": self.dataset["categories"]}
