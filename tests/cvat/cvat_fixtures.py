"""Helpers of the CVAT adapter tests (imported by conftest.py and the tests)."""
from __future__ import annotations

import io
import json
import pathlib

import numpy as np
import torch
from PIL import Image

from tests.models import tiny_random_model

REPO = pathlib.Path(__file__).resolve().parents[2]
LABELS_JSON = REPO / "cvat" / "labels.json"


def scored_model():
    """tiny_random_model with its class heads rescaled: a random model's scores all sit near the
    focal-loss prior (~0.01); these spread over 0.6..0.97, so a 0.75 threshold keeps some, not all."""
    model = tiny_random_model()
    with torch.no_grad():
        for name, param in model.named_parameters():
            if "class_embed" in name:
                param.fill_(0.5) if name.endswith("bias") else param.mul_(3.0)
    return model


def png_bytes(rgb: np.ndarray) -> bytes:
    buf = io.BytesIO()
    Image.fromarray(rgb).save(buf, format="PNG")
    return buf.getvalue()


def cvat_labels_json() -> list[dict]:
    return json.loads(LABELS_JSON.read_text())
