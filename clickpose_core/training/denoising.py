"""Denoising queries (DN-DETR style, as Click-Pose builds them in training).

Each image gets `number` extra queries: its ground-truth persons repeated to fill them (groups of
N_i consecutive queries, one copy of every person), with noised boxes, noised keypoints and partly
randomised label embeddings. The decoder must reconstruct the clean persons. Attention masks keep the
ground truth from leaking: the ordinary (matching) queries cannot see any denoising query, and a
denoising copy cannot see the other copies. As in the official code, denoising queries may look at
the matching queries.

In the pose layers some keypoints of each denoising person are left exactly at the ground truth: the
paper's model of an annotator who has already corrected those joints, so the feedback layers also
learn to exploit exact joints. How many follows the same power law as the number of clicks.
"""
from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import Tensor

from ..config import ClickPoseConfig
from ..model.clickpose import ClickPose
from ..model.common import inverse_sigmoid
from ..model.decoder import DenoisingQueries


@dataclass(frozen=True)
class DenoisingSettings:
    """number: queries per image; *_noise_scale: uniform noise half-width relative to the box size;
    label_noise_ratio: chance that a query's (box or keypoint) label embedding is replaced by a random one;
    click_power: exponent of the power law for the number of exact joints per person."""
    number: int
    box_noise_scale: float
    keypoint_noise_scale: float
    label_noise_ratio: float
    labelbook_size: int
    click_power: float = 2.0

    @classmethod
    def from_config(cls, cfg: ClickPoseConfig, keypoint_noise_scale: float = 0.4) -> "DenoisingSettings":
        """The config's dn_* fields; the keypoint noise scale is the official 0.4 (equal to the box one)."""
        return cls(cfg.dn_number, cfg.dn_box_noise_scale, keypoint_noise_scale, cfg.dn_label_noise_ratio,
                   cfg.dn_labelbook_size)


@dataclass
class DenoisingTargets:
    """What the denoising queries must reconstruct. labels [B, D] int64; boxes [B, D, 4] cxcywh;
    keypoints [B, D, 3K]; valid [B, D] bool (False: filler query of an image without persons)."""
    labels: Tensor
    boxes: Tensor
    keypoints: Tensor
    valid: Tensor


def power_law_count(maximum: int, power: float, generator: torch.Generator, size: int = 1) -> Tensor:
    """Integers n in 1..maximum with P(n) proportional to n^-power, [size] int64."""
    weights = torch.arange(1, maximum + 1, dtype=torch.float64).pow(-power)
    return torch.multinomial(weights, size, replacement=True, generator=generator) + 1


def repeat_indices(num_gt: int, number: int, generator: torch.Generator) -> Tensor:
    """Indices filling `number` slots with whole copies of 0..num_gt-1, the remainder drawn at random."""
    copies = torch.arange(num_gt).repeat(number // num_gt)
    rest = torch.randint(0, num_gt, (number % num_gt,), generator=generator)
    return torch.cat([copies, rest])


def box_attention_mask(group_sizes: list[int], number: int, num_queries: int, num_heads: int) -> Tensor:
    """Self-attention mask of the box layers, [B * heads, D + Q, D + Q] bool (True = blocked).

    Matching queries (after the D denoising ones) cannot see denoising queries; denoising query i of an
    image with N persons sees only its own copy, queries [N * (i // N), N * (i // N + 1)).
    """
    total = number + num_queries
    masks = []
    for n in group_sizes:
        m = torch.zeros(total, total, dtype=torch.bool)
        m[number:, :number] = True
        if n > 0:
            copy = torch.arange(number) // n
            m[:number, :number] = copy[:, None] != copy[None, :]
        masks.append(m)
    return torch.stack(masks).repeat_interleave(num_heads, 0)


def pose_attention_mask(group_sizes: list[int], number: int, num_groups: int, group_size: int,
                        num_heads: int) -> Tensor:
    """Self-attention mask of the pose layers over (D + G) groups of S tokens, [B * heads, T, T].

    Matching groups see only themselves; a denoising person sees only its own S tokens and the
    matching groups (official). An image without persons leaves its filler queries unrestricted.
    """
    d_tok, total = number * group_size, (number + num_groups) * group_size
    group = torch.arange(total) // group_size
    own = group[:, None] != group[None, :]
    masks = []
    for n in group_sizes:
        m = own.clone()
        m[:d_tok, d_tok:] = False              # denoising -> matching is allowed
        if n == 0:
            m[:d_tok, :d_tok] = False
        masks.append(m)
    return torch.stack(masks).repeat_interleave(num_heads, 0)


def make_denoising_queries(model: ClickPose, targets: list[dict[str, Tensor]], settings: DenoisingSettings,
                           generator: torch.Generator) -> tuple[DenoisingQueries, DenoisingTargets]:
    """Noised copies of the ground truth for `model.decode(mem, dn=...)` and what they should become.

    All randomness comes from `generator` (CPU), so a resumed run draws the same noise.
    """
    cfg = model.config
    k, d, g = cfg.num_keypoints, settings.number, generator
    device = model.label_enc.weight.device
    labels, boxes, keypoints, valid = [], [], [], []
    for t in targets:
        n = len(t["labels"])
        if n > 0:
            idx = repeat_indices(n, d, g)
            labels.append(t["labels"].cpu()[idx])
            boxes.append(t["boxes"].cpu().float()[idx])
            keypoints.append(t["keypoints"].cpu().float()[idx])
            valid.append(torch.ones(d, dtype=torch.bool))
        else:   # nothing to reconstruct: random negatives (the official fallback)
            labels.append(torch.full((d,), cfg.num_classes, dtype=torch.int64))
            boxes.append(torch.rand(d, 4, generator=g))
            keypoints.append(torch.rand(d, 3 * k, generator=g))
            valid.append(torch.zeros(d, dtype=torch.bool))
    labels, boxes, keypoints, valid = map(torch.stack, (labels, boxes, keypoints, valid))
    b = len(targets)

    # Label noise: the embedding row of a box query / keypoint query is replaced at random.
    box_labels = labels.clone()
    flip = torch.rand(b, d, generator=g) < settings.label_noise_ratio
    box_labels[flip] = torch.randint(0, settings.labelbook_size, (int(flip.sum()),), generator=g)
    kpt_labels = torch.arange(1, k + 1).expand(b, d, k).clone()
    flip = torch.rand(b, d, k, generator=g) < settings.label_noise_ratio
    kpt_labels[flip] = torch.randint(0, k, (int(flip.sum()),), generator=g)

    # Box noise: centre by up to scale * half the size, size by up to scale * the size.
    noisy_boxes = boxes.clone()
    if settings.box_noise_scale > 0:
        span = torch.cat([boxes[..., 2:] / 2, boxes[..., 2:]], -1)
        noise = (torch.rand(b, d, 4, generator=g) * 2 - 1) * span * settings.box_noise_scale
        noisy_boxes = (boxes + noise).clamp(0, 1)

    # Keypoint noise, relative to half the noised box; some joints stay exact (already "clicked").
    xy = keypoints[..., :2 * k].unflatten(-1, (k, 2))
    noisy_xy = xy.clone()
    if settings.keypoint_noise_scale > 0:
        span = noisy_boxes[..., None, 2:] / 2
        noise = (torch.rand(b, d, k, 2, generator=g) * 2 - 1) * span * settings.keypoint_noise_scale
        noise = noise * (~exact_joints(b, d, k, settings.click_power, g))[..., None]
        noisy_xy = (xy + noise).clamp(0, 1)

    sizes = [len(t["labels"]) for t in targets]
    heads = cfg.nheads
    queries = DenoisingQueries(
        box_tokens=model.label_enc(box_labels.to(device)),
        box_refs=inverse_sigmoid(noisy_boxes.to(device)).sigmoid(),
        kpt_tokens=model.label_enc_pose(kpt_labels.to(device)),
        kpt_xy=noisy_xy.to(device),
        box_mask=box_attention_mask(sizes, d, cfg.num_queries, heads).to(device),
        pose_mask=pose_attention_mask(sizes, d, cfg.num_group, k + 1, heads).to(device))
    return queries, DenoisingTargets(labels.to(device), boxes.to(device), keypoints.to(device), valid.to(device))


def exact_joints(batch: int, number: int, num_keypoints: int, power: float, generator: torch.Generator) -> Tensor:
    """[B, D, K] bool: per denoising person, n ~ power law in 1..K distinct joints left noise-free.

    (The official code draws the n joints with replacement, so it sometimes keeps fewer than n.)
    """
    counts = power_law_count(num_keypoints, power, generator, batch * number).view(batch, number)
    order = torch.rand(batch, number, num_keypoints, generator=generator).argsort(-1)
    rank = torch.empty_like(order).scatter_(-1, order, torch.arange(num_keypoints).expand_as(order))
    return rank < counts[..., None]
