"""CLICKPOSE_PRECISION: parsed into Settings, bad values refused with the variable's name."""
from __future__ import annotations

import pytest

from backend.settings import Settings, SettingsError


def test_precision_defaults_to_float32_and_accepts_bfloat16():
    assert Settings.from_env({}).precision == "float32"
    assert Settings.from_env({"CLICKPOSE_PRECISION": " BFloat16 "}).precision == "bfloat16"
    assert Settings.from_env({"CLICKPOSE_PRECISION": ""}).precision == "float32"


def test_unknown_precision_is_a_settings_error_naming_the_variable():
    with pytest.raises(SettingsError, match="CLICKPOSE_PRECISION must be one of float32, bfloat16, got 'fp16'"):
        Settings.from_env({"CLICKPOSE_PRECISION": "fp16"})
