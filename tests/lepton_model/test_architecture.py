"""build_model: the seed's CNN by default, configurable, with rescaling inside the model."""

from __future__ import annotations

import keras
import numpy as np
import pytest
from keras import layers

from lepton_model.architecture import build_model
from lepton_model.spec import ModelSpec, Preprocessing


def layer_types(model: keras.Model) -> list[str]:
    return [type(layer).__name__ for layer in model.layers]


def test_default_is_the_seed_articles_cnn() -> None:
    model = build_model()

    assert layer_types(model) == [
        "InputLayer",
        "Rescaling",
        "Conv2D",
        "MaxPooling2D",
        "Flatten",
        "Dense",
        "Dense",
    ]
    _, rescale, conv, pool, _, hidden, output = model.layers
    assert model.input_shape == (None, 28, 28, 1)
    assert (rescale.scale, rescale.offset) == (1.0 / 255.0, 0.0)
    assert (conv.filters, conv.kernel_size, conv.activation.__name__) == (32, (3, 3), "relu")
    assert pool.pool_size == (2, 2)
    assert (hidden.units, hidden.activation.__name__) == (64, "relu")
    assert (output.units, output.activation.__name__) == (10, "softmax")
    assert model.output_shape == (None, 10)


def test_build_model_without_a_spec_equals_the_default_spec() -> None:
    assert build_model(None).get_config() == build_model(ModelSpec()).get_config()


@pytest.mark.parametrize(
    "spec",
    [
        ModelSpec(num_classes=3, preprocessing=Preprocessing(height=32, width=48, channels=3)),
        ModelSpec(num_classes=5, filters=(8, 16, 32), dense_units=10),
        ModelSpec(num_classes=2, filters=(8,), kernel_size=5, dense_units=10),
        ModelSpec(num_classes=2, dropout=0.5, pool_size=3),
    ],
    ids=["input-32x48x3", "three-blocks", "kernel-5", "dropout"],
)
def test_architecture_follows_the_spec(spec: ModelSpec) -> None:
    model = build_model(spec)

    convs = [layer for layer in model.layers if isinstance(layer, layers.Conv2D)]
    pools = [layer for layer in model.layers if isinstance(layer, layers.MaxPooling2D)]
    dropouts = [layer for layer in model.layers if isinstance(layer, layers.Dropout)]
    dense = [layer for layer in model.layers if isinstance(layer, layers.Dense)]
    assert model.input_shape == (None, *spec.preprocessing.input_shape)
    assert [conv.filters for conv in convs] == list(spec.filters)
    assert {conv.kernel_size for conv in convs} == {(spec.kernel_size, spec.kernel_size)}
    assert {pool.pool_size for pool in pools} == {(spec.pool_size, spec.pool_size)}
    assert [d.rate for d in dropouts] == ([spec.dropout] if spec.dropout else [])
    assert [d.units for d in dense] == [spec.dense_units, spec.num_classes]


@pytest.mark.parametrize(
    "spec",
    [
        ModelSpec(),
        ModelSpec(num_classes=3, preprocessing=Preprocessing(height=32, width=48, channels=3)),
        ModelSpec(num_classes=5, filters=(8, 16, 32), dense_units=10),
        ModelSpec(num_classes=2, filters=(8,), kernel_size=5, dense_units=10),
        ModelSpec(num_classes=2, dropout=0.5, pool_size=3),
    ],
    ids=["default", "input-32x48x3", "three-blocks", "kernel-5", "dropout"],
)
def test_parameter_count_is_what_the_built_model_has(spec: ModelSpec) -> None:
    assert spec.parameter_count() == build_model(spec).count_params()


def test_rescaling_is_inside_the_model() -> None:
    """The model takes raw 0..255 pixels: scaling them is the model's first layer."""
    model = build_model(ModelSpec(num_classes=3, filters=(4,), dense_units=8))
    assert isinstance(model.layers[1], layers.Rescaling)
    pixels = np.random.default_rng(0).integers(0, 256, (2, 28, 28, 1)).astype(np.float32)
    unscaled = keras.Model(model.layers[1].output, model.output)

    direct = np.asarray(model(pixels))
    pre_scaled = np.asarray(unscaled(pixels / 255.0))

    assert np.allclose(direct, pre_scaled, atol=1e-6)


def test_outputs_are_probabilities() -> None:
    model = build_model(ModelSpec(num_classes=4, filters=(4,), dense_units=8))
    pixels = np.random.default_rng(1).integers(0, 256, (5, 28, 28, 1)).astype(np.float32)

    probabilities = np.asarray(model(pixels))

    assert probabilities.shape == (5, 4)
    assert np.allclose(probabilities.sum(axis=1), 1.0, atol=1e-5)
    assert (probabilities >= 0).all()
