"""Fixtures of tests/backend (helpers live in backend_fixtures.py)."""
from __future__ import annotations

import numpy as np
import pytest

from backend_fixtures import FakeLabelStudio


@pytest.fixture(scope="session")
def fake_ls():
    server = FakeLabelStudio()
    yield server
    server.close()


@pytest.fixture(scope="session")
def tiny_checkpoint(tmp_path_factory) -> str:
    """A random tiny Click-Pose model (COCO-17 joints), saved like real weights."""
    import torch

    from clickpose_core import ClickPoseConfig, build_model
    from clickpose_core.checkpoint import save_checkpoint

    torch.manual_seed(0)
    model = build_model(ClickPoseConfig.tiny()).eval()
    # Offset heads start at zero (as in DINO), which would make a random model's refinement move
    # nothing; small noise there makes "other joints move after a click" observable.
    with torch.no_grad():
        for param in model.parameters():
            if torch.count_nonzero(param) == 0:
                param.normal_(0.0, 0.05)
    path = tmp_path_factory.mktemp("weights") / "tiny.pth"
    save_checkpoint(path, model, meta={"licence": "test only"})
    return str(path)


@pytest.fixture()
def rng() -> np.random.Generator:
    return np.random.default_rng(0)
