"""Counting an image's container structure before Pillow parses it (image_structure)."""

from __future__ import annotations

import io

import pytest
from PIL import Image

from hostile_images import (
    _bmp_rle8,
    _gif_with_comments,
    _jpeg_with_junk,
    _jpeg_with_markers,
    _png_with_chunks,
    _tiff_of_strips,
)
from lepton_model.errors import ImageTooLargeError
from lepton_model.image_structure import MAX_JPEG_SCANS, RUNS_PER_SEGMENT, check_structure


def _encode(image: Image.Image, image_format: str, **options: object) -> bytes:
    buffer = io.BytesIO()
    image.save(buffer, image_format, **options)
    return buffer.getvalue()


@pytest.mark.parametrize(
    "data",
    [
        _encode(Image.effect_noise((3000, 2000), 60).convert("L"), "PNG"),
        _encode(Image.effect_noise((2000, 2000), 60).convert("RGB"), "JPEG", progressive=True),
        _encode(Image.new("P", (500, 500)), "GIF", comment=b"x" * 5000),
        _encode(Image.new("RGB", (400, 300)), "TIFF"),
        _encode(Image.new("RGB", (400, 300)), "BMP"),
        _encode(Image.new("RGB", (40, 30)), "WEBP"),
    ],
    ids=["png-6mp-noise", "progressive-jpeg", "gif-with-comment", "tiff", "bmp", "webp"],
)
def test_real_images_are_well_within_the_limit(data: bytes) -> None:
    check_structure(data, 100)


@pytest.mark.parametrize(
    ("build", "what"),
    [
        (_png_with_chunks, "chunks"),
        (_jpeg_with_markers, "markers"),
        (_jpeg_with_junk, "markers, fill bytes"),
        (_gif_with_comments, "blocks before its first frame"),
        (_tiff_of_strips, "strips"),
    ],
    ids=["png", "jpeg-markers", "jpeg-junk", "gif", "tiff"],
)
def test_structure_beyond_the_limit_is_refused_naming_it(build, what: str) -> None:
    with pytest.raises(ImageTooLargeError, match=f"more than 50 {what}.*the limit is 50"):
        check_structure(build(60), 50)


@pytest.mark.parametrize(
    ("build", "count"),
    [(_png_with_chunks, 45), (_gif_with_comments, 15), (_tiff_of_strips, 50)],
    ids=["png", "gif-3-blocks-each", "tiff"],
)
def test_structure_at_the_limit_is_admitted(build, count: int) -> None:
    check_structure(build(count), 50)


def test_a_jpeg_with_more_scans_than_libjpeg_should_walk_is_refused() -> None:
    jpeg = _encode(Image.new("L", (8, 8)), "JPEG")
    many_scans = jpeg[:-2] + b"\xff\xda\x00\x02" * (MAX_JPEG_SCANS + 1) + jpeg[-2:]
    with pytest.raises(ImageTooLargeError, match="scans"):
        check_structure(many_scans, 10_000)


def test_run_length_bmps_count_their_codes() -> None:
    data = _bmp_rle8(100, 10)  # 1010 two-byte codes
    check_structure(data, 1010 // RUNS_PER_SEGMENT + 1)
    with pytest.raises(ImageTooLargeError, match="run-length codes"):
        check_structure(data, 1010 // RUNS_PER_SEGMENT - 1)


def test_walking_stops_at_the_limit() -> None:
    """A hostile file costs the check at most the limit's steps, not the file's."""
    import time

    data = _png_with_chunks(1_000_000)
    started = time.perf_counter()
    with pytest.raises(ImageTooLargeError):
        check_structure(data, 100)
    assert time.perf_counter() - started < 0.5
