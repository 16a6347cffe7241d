"""Settings read once from the environment: the limits both functions decode images under."""

from __future__ import annotations

import pytest

from lepton_model.imaging import DEFAULT_LIMITS
from lepton_runtime.errors import ConfigurationError
from lepton_runtime.settings import Settings


def test_default_image_limits_are_the_decoders_defaults() -> None:
    assert Settings.from_env({}).image_limits == DEFAULT_LIMITS


def test_image_limits_come_from_the_environment() -> None:
    limits = Settings.from_env(
        {
            "LEPTON_MAX_IMAGE_BYTES": "1000",
            "LEPTON_MAX_IMAGE_PIXELS": "2000",
            "LEPTON_MAX_IMAGE_DECODE_BYTES": str(8 * 1024 * 1024),
        }
    ).image_limits
    assert (limits.max_bytes, limits.max_pixels, limits.max_decode_bytes) == (
        1000,
        2000,
        8 * 1024 * 1024,
    )


def test_a_decode_limit_under_a_mebibyte_is_a_configuration_error() -> None:
    with pytest.raises(ConfigurationError, match="LEPTON_MAX_IMAGE_DECODE_BYTES"):
        Settings.from_env({"LEPTON_MAX_IMAGE_DECODE_BYTES": "1000"})
