"""Property-based tests of the decoder: whatever the bytes, decode_image gives the model's input
or raises an ImageError, and the structure check raises nothing but ImageTooLargeError."""

from __future__ import annotations

import contextlib
import io

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from PIL import Image

from lepton_model.errors import ImageError, ImageTooLargeError
from lepton_model.image_structure import check_structure
from lepton_model.imaging import ImageLimits, decode_image
from lepton_model.spec import Preprocessing

pytestmark = pytest.mark.filterwarnings("ignore::UserWarning")  # Pillow on corrupt TIFF tags

CHECKED = settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow])
LIMITS = ImageLimits(max_bytes=64 * 1024, max_pixels=1_000_000, max_segments=64)


def _encode(mode: str, size: tuple[int, int], image_format: str) -> bytes:
    buffer = io.BytesIO()
    pixels = np.random.default_rng(size[0] * size[1]).integers(0, 256, (size[1], size[0], 4))
    image = Image.fromarray(pixels.astype(np.uint8), "RGBA").convert(mode)
    options = {"progressive": True} if image_format == "JPEG" and size[0] % 2 else {}
    image.save(buffer, image_format, **options)
    return buffer.getvalue()


SEEDS = [
    _encode(mode, size, image_format)
    for image_format, modes in {
        "PNG": ("L", "RGBA", "P", "I;16", "1", "LA"),
        "JPEG": ("L", "RGB", "CMYK"),
        "GIF": ("P",),
        "BMP": ("RGB", "P"),
        "WEBP": ("RGBA",),
        "TIFF": ("F", "I", "RGB"),
    }.items()
    for mode in modes
    for size in ((3, 5), (17, 9))
]


@st.composite
def mutated_images(draw: st.DrawFn) -> bytes:
    """A real image with bytes overwritten, cut short, or a run of bytes inserted."""
    data = bytearray(draw(st.sampled_from(SEEDS)))
    for _ in range(draw(st.integers(0, 6))):
        position = draw(st.integers(0, len(data) - 1))
        data[position] = draw(st.integers(0, 255))
    if draw(st.booleans()):
        position = draw(st.integers(0, len(data)))
        data[position:position] = draw(st.binary(max_size=64))
    if draw(st.booleans()):
        data = data[: draw(st.integers(0, len(data)))]
    return bytes(data)


signatures = st.sampled_from(
    [b"\x89PNG\r\n\x1a\n", b"\xff\xd8", b"GIF89a", b"II*\x00", b"MM\x00*", b"BM", b"RIFF"]
)
prefixed = st.builds(lambda head, tail: head + tail, signatures, st.binary(max_size=2048))
preprocessing = st.builds(
    Preprocessing,
    height=st.integers(4, 40),
    width=st.integers(4, 40),
    channels=st.sampled_from([1, 3]),
    background=st.sampled_from(["dark", "light", "keep"]),
    fit=st.sampled_from(["pad", "stretch"]),
    crop=st.booleans(),
)


@CHECKED
@given(data=st.one_of(mutated_images(), prefixed, st.binary(max_size=512)), prep=preprocessing)
def test_any_bytes_decode_to_the_input_shape_or_raise_an_image_error(
    data: bytes, prep: Preprocessing
) -> None:
    try:
        array = decode_image(data, prep, LIMITS)
    except ImageError:
        return
    assert array.shape == prep.input_shape
    assert array.dtype == np.float32
    assert float(array.min()) >= 0.0 and float(array.max()) <= 255.0


@CHECKED
@given(data=st.one_of(mutated_images(), prefixed))
def test_the_structure_check_raises_only_too_large(data: bytes) -> None:
    with contextlib.suppress(ImageTooLargeError):
        check_structure(data, 64)


@CHECKED
@given(
    width=st.integers(1, 3000),
    height=st.integers(1, 3000),
    prep=preprocessing,
)
def test_every_aspect_ratio_fits_the_input(width: int, height: int, prep: Preprocessing) -> None:
    """Extreme shapes (one pixel high, thousands wide) are reduced and padded to the input."""
    buffer = io.BytesIO()
    image = Image.new("L", (width, height), 0)
    image.paste(255, (width // 3, height // 3, max(width // 3 + 1, width // 2), height))
    image.save(buffer, "PNG")
    array = decode_image(buffer.getvalue(), prep)
    assert array.shape == prep.input_shape
