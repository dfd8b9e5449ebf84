"""Fixtures of tests/backend (helpers live in backend_fixtures.py)."""
from __future__ import annotations

import numpy as np
import pytest

from backend_fixtures import FakeLabelStudio
from servers import save_tiny_checkpoint


@pytest.fixture(scope="session")
def fake_ls():
    server = FakeLabelStudio()
    yield server
    server.close()


@pytest.fixture(scope="session")
def tiny_checkpoint(tmp_path_factory) -> str:
    return save_tiny_checkpoint(tmp_path_factory.mktemp("weights") / "tiny.pth", "test only")


@pytest.fixture()
def rng() -> np.random.Generator:
    return np.random.default_rng(0)
