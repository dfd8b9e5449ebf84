"""Typed model configuration.

`ClickPoseConfig.r50()` is the official Click-Pose R50 configuration (config/clickpose.cfg.py of
IDEA-Research/Click-Pose with the interactive-eval options of its README). Smaller presets change
depth, width and keypoint count; nothing in the model hard-codes any of these numbers.
"""
from __future__ import annotations

from dataclasses import asdict, dataclass, replace
from typing import Any

COCO_KEYPOINT_NAMES: tuple[str, ...] = (
    "nose", "left_eye", "right_eye", "left_ear", "right_ear",
    "left_shoulder", "right_shoulder", "left_elbow", "right_elbow",
    "left_wrist", "right_wrist", "left_hip", "right_hip",
    "left_knee", "right_knee", "left_ankle", "right_ankle",
)
# COCO skeleton as 0-based joint index pairs.
COCO_SKELETON: tuple[tuple[int, int], ...] = (
    (15, 13), (13, 11), (16, 14), (14, 12), (11, 12), (5, 11), (6, 12), (5, 6), (5, 7),
    (6, 8), (7, 9), (8, 10), (1, 2), (0, 1), (0, 2), (1, 3), (2, 4), (3, 5), (4, 6),
)
# Index of each joint's mirror image, for left/right-aware flips.
COCO_FLIP_INDEX: tuple[int, ...] = (0, 2, 1, 4, 3, 6, 5, 8, 7, 10, 9, 12, 11, 14, 13, 16, 15)
# COCO OKS per-keypoint sigmas.
COCO_SIGMAS: tuple[float, ...] = (
    0.026, 0.025, 0.025, 0.035, 0.035, 0.079, 0.079, 0.072, 0.072,
    0.062, 0.062, 0.107, 0.107, 0.087, 0.087, 0.089, 0.089,
)


@dataclass(frozen=True)
class ClickPoseConfig:
    """Architecture and inference settings. Field defaults are the official R50 values."""

    # Backbone
    backbone_widths: tuple[int, ...] = (64, 128, 256, 512)   # bottleneck widths of the 4 ResNet stages
    backbone_blocks: tuple[int, ...] = (3, 4, 6, 3)
    # Transformer
    hidden_dim: int = 256
    nheads: int = 8
    dim_feedforward: int = 2048
    num_feature_levels: int = 4
    enc_layers: int = 6
    dec_layers: int = 6
    num_box_decoder_layers: int = 2          # decoder layers that refine boxes only
    enc_n_points: int = 4
    dec_n_points: int = 4
    num_queries: int = 900                   # two-stage proposals kept from the encoder
    num_group: int = 50                      # person groups kept after the box layers
    num_keypoints: int = 17
    num_classes: int = 2
    pe_temperature: float = 20.0             # encoder sine position encoding (H and W)
    two_stage_default_hw: float = 0.05
    dn_labelbook_size: int = 100             # label_enc has dn_labelbook_size + 1 rows
    # Interaction / inference
    num_select: int = 20                     # persons kept for the interactive refinement
    keypoint_names: tuple[str, ...] = COCO_KEYPOINT_NAMES
    skeleton: tuple[tuple[int, int], ...] = COCO_SKELETON
    flip_index: tuple[int, ...] = COCO_FLIP_INDEX
    sigmas: tuple[float, ...] = COCO_SIGMAS
    # Pre-processing (official eval transform)
    min_size: int = 800
    max_size: int = 1333
    pixel_mean: tuple[float, float, float] = (0.485, 0.456, 0.406)
    pixel_std: tuple[float, float, float] = (0.229, 0.224, 0.225)
    # Training-only (denoising queries)
    dn_number: int = 50
    dn_box_noise_scale: float = 0.4
    dn_label_noise_ratio: float = 0.5

    def __post_init__(self) -> None:
        k = self.num_keypoints
        for name in ("keypoint_names", "flip_index", "sigmas"):
            if len(getattr(self, name)) != k:
                raise ValueError(f"ClickPoseConfig.{name} has {len(getattr(self, name))} entries, "
                                 f"num_keypoints is {k}")
        if any(not (0 <= a < k and 0 <= b < k) for a, b in self.skeleton):
            raise ValueError("ClickPoseConfig.skeleton refers to a keypoint index out of range")
        if not 0 < self.num_box_decoder_layers < self.dec_layers:
            raise ValueError("num_box_decoder_layers must be between 1 and dec_layers - 1")
        if self.num_select > self.num_group:
            raise ValueError("num_select cannot exceed num_group")
        if self.hidden_dim % self.nheads:
            raise ValueError("hidden_dim must be divisible by nheads")

    @property
    def num_pose_layers(self) -> int:
        """Decoder layers that refine box + keypoint groups (the human-feedback layers)."""
        return self.dec_layers - self.num_box_decoder_layers

    @classmethod
    def r50(cls) -> "ClickPoseConfig":
        """The official Click-Pose ResNet-50 model."""
        return cls()

    @classmethod
    def small(cls) -> "ClickPoseConfig":
        """A narrow, shallow variant that trains on a CPU (demo weights)."""
        return cls(backbone_widths=(16, 32, 64, 128), backbone_blocks=(1, 1, 1, 1),
                   hidden_dim=64, nheads=4, dim_feedforward=256, enc_layers=2, dec_layers=4,
                   num_queries=100, num_group=20, num_select=20, dn_number=10,
                   min_size=256, max_size=384)

    @classmethod
    def medium(cls) -> "ClickPoseConfig":
        """About 3x the small preset's parameters (3.9 M, 15 MiB) at the synthetic images' own
        384x512: twice the transformer width, a deeper trunk and decoder. Meant for an accelerator;
        on one CPU core a training step costs about 6x the small one's."""
        return cls(backbone_widths=(16, 32, 64, 128), backbone_blocks=(1, 2, 2, 1),
                   hidden_dim=128, nheads=8, dim_feedforward=512, enc_layers=3, dec_layers=5,
                   num_queries=200, num_group=30, num_select=20, dn_number=20,
                   min_size=384, max_size=512)

    @classmethod
    def tiny(cls, num_keypoints: int = 17) -> "ClickPoseConfig":
        """The smallest sensible model, for unit tests."""
        names = COCO_KEYPOINT_NAMES[:num_keypoints] if num_keypoints <= 17 else tuple(
            f"kp{i}" for i in range(num_keypoints))
        return cls(backbone_widths=(8, 8, 16, 16), backbone_blocks=(1, 1, 1, 1),
                   hidden_dim=32, nheads=2, dim_feedforward=64, enc_layers=1, dec_layers=3,
                   num_box_decoder_layers=1, num_queries=30, num_group=8, num_select=5,
                   num_keypoints=num_keypoints, keypoint_names=names,
                   skeleton=tuple((a, b) for a, b in COCO_SKELETON if max(a, b) < num_keypoints),
                   flip_index=COCO_FLIP_INDEX if num_keypoints == 17 else tuple(range(num_keypoints)),
                   sigmas=(COCO_SIGMAS + (0.05,) * num_keypoints)[:num_keypoints],
                   dn_number=4, min_size=128, max_size=192)

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> "ClickPoseConfig":
        known = {f for f in cls.__dataclass_fields__}
        unknown = set(d) - known
        if unknown:
            raise ValueError(f"unknown ClickPoseConfig fields: {sorted(unknown)}")
        fixed = {k: tuple(tuple(x) if isinstance(x, list) else x for x in v) if isinstance(v, list) else v
                 for k, v in d.items()}
        return cls(**fixed)

    def replace(self, **changes: Any) -> "ClickPoseConfig":
        return replace(self, **changes)
