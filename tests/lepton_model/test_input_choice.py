"""The model input chosen from the data: colour and size, and why."""

from __future__ import annotations

import io

import numpy as np
from PIL import Image

from colour_shapes import colour_files
from lepton_model import digits
from lepton_model.datasets import DatasetLimits
from lepton_model.input_choice import MAX_SIDE, choose_input
from lepton_model.spec import Preprocessing


def _gray_files(side: int, count: int = 12) -> list[tuple[str, bytes]]:
    files = []
    for index in range(count):
        buffer = io.BytesIO()
        Image.new("L", (side, side + 7), 40 + index).save(buffer, "PNG")
        files.append((f"{index % 2}/{index}.png", buffer.getvalue()))
    return files


def test_the_bundled_digits_keep_the_seed_input() -> None:
    choice = choose_input(digits.digit_files(indices=np.arange(60)), Preprocessing())

    assert (choice.preprocessing.channels, choice.preprocessing.height) == (1, 28)
    assert "grayscale" in choice.reasons["channels"]
    assert "median shorter side is 28 px" in choice.reasons["image_size"]


def test_colour_images_keep_their_colour() -> None:
    choice = choose_input(colour_files(per_class=5), Preprocessing())

    assert choice.preprocessing.channels == 3
    assert "100% of the 20 images are in colour" in choice.reasons["channels"]
    assert choice.preprocessing.background == "keep"  # no inversion: red stays red


def test_the_input_size_follows_the_images_within_bounds() -> None:
    assert choose_input(_gray_files(48), Preprocessing()).preprocessing.height == 48
    large = choose_input(_gray_files(300), Preprocessing())
    assert large.preprocessing.height == large.preprocessing.width == MAX_SIDE
    assert choose_input(_gray_files(9), Preprocessing()).preprocessing.height == 28


def test_what_the_request_set_is_kept() -> None:
    base = Preprocessing(channels=1, height=20, width=20)

    choice = choose_input(
        colour_files(per_class=3),
        base,
        choose_channels=False,
        choose_size=False,
        choose_background=False,
    )

    assert choice.preprocessing == base
    assert choice.reasons == {}


def test_the_size_is_lowered_to_fit_the_decoded_dataset_limit() -> None:
    limits = DatasetLimits(max_decoded_bytes=12 * 40 * 40 * 4)

    choice = choose_input(_gray_files(64), Preprocessing(), limits=limits)

    assert choice.preprocessing.height == 40
    assert "lowered to 40 px" in choice.reasons["image_size"]


def test_files_that_are_not_images_are_left_to_the_decoding_pass() -> None:
    files = [*_gray_files(32), ("0/notes.png", b"not an image"), ("1/.DS_Store", b"x")]

    assert choose_input(files, Preprocessing()).preprocessing.height == 32
