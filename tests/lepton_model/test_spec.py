"""ModelSpec and Preprocessing: the seed's defaults, validation and the dict round trip."""

from __future__ import annotations

import json
from typing import Any

import pytest

from lepton_model.spec import ModelSpec, Preprocessing


def test_defaults_describe_the_seed_articles_network() -> None:
    spec = ModelSpec()

    assert spec.preprocessing.input_shape == (28, 28, 1)
    assert (spec.filters, spec.kernel_size, spec.pool_size) == ((32,), 3, 2)
    assert (spec.dense_units, spec.dropout, spec.num_classes) == (64, 0.0, 10)
    assert (spec.preprocessing.background, spec.preprocessing.fit) == ("dark", "pad")


@pytest.mark.parametrize(
    "options",
    [
        {"channels": 2},
        {"height": 3},
        {"width": 2048},
        {"background": "grey"},
        {"fit": "crop"},
    ],
    ids=lambda options: next(iter(options)),
)
def test_preprocessing_rejects_invalid_values(options: dict[str, Any]) -> None:
    with pytest.raises(ValueError):
        Preprocessing(**options)


@pytest.mark.parametrize(
    "options",
    [
        {"num_classes": 1},
        {"filters": ()},
        {"filters": (32, 0)},
        {"dense_units": 0},
        {"dropout": 1.0},
        {"dropout": -0.1},
        {"kernel_size": 0},
        {"pool_size": 0},
        {"filters": (8, 16, 32), "kernel_size": 5},
        {"filters": (8,) * 5},
        {"preprocessing": Preprocessing(height=64, width=4), "filters": (8, 8)},
    ],
    ids=[
        "one-class",
        "no-blocks",
        "zero-filters",
        "no-units",
        "dropout-1",
        "dropout-negative",
        "zero-kernel",
        "zero-pool",
        "blocks-outgrow-28px",
        "five-blocks",
        "input-too-narrow",
    ],
)
def test_model_spec_rejects_invalid_values(options: dict[str, Any]) -> None:
    with pytest.raises(ValueError):
        ModelSpec(**options)


def test_spec_round_trips_through_json() -> None:
    spec = ModelSpec(
        num_classes=4,
        preprocessing=Preprocessing(height=32, width=24, channels=3, background="keep"),
        filters=(16, 32),
        dense_units=128,
        dropout=0.3,
    )

    restored = ModelSpec.from_dict(json.loads(json.dumps(spec.to_dict())))

    assert restored == spec
    assert isinstance(restored.filters, tuple)


def test_from_dict_ignores_unknown_keys_and_fills_defaults() -> None:
    restored = ModelSpec.from_dict(
        {"num_classes": 3, "activation": "gelu", "preprocessing": {"height": 32, "colour": 1}}
    )

    # An old model's preprocessing without `crop` is read as not cropping (how it was trained).
    assert restored == ModelSpec(num_classes=3, preprocessing=Preprocessing(height=32, crop=False))


@pytest.mark.parametrize(
    "spec",
    [
        ModelSpec(filters=(8, 16, 32)),
        ModelSpec(preprocessing=Preprocessing(height=4, width=4), filters=(1,), kernel_size=3),
    ],
    ids=["three-blocks-on-28px", "smallest-input"],
)
def test_specs_that_fit_their_input_are_accepted(spec: ModelSpec) -> None:
    assert spec.filters
