"""The bundled UCI digits and their renderings."""

from __future__ import annotations

import io
from pathlib import Path

import numpy as np
from PIL import Image

from lepton_model import datasets, digits
from lepton_model.datasets import Dataset


def test_bundled_digits_are_1797_8x8_images_of_ten_classes() -> None:
    images, labels = digits.load_digits()

    assert images.shape == (1797, 8, 8) and images.dtype == np.uint8
    assert images.min() == 0 and images.max() == 16
    assert sorted(set(labels.tolist())) == list(range(10))
    assert np.bincount(labels).min() >= 170


def test_render_digit_gives_bright_ink_on_black_at_the_requested_size() -> None:
    images, _ = digits.load_digits()

    for size in (8, 28, 64):
        rendered = digits.render_digit(images[0], size)
        pixels = np.asarray(rendered)
        assert rendered.mode == "L" and rendered.size == (size, size)
        assert pixels.max() > 200
        assert np.median(np.concatenate([pixels[0], pixels[-1]])) < 30


def test_render_digit_variants_use_different_filters() -> None:
    images, _ = digits.load_digits()

    renders = [np.asarray(digits.render_digit(images[7], 28, variant)) for variant in range(3)]

    assert not np.array_equal(renders[0], renders[1])
    assert not np.array_equal(renders[1], renders[2])


def test_digit_files_are_label_folders_of_encoded_images() -> None:
    _, labels = digits.load_digits()
    chosen = np.array([0, 1, 500])

    pngs = digits.digit_files(indices=chosen)
    jpegs = digits.digit_files(size=40, indices=chosen, image_format="JPEG")

    assert [name for name, _ in pngs] == [f"{labels[i]}/{i:04d}.png" for i in chosen]
    assert [name for name, _ in jpegs] == [f"{labels[i]}/{i:04d}.jpg" for i in chosen]
    for (_, png), (_, jpeg) in zip(pngs, jpegs, strict=True):
        assert Image.open(io.BytesIO(png)).format == "PNG"
        assert Image.open(io.BytesIO(jpeg)).size == (40, 40)


def test_written_archive_and_folder_load_as_the_same_dataset(
    tiny_indices: np.ndarray, tiny_dataset: Dataset, tmp_path: Path
) -> None:
    archive = digits.write_digits_archive(tmp_path / "out" / "digits.zip", indices=tiny_indices)
    folder = digits.write_digits_directory(tmp_path / "folder", indices=tiny_indices)

    assert datasets.load_archive(archive).digest == tiny_dataset.digest
    assert datasets.load_directory(folder).digest == tiny_dataset.digest
