"""COCO-format keypoint data for training: loading, augmentation, batching.

Follows the official training pipeline where it matters for keypoints: persons without labelled
keypoints and crowd regions are dropped; random left/right-aware horizontal flips; multi-scale
resizing of the short side (the official scale ratios 0.6..1.0 applied to `cfg.min_size`, the long
side capped at `cfg.max_size`); ImageNet normalisation and zero padding with masks exactly as in
inference (`clickpose_core.preprocess`). The official random crop is not used.

Augmentation randomness is a pure function of (seed, epoch, image index), so a resumed run sees
the same images augmented the same way, whatever the number of loader workers.
"""
from __future__ import annotations

import json
import os
from dataclasses import dataclass

import cv2
import numpy as np
import torch
from torch import Tensor
from torch.utils.data import Dataset

from ..config import ClickPoseConfig
from ..preprocess import normalize, pad_batch
from ..preprocess import resize as resize_image

PERSON_LABEL = 1          # the class index Click-Pose is trained with (COCO category id of person)


@dataclass
class Sample:
    """One image in pixels before normalisation. image RGB uint8 [H, W, 3]; boxes [N, 4] xyxy;
    keypoints [N, K, 3] (x, y, v) with v in {0, 1, 2}; area [N]."""
    image: np.ndarray
    boxes: np.ndarray
    keypoints: np.ndarray
    area: np.ndarray
    image_id: int


def hflip(sample: Sample, flip_index: tuple[int, ...]) -> Sample:
    """Mirror left-right: x -> W - x for boxes and labelled joints, and swap each joint with its mirror
    (left wrist <-> right wrist ...) so labels keep meaning the person's own left and right."""
    w = sample.image.shape[1]
    boxes = sample.boxes.copy()
    boxes[:, [0, 2]] = w - sample.boxes[:, [2, 0]]
    kpts = sample.keypoints[:, list(flip_index)].copy()
    labelled = kpts[..., 2] > 0
    kpts[..., 0] = np.where(labelled, w - kpts[..., 0], kpts[..., 0])
    return Sample(np.ascontiguousarray(sample.image[:, ::-1]), boxes, kpts, sample.area.copy(), sample.image_id)


def resize(sample: Sample, short_side: int, max_size: int) -> Sample:
    """Resize the image so its short side is `short_side` (long side <= max_size)."""
    h, w = sample.image.shape[:2]
    image = resize_image(sample.image, short_side, max_size)     # the inference resize (PIL bilinear)
    if image.shape[:2] == (h, w):
        return sample
    sx, sy = image.shape[1] / w, image.shape[0] / h
    kpts = sample.keypoints.copy()
    kpts[..., 0] *= sx
    kpts[..., 1] *= sy
    return Sample(image, sample.boxes * np.array([sx, sy, sx, sy], np.float32), kpts,
                  sample.area * (sx * sy), sample.image_id)


def train_scales(cfg: ClickPoseConfig) -> list[int]:
    """Short sides for multi-scale training: the official 480..800 step 32 as ratios of min_size."""
    return sorted({int(round(cfg.min_size * (480 + 32 * i) / 800)) for i in range(11)})


def to_target(sample: Sample, num_keypoints: int) -> tuple[Tensor, dict[str, Tensor]]:
    """Sample -> (normalisation is done by the caller) target dict normalised to the image size."""
    h, w = sample.image.shape[:2]
    scale = np.array([w, h], np.float32)
    x0y0, x1y1 = sample.boxes[:, :2] / scale, sample.boxes[:, 2:] / scale
    boxes = np.concatenate([(x0y0 + x1y1) / 2, x1y1 - x0y0], 1)
    xy = (sample.keypoints[..., :2] / scale).reshape(len(boxes), 2 * num_keypoints)
    vis = (sample.keypoints[..., 2] > 0).astype(np.float32)
    return {
        "labels": torch.full((len(boxes),), PERSON_LABEL, dtype=torch.int64),
        "boxes": torch.from_numpy(boxes.astype(np.float32)),
        "keypoints": torch.from_numpy(np.concatenate([xy, vis], 1).astype(np.float32)),
        "area": torch.from_numpy((sample.area / (w * h)).astype(np.float32)),
        "image_id": torch.tensor(sample.image_id),
    }


class CocoKeypoints(Dataset):
    """Persons with keypoints from a COCO annotation file.

    `dataset[i]` -> (image [3, H, W] normalised float32, target dict; see `matcher` for the keys).
    With train=True images are flipped and resized at random (seeded by `set_epoch`); otherwise
    resized to cfg.min_size like the inference transform.
    """

    def __init__(self, images_dir: str, annotation_file: str, cfg: ClickPoseConfig, train: bool, seed: int = 0):
        with open(annotation_file) as f:
            coco = json.load(f)
        self.images_dir, self.cfg, self.train, self.seed, self.epoch = images_dir, cfg, train, seed, 0
        self.scales = train_scales(cfg)
        k = cfg.num_keypoints
        by_image: dict[int, list[dict]] = {}
        for ann in coco["annotations"]:
            if ann.get("iscrowd", 0) or ann.get("num_keypoints", 1) == 0:
                continue
            if len(ann["keypoints"]) != 3 * k:
                raise ValueError(f"{annotation_file}: annotation {ann.get('id')} has "
                                 f"{len(ann['keypoints']) // 3} keypoints, the config has {k}")
            by_image.setdefault(ann["image_id"], []).append(ann)
        self.images = sorted(coco["images"], key=lambda im: im["id"])
        self.annotations = by_image

    def __len__(self) -> int:
        return len(self.images)

    def set_epoch(self, epoch: int) -> None:
        self.epoch = epoch

    def load(self, index: int) -> Sample:
        info = self.images[index]
        bgr = cv2.imread(os.path.join(self.images_dir, info["file_name"]), cv2.IMREAD_COLOR)
        if bgr is None:
            raise FileNotFoundError(f"cannot read image {info['file_name']!r} in {self.images_dir}")
        image = cv2.cvtColor(bgr, cv2.COLOR_BGR2RGB)
        h, w = image.shape[:2]
        anns = self.annotations.get(info["id"], [])
        k = self.cfg.num_keypoints
        boxes = np.array([a["bbox"] for a in anns], np.float32).reshape(-1, 4)
        boxes[:, 2:] += boxes[:, :2]
        boxes[:, [0, 2]] = boxes[:, [0, 2]].clip(0, w)
        boxes[:, [1, 3]] = boxes[:, [1, 3]].clip(0, h)
        kpts = np.array([a["keypoints"] for a in anns], np.float32).reshape(-1, k, 3)
        area = np.array([a.get("area", (b[2] - b[0]) * (b[3] - b[1])) for a, b in zip(anns, boxes)], np.float32)
        keep = (boxes[:, 2] > boxes[:, 0]) & (boxes[:, 3] > boxes[:, 1])
        return Sample(image, boxes[keep], kpts[keep], area[keep], int(info["id"]))

    def __getitem__(self, index: int) -> tuple[Tensor, dict[str, Tensor]]:
        sample = self.load(index)
        if self.train:
            rng = np.random.default_rng([self.seed, self.epoch, index])
            if rng.random() < 0.5:
                sample = hflip(sample, self.cfg.flip_index)
            sample = resize(sample, int(rng.choice(self.scales)), self.cfg.max_size)
        else:
            sample = resize(sample, self.cfg.min_size, self.cfg.max_size)
        image = normalize(sample.image, self.cfg.pixel_mean, self.cfg.pixel_std)
        return image, to_target(sample, self.cfg.num_keypoints)


def collate(batch: list[tuple[Tensor, dict[str, Tensor]]]) -> tuple[Tensor, Tensor, list[dict[str, Tensor]]]:
    """-> images [B, 3, H, W] zero-padded, masks [B, H, W] (True = padding), targets."""
    images, masks = pad_batch([image for image, _ in batch])
    return images, masks, [target for _, target in batch]
