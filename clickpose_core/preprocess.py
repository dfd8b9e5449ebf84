"""The official evaluation transform, reproduced step by step.

Official pipeline (datasets/coco.py `make_coco_transforms('val')`): PIL image ->
`RandomResize([800], max_size=1333)` (PIL bilinear) -> `ToTensor` (float32 / 255) ->
`Normalize(ImageNet mean, std)` -> `nested_tensor_from_tensor_list` (zero padding at the bottom and
right to the batch maximum, mask True on padding). Sizes come from `ClickPoseConfig.min_size`,
`max_size`, `pixel_mean`, `pixel_std`.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Sequence

import numpy as np
import torch
from PIL import Image

from .config import ClickPoseConfig


@dataclass
class ImageBatch:
    """A padded batch ready for `model.encode`.

    images: [B, 3, Hmax, Wmax] normalised; masks: [B, Hmax, Wmax] bool, True on padding;
    sizes: original (H, W) per image (outputs are scaled back with these);
    resized: (H, W) per image after the resize, before padding.
    """
    images: torch.Tensor
    masks: torch.Tensor
    sizes: list[tuple[int, int]]
    resized: list[tuple[int, int]]


def get_size_with_aspect_ratio(width: int, height: int, size: int,
                               max_size: int | None = None) -> tuple[int, int]:
    """Official output size (h, w): short side `size`, long side at most `max_size`.

    Kept bit-for-bit, including the int() truncation of the long side and the round() of the
    reduced short side, so resized shapes (and therefore every feature map) match the official code.
    """
    if max_size is not None:
        min_original = float(min(width, height))
        max_original = float(max(width, height))
        if max_original / min_original * size > max_size:
            size = int(round(max_size * min_original / max_original))
    if (width <= height and width == size) or (height <= width and height == size):
        return height, width
    if width < height:
        return int(size * height / width), size
    return size, int(size * width / height)


def resize(image: np.ndarray, min_size: int, max_size: int | None) -> np.ndarray:
    """RGB uint8 [H, W, 3] -> RGB uint8 [h, w, 3] with PIL bilinear, as torchvision does on PIL."""
    h, w = image.shape[:2]
    oh, ow = get_size_with_aspect_ratio(w, h, min_size, max_size)
    # torchvision's F.resize on a PIL image calls img.resize((w, h), BILINEAR) even when the
    # size is unchanged; PIL then returns an identical copy, so skipping it changes nothing.
    if (oh, ow) == (h, w):
        return image
    return np.asarray(Image.fromarray(image).resize((ow, oh), Image.BILINEAR))


def normalize(image: np.ndarray, mean: Sequence[float], std: Sequence[float],
              dtype: torch.dtype = torch.float32) -> torch.Tensor:
    """RGB uint8 [H, W, 3] -> [3, H, W] `(x / 255 - mean) / std` computed in `dtype`.

    In float32 this is exactly ToTensor + Normalize (same operations, same order).
    """
    # np.require copies only read-only or non-contiguous arrays (PIL output is read-only).
    t = torch.from_numpy(np.require(image, requirements=["C", "W"])).permute(2, 0, 1).to(dtype).div(255)
    m = torch.as_tensor(mean, dtype=dtype)[:, None, None]
    s = torch.as_tensor(std, dtype=dtype)[:, None, None]
    return t.sub(m).div(s)


def pad_batch(tensors: Sequence[torch.Tensor]) -> tuple[torch.Tensor, torch.Tensor]:
    """[3, Hi, Wi] list -> images [B, 3, Hmax, Wmax] zero-padded bottom/right, masks [B, Hmax, Wmax].

    masks are True on padding, False on image pixels (official `nested_tensor_from_tensor_list`).
    """
    if not tensors:
        raise ValueError("pad_batch needs at least one image")
    hmax = max(t.shape[1] for t in tensors)
    wmax = max(t.shape[2] for t in tensors)
    first = tensors[0]
    images = first.new_zeros((len(tensors), first.shape[0], hmax, wmax))
    masks = torch.ones((len(tensors), hmax, wmax), dtype=torch.bool, device=first.device)
    for t, img, m in zip(tensors, images, masks):
        img[:, : t.shape[1], : t.shape[2]].copy_(t)
        m[: t.shape[1], : t.shape[2]] = False
    return images, masks


def preprocess(images: Sequence[np.ndarray], config: ClickPoseConfig,
               dtype: torch.dtype = torch.float32,
               device: torch.device | str = "cpu") -> ImageBatch:
    """RGB uint8 [H, W, 3] images -> ImageBatch with the official eval transform."""
    if len(images) == 0:
        raise ValueError("preprocess needs at least one image")
    tensors, sizes, resized = [], [], []
    for i, img in enumerate(images):
        if not (isinstance(img, np.ndarray) and img.dtype == np.uint8 and img.ndim == 3
                and img.shape[2] == 3 and img.shape[0] > 0 and img.shape[1] > 0):
            desc = (f"{img.dtype} {list(img.shape)}" if isinstance(img, np.ndarray)
                    else type(img).__name__)
            raise ValueError(f"image {i}: expected an RGB uint8 array [H, W, 3], got {desc} "
                             "(clickpose_core.image.as_rgb_array converts other layouts)")
        small = resize(img, config.min_size, config.max_size)
        tensors.append(normalize(small, config.pixel_mean, config.pixel_std, dtype))
        sizes.append((img.shape[0], img.shape[1]))
        resized.append((small.shape[0], small.shape[1]))
    batch, masks = pad_batch(tensors)
    return ImageBatch(batch.to(device), masks.to(device), sizes, resized)
