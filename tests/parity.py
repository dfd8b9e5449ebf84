"""Helpers for the parity fixture in ../shared/reference (official outputs on filled weights)."""
from __future__ import annotations

import importlib.util
import json
import os
from functools import lru_cache
from pathlib import Path

import numpy as np
import torch

from clickpose_core import ClickPoseConfig, build_model

REFERENCE_DIR = Path(os.environ.get("CLICKPOSE_REFERENCE_DIR",
                                    Path(__file__).resolve().parents[1].parent / "shared" / "reference"))


def fixture_available() -> bool:
    return (REFERENCE_DIR / "clickpose_parity.npz").exists()


@lru_cache(maxsize=1)
def arrays() -> dict[str, np.ndarray]:
    with np.load(REFERENCE_DIR / "clickpose_parity.npz") as z:
        return {k: z[k] for k in z.files}


@lru_cache(maxsize=1)
def meta() -> dict:
    return json.loads((REFERENCE_DIR / "clickpose_parity.json").read_text())["meta"]


def state_dict_spec() -> list[tuple[str, tuple[int, ...]]]:
    rows = (REFERENCE_DIR / "clickpose_r50_state_dict.tsv").read_text().strip().splitlines()
    return [(k, tuple(int(s) for s in shape.split("x"))) for k, shape, _ in (r.split("\t") for r in rows)]


def _fill():
    spec = importlib.util.spec_from_file_location("fill_weights", REFERENCE_DIR / "fill_weights.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module.fill


def filled_state_dict(dtype: torch.dtype) -> dict[str, torch.Tensor]:
    """Official keys -> filled tensors; an alias key gets the tensor of its canonical (first) key."""
    fill = _fill()
    model = build_model(ClickPoseConfig.r50())
    canonical: dict[int, str] = {}
    out = {}
    for key, tensor in model.state_dict(keep_vars=True).items():
        first = canonical.setdefault(id(tensor), key)
        if first == key:
            out[key] = torch.from_numpy(fill(key, tuple(tensor.shape))).to(dtype)
        else:
            out[key] = out[first]
    return out


@lru_cache(maxsize=2)
def filled_model(dtype: torch.dtype = torch.float64):
    model = build_model(ClickPoseConfig.r50()).to(dtype).eval()
    model.load_state_dict(filled_state_dict(dtype), strict=True)
    return model
