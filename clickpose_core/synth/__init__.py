"""Synthetic people in COCO keypoint format: posed 3-D figures rendered into cluttered scenes."""
from clickpose_core.synth.generator import SceneConfig, generate_dataset, render_scene

__all__ = ["SceneConfig", "generate_dataset", "render_scene"]
