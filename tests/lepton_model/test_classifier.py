"""Classifier: top-k from metadata labels, input checks, and the digits model on new renderings."""

from __future__ import annotations

import io
import json
from collections.abc import Callable
from dataclasses import replace
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from PIL import Image

from lepton_model.artifacts import METADATA_FILE, ModelMetadata, read_metadata
from lepton_model.classifier import Classifier, load_classifier
from lepton_model.errors import ArtifactError, ImageError, NotAnImageError

if TYPE_CHECKING:
    from conftest import ExportedModel, HeldOut

LABELS = ("cat", "dog", "eel", "fox")


class FixedPredictor:
    """A runtime that answers every image with the same probabilities."""

    runtime = "fixed"

    def __init__(self, row: list[float], input_shape: tuple[int, int, int] = (28, 28, 1)) -> None:
        self.row = np.asarray(row, dtype=np.float32)
        self.input_shape = input_shape
        self.num_classes = len(row)

    def predict(self, batch: np.ndarray) -> np.ndarray:
        return np.tile(self.row, (len(batch), 1))


@pytest.fixture
def metadata(tiny_artifact: ExportedModel) -> ModelMetadata:
    """The tiny artifact's metadata relabelled with four animal classes."""
    return replace(tiny_artifact.metadata, labels=LABELS)


def blank_batch(size: int) -> np.ndarray:
    return np.zeros((size, 28, 28, 1), dtype=np.float32)


def test_top_k_is_ordered_by_confidence_with_labels_from_metadata(metadata: ModelMetadata) -> None:
    classifier = Classifier(metadata, FixedPredictor([0.1, 0.2, 0.6, 0.05]), top_k=3)

    (prediction,) = classifier.classify(blank_batch(1))

    assert prediction.label == "eel"
    assert prediction.confidence == pytest.approx(0.6)
    assert [label for label, _ in prediction.top_k] == ["eel", "dog", "cat"]
    confidences = [confidence for _, confidence in prediction.top_k]
    assert confidences == sorted(confidences, reverse=True)


@pytest.mark.parametrize(("top_k", "expected"), [(0, 1), (1, 1), (4, 4), (50, 4)])
def test_top_k_is_clamped_to_the_label_count(
    top_k: int, expected: int, metadata: ModelMetadata
) -> None:
    classifier = Classifier(metadata, FixedPredictor([0.4, 0.3, 0.2, 0.1]), top_k=top_k)

    (prediction,) = classifier.classify(blank_batch(1))

    assert len(prediction.top_k) == expected


@settings(
    max_examples=200, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture]
)
@given(
    rows=st.lists(
        st.lists(st.floats(0.0, 1.0, width=32, allow_subnormal=False), min_size=4, max_size=4),
        min_size=1,
        max_size=5,
    ),
    top_k=st.integers(1, 4),
)
def test_top_k_holds_each_rows_largest_confidences_in_order(
    rows: list[list[float]], top_k: int, metadata: ModelMetadata
) -> None:
    batch = np.asarray(rows, dtype=np.float32)
    classifier = Classifier(metadata, FixedPredictor(rows[0]), top_k=top_k)

    predictions = classifier.predictions(batch)

    assert len(predictions) == len(rows)
    for row, prediction in zip(batch.tolist(), predictions, strict=True):
        expected = sorted(row, reverse=True)[:top_k]
        assert [conf for _, conf in prediction.top_k] == [round(v, 6) for v in expected]
        for label, conf in prediction.top_k:
            assert round(row[LABELS.index(label)], 6) == conf
        assert len({label for label, _ in prediction.top_k}) == top_k
        assert (prediction.label, prediction.confidence) == prediction.top_k[0]


def test_one_prediction_per_image(metadata: ModelMetadata) -> None:
    classifier = Classifier(metadata, FixedPredictor([0.4, 0.3, 0.2, 0.1]))

    assert len(classifier.classify(blank_batch(5))) == 5


def test_prediction_serialises_to_the_http_answer_shape(metadata: ModelMetadata) -> None:
    classifier = Classifier(metadata, FixedPredictor([0.1, 0.7, 0.15, 0.05]), top_k=2)

    (prediction,) = classifier.classify(blank_batch(1))

    assert json.loads(json.dumps(prediction.to_dict())) == {
        "label": "dog",
        "confidence": pytest.approx(0.7),
        "top_k": [
            {"label": "dog", "confidence": pytest.approx(0.7)},
            {"label": "eel", "confidence": pytest.approx(0.15)},
        ],
    }


@pytest.mark.parametrize(
    "shape",
    [(28, 28, 1), (1, 28, 28), (1, 32, 32, 1), (1, 28, 28, 3), (2, 28, 28, 1, 1)],
    ids=["no-batch-axis", "no-channel-axis", "wrong-size", "wrong-channels", "five-axes"],
)
def test_a_wrong_input_shape_is_an_image_error(
    shape: tuple[int, ...], metadata: ModelMetadata
) -> None:
    classifier = Classifier(metadata, FixedPredictor([0.25] * 4))

    with pytest.raises(ImageError, match=r"\(n, 28, 28, 1\)"):
        classifier.classify(np.zeros(shape, dtype=np.float32))


def test_a_runtime_with_another_input_shape_is_refused(metadata: ModelMetadata) -> None:
    with pytest.raises(ArtifactError, match=r"metadata\.json says"):
        Classifier(metadata, FixedPredictor([0.25] * 4, input_shape=(32, 32, 1)))


def test_a_runtime_with_another_class_count_is_refused(metadata: ModelMetadata) -> None:
    with pytest.raises(ArtifactError, match="3 outputs"):
        Classifier(metadata, FixedPredictor([0.5, 0.3, 0.2]))


def test_load_classifier_refuses_metadata_with_too_few_labels(tiny_artifact_copy: Path) -> None:
    path = tiny_artifact_copy / METADATA_FILE
    data = json.loads(path.read_text())
    path.write_text(json.dumps({**data, "labels": ["0", "1"]}))

    with pytest.raises(ArtifactError, match="labels"):
        load_classifier(tiny_artifact_copy)


def test_load_classifier_reads_name_version_and_runtime(tiny_artifact: ExportedModel) -> None:
    classifier = load_classifier(tiny_artifact.directory, top_k=2)

    assert (classifier.name, classifier.version) == ("tiny", "v1")
    assert classifier.input_shape == (28, 28, 1)
    assert classifier.predictor.runtime == "litert"
    assert classifier.metadata == read_metadata(tiny_artifact.directory)


def test_classify_images_decodes_with_the_models_preprocessing(
    tiny_artifact: ExportedModel, tiny_files: list[tuple[str, bytes]]
) -> None:
    classifier = load_classifier(tiny_artifact.directory)
    images = [data for _, data in tiny_files[:4]]

    predictions = classifier.classify_images(images)
    direct = classifier.classify(np.stack([classifier.decode(data) for data in images]))

    assert predictions == direct
    assert {p.label for p in predictions} <= {"0", "1", "2"}


def test_classify_images_raises_the_decoders_error(tiny_artifact: ExportedModel) -> None:
    classifier = load_classifier(tiny_artifact.directory)

    with pytest.raises(NotAnImageError):
        classifier.classify_images([b"not an image"])


# -- the trained digits model on renderings it never saw (slow) ---------------------------------


def _encode(image: Image.Image, image_format: str, **options: object) -> bytes:
    buffer = io.BytesIO()
    image.save(buffer, image_format, **options)
    return buffer.getvalue()


def _upscaled(pixels: np.ndarray, size: int, resample: Image.Resampling) -> Image.Image:
    """An 8x8 digit (0..16) rendered bright-on-black at `size`x`size`."""
    scaled = (pixels.astype(np.float32) * (255.0 / 16.0)).round().astype(np.uint8)
    return Image.fromarray(scaled, mode="L").resize((size, size), resample)


def _alpha_ink(image: Image.Image) -> Image.Image:
    """Black colour everywhere; the digit lives in the alpha channel only."""
    black = Image.new("L", image.size, 0)
    return Image.merge("RGBA", [black, black, black, image])


def _exif_rotated(image: Image.Image, orientation: int, transpose: Image.Transpose) -> bytes:
    exif = Image.Exif()
    exif[0x0112] = orientation
    stored = image.convert("RGB").transpose(transpose)
    return _encode(stored, "JPEG", quality=90, exif=exif.tobytes())


def _framed(image: Image.Image, canvas: int, at: tuple[int, int] | None = None) -> Image.Image:
    """The digit pasted on a larger black canvas (centred, or at `at`), MNIST-style margins."""
    frame = Image.new("L", (canvas, canvas), 0)
    frame.paste(image, at or ((canvas - image.width) // 2, (canvas - image.height) // 2))
    return frame


NEAREST, BICUBIC = Image.Resampling.NEAREST, Image.Resampling.BICUBIC
RENDERINGS: dict[str, Callable[[np.ndarray], bytes]] = {
    "png-64-nearest": lambda d: _encode(_upscaled(d, 64, NEAREST), "PNG"),
    "png-64-bicubic": lambda d: _encode(_upscaled(d, 64, BICUBIC), "PNG"),
    "png-200-nearest": lambda d: _encode(_upscaled(d, 200, NEAREST), "PNG"),
    "png-200-bicubic": lambda d: _encode(_upscaled(d, 200, BICUBIC), "PNG"),
    "rgb-jpeg-28": lambda d: _encode(_upscaled(d, 28, BICUBIC).convert("RGB"), "JPEG", quality=90),
    "rgb-jpeg-200": lambda d: _encode(_upscaled(d, 200, BICUBIC).convert("RGB"), "JPEG"),
    "inverted-png": lambda d: _encode(
        Image.eval(_upscaled(d, 56, BICUBIC), lambda v: 255 - v), "PNG"
    ),
    "inverted-rgb-jpeg": lambda d: _encode(
        Image.eval(_upscaled(d, 64, BICUBIC), lambda v: 255 - v).convert("RGB"), "JPEG"
    ),
    "rgba-png-ink-in-alpha": lambda d: _encode(_alpha_ink(_upscaled(d, 64, BICUBIC)), "PNG"),
    "exif-6-jpeg": lambda d: _exif_rotated(_upscaled(d, 96, BICUBIC), 6, Image.Transpose.ROTATE_90),
    "exif-8-jpeg": lambda d: _exif_rotated(
        _upscaled(d, 96, BICUBIC), 8, Image.Transpose.ROTATE_270
    ),
    "png-28-with-margins": lambda d: _encode(_framed(_upscaled(d, 20, BICUBIC), 28), "PNG"),
    "png-120-off-centre": lambda d: _encode(
        _framed(_upscaled(d, 48, BICUBIC), 120, at=(8, 60)), "PNG"
    ),
    "dark-on-white-jpeg-with-margins": lambda d: _encode(
        Image.eval(_framed(_upscaled(d, 40, BICUBIC), 64), lambda v: 255 - v).convert("RGB"),
        "JPEG",
    ),
}


@pytest.mark.slow
@pytest.mark.parametrize("rendering", list(RENDERINGS))
def test_digits_model_reads_held_out_digits_rendered_another_way(
    rendering: str, digits_artifact: ExportedModel, held_out_digits: HeldOut
) -> None:
    """The served path (decoder + LiteRT) on validation digits it was never trained on."""
    classifier = load_classifier(digits_artifact.directory)
    render = RENDERINGS[rendering]

    predictions = classifier.classify_images([render(pixels) for pixels in held_out_digits.pixels])

    predicted = np.array([int(p.label) for p in predictions])
    accuracy = float((predicted == held_out_digits.labels).mean())
    print(f"{rendering}: {accuracy:.4f} on {len(predicted)} held-out digits")
    assert accuracy >= 0.95, f"{rendering}: {accuracy:.3f}"


@pytest.mark.slow
def test_served_path_matches_training_inputs_on_the_held_out_split(
    digits_artifact: ExportedModel, held_out_digits: HeldOut
) -> None:
    """Classifying the validation arrays through LiteRT reproduces training's accuracy."""
    classifier = load_classifier(digits_artifact.directory)

    predictions = classifier.classify(held_out_digits.images)

    predicted = np.array([int(p.label) for p in predictions])
    accuracy = float((predicted == held_out_digits.labels).mean())
    assert accuracy == pytest.approx(digits_artifact.trained.evaluation.accuracy)
