"""Fixtures of the CVAT adapter tests: a tiny model whose person scores spread over (0, 1)."""
from __future__ import annotations

import numpy as np
import pytest

from clickpose_core.checkpoint import save_checkpoint
from clickpose_core.predictor import Predictor
from cvat_fixtures import scored_model


@pytest.fixture(scope="session")
def model():
    return scored_model()


@pytest.fixture(scope="session")
def checkpoint(model, tmp_path_factory):
    path = tmp_path_factory.mktemp("weights") / "tiny.pth"
    save_checkpoint(path, model, {"licence": "Apache-2.0"})
    return path


@pytest.fixture()
def predictor(model):
    return Predictor(model, cache_size=2)


@pytest.fixture(scope="session")
def frame() -> np.ndarray:
    """RGB uint8 [120, 160, 3] on which the scored model's 5 persons straddle 0.75."""
    return np.random.default_rng(0).integers(0, 255, (120, 160, 3), dtype=np.uint8)[::-1].copy()
