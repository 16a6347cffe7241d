"""The shared decoder: every format and mode, orientation, polarity, alpha, fit, limits, errors."""

from __future__ import annotations

import contextlib
import io
import struct
import tracemalloc
import zlib
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import pytest
from PIL import Image, JpegImagePlugin

from lepton_model.errors import (
    ImageError,
    ImageTooLargeError,
    LeptonModelError,
    NotAnImageError,
    UnsupportedImageError,
)
from lepton_model.imaging import ImageLimits, decode_image
from lepton_model.spec import Preprocessing

LOSSLESS = {"PNG", "GIF", "BMP", "TIFF"}
MiB = 1024 * 1024

# The fidelity tests compare whole pictures: cropping to content is tested on its own below.
NO_CROP = Preprocessing(crop=False)


def encode_image(image: Image.Image, image_format: str, **options: Any) -> bytes:
    """Save `image` in `image_format` and return the encoded bytes."""
    buffer = io.BytesIO()
    image.save(buffer, image_format, **options)
    return buffer.getvalue()


def as_input(glyph: np.ndarray) -> np.ndarray:
    """The decoder output expected for a 28x28 bright-on-dark glyph: itself, (28, 28, 1)."""
    return glyph.astype(np.float32)[..., np.newaxis]


def assert_same_picture(decoded: np.ndarray, expected: np.ndarray, lossy: bool) -> None:
    """Exact for lossless codecs; close on average (and nowhere wildly off) for lossy ones."""
    difference = np.abs(decoded - expected)
    if lossy:
        assert difference.mean() < 3.0, difference.mean()
        assert difference.max() < 64.0, difference.max()
    else:
        assert difference.max() <= 1.0, difference.max()


# -- formats and modes --------------------------------------------------------------------------


def _mode_image(glyph: np.ndarray, mode: str) -> Image.Image:
    """The glyph in `mode`, with pixel values that represent the same picture."""
    gray = Image.fromarray(glyph, mode="L")
    if mode == "I;16":
        return Image.fromarray(glyph.astype(np.uint16) * 257)
    if mode == "I 16-bit":
        return Image.fromarray(glyph.astype(np.int32) * 257, mode="I")
    if mode == "I 8-bit":
        return Image.fromarray(glyph.astype(np.int32), mode="I")
    if mode == "F 0..1":
        return Image.fromarray(glyph.astype(np.float32) / 255.0, mode="F")
    if mode == "F 0..255":
        return Image.fromarray(glyph.astype(np.float32), mode="F")
    if mode == "LA":
        return Image.merge("LA", [gray, Image.new("L", gray.size, 255)])
    if mode == "RGBA ink in alpha":
        white = Image.new("L", gray.size, 255)
        return Image.merge("RGBA", [white, white, white, gray])
    if mode == "P+transparency":
        # A two-colour palette: white ink, black background made transparent by the saver.
        image = Image.new("P", gray.size, 0)
        image.putpalette([0, 0, 0, 255, 255, 255])
        image.paste(1, mask=gray)
        return image
    return gray.convert(mode)


@dataclass(frozen=True)
class FormatCase:
    image_format: str
    mode: str
    stored_mode: str  # what Pillow reads back: proves the file really holds that mode
    options: tuple[tuple[str, object], ...] = ()

    @property
    def id(self) -> str:
        return f"{self.image_format}-{self.mode}"


FORMAT_CASES = [
    FormatCase("JPEG", "L", "L"),
    FormatCase("JPEG", "RGB", "RGB"),
    FormatCase("JPEG", "CMYK", "CMYK"),
    FormatCase("JPEG", "1", "L"),
    FormatCase("PNG", "L", "L"),
    FormatCase("PNG", "LA", "LA"),
    FormatCase("PNG", "P", "P"),
    FormatCase("PNG", "P+transparency", "P", (("transparency", 0),)),
    FormatCase("PNG", "RGB", "RGB"),
    FormatCase("PNG", "RGBA", "RGBA"),
    FormatCase("PNG", "1", "1"),
    FormatCase("PNG", "I;16", "I;16"),
    FormatCase("GIF", "P", "P"),
    FormatCase("GIF", "P+transparency", "P", (("transparency", 0),)),
    FormatCase("BMP", "L", "L"),
    FormatCase("BMP", "RGB", "RGB"),
    FormatCase("BMP", "1", "1"),
    FormatCase("WEBP", "RGB", "RGB"),
    FormatCase("WEBP", "RGBA ink in alpha", "RGBA", (("lossless", True),)),
    FormatCase("TIFF", "L", "L"),
    FormatCase("TIFF", "LA", "LA"),
    FormatCase("TIFF", "P", "P"),
    FormatCase("TIFF", "RGB", "RGB"),
    FormatCase("TIFF", "RGBA", "RGBA"),
    FormatCase("TIFF", "CMYK", "CMYK"),
    FormatCase("TIFF", "1", "1"),
    FormatCase("TIFF", "I;16", "I;16"),
    FormatCase("TIFF", "I 16-bit", "I"),
    FormatCase("TIFF", "I 8-bit", "I"),
    FormatCase("TIFF", "F 0..1", "F"),
    FormatCase("TIFF", "F 0..255", "F"),
    FormatCase("TIFF", "YCbCr", "YCbCr"),
]


@pytest.mark.parametrize("case", FORMAT_CASES, ids=lambda case: case.id)
def test_every_format_and_mode_decodes_to_the_same_picture(
    case: FormatCase, glyph: np.ndarray
) -> None:
    """Whatever the container and pixel mode, the model sees the same bright-on-dark glyph."""
    data = encode_image(_mode_image(glyph, case.mode), case.image_format, **dict(case.options))
    with Image.open(io.BytesIO(data)) as stored:
        assert (stored.format, stored.mode) == (case.image_format, case.stored_mode)
        if case.mode == "P+transparency":
            assert "transparency" in stored.info

    decoded = decode_image(data, NO_CROP)

    lossy = case.image_format not in LOSSLESS and dict(case.options).get("lossless") is not True
    assert_same_picture(decoded, as_input(glyph), lossy)


@pytest.mark.parametrize(
    "preprocessing",
    [
        Preprocessing(crop=False),
        Preprocessing(height=32, width=48, channels=3, crop=False),
        Preprocessing(8, 8, crop=False),
    ],
    ids=["28x28x1", "32x48x3", "8x8x1"],
)
def test_output_has_the_model_input_shape_as_float32_in_0_255(
    preprocessing: Preprocessing, glyph_image: Image.Image
) -> None:
    decoded = decode_image(encode_image(glyph_image.resize((90, 70)), "PNG"), preprocessing)

    assert decoded.shape == preprocessing.input_shape
    assert decoded.dtype == np.float32
    assert decoded.min() >= 0.0 and decoded.max() <= 255.0
    assert decoded.max() > 200.0  # the ink survives resizing


def test_animated_gif_decodes_its_first_frame(glyph: np.ndarray) -> None:
    first = Image.fromarray(glyph, mode="L")
    second = Image.fromarray(np.eye(28, dtype=np.uint8) * 255, mode="L")
    glyph_first = encode_image(first, "GIF", save_all=True, append_images=[second], duration=50)
    diagonal_first = encode_image(second, "GIF", save_all=True, append_images=[first], duration=50)
    with Image.open(io.BytesIO(glyph_first)) as animated:
        assert animated.n_frames == 2

    assert np.array_equal(decode_image(glyph_first, NO_CROP), as_input(glyph))
    assert np.array_equal(decode_image(diagonal_first, NO_CROP), as_input(np.asarray(second)))


# -- EXIF orientation ---------------------------------------------------------------------------

# EXIF orientation -> how the camera stored an upright picture (the inverse of the display fix).
STORED_AS = {
    3: Image.Transpose.ROTATE_180,
    6: Image.Transpose.ROTATE_90,
    8: Image.Transpose.ROTATE_270,
}


@pytest.mark.parametrize(
    ("image_format", "orientation"),
    [("JPEG", 6), ("JPEG", 8), ("JPEG", 3), ("PNG", 6), ("WEBP", 8), ("TIFF", 6)],
)
def test_exif_orientation_is_applied(
    image_format: str, orientation: int, glyph_image: Image.Image
) -> None:
    """A picture stored rotated with an orientation tag decodes upright."""
    exif = Image.Exif()
    exif[0x0112] = orientation
    stored = glyph_image.convert("RGB").transpose(STORED_AS[orientation])
    upright = decode_image(encode_image(glyph_image.convert("RGB"), image_format), NO_CROP)
    untagged = decode_image(encode_image(stored, image_format), NO_CROP)

    decoded = decode_image(encode_image(stored, image_format, exif=exif.tobytes()), NO_CROP)

    assert np.abs(untagged - upright).mean() > 30.0  # the glyph is not rotation-symmetric
    assert np.abs(decoded - upright).mean() < 3.0


# -- polarity, alpha and fit --------------------------------------------------------------------


@pytest.mark.parametrize(("image_format", "mode"), [("PNG", "L"), ("JPEG", "RGB"), ("BMP", "RGB")])
def test_dark_ink_on_white_reads_like_white_ink_on_black(
    image_format: str, mode: str, glyph: np.ndarray
) -> None:
    bright_on_dark = Image.fromarray(glyph, mode="L").convert(mode)
    dark_on_bright = Image.fromarray(255 - glyph, mode="L").convert(mode)

    normal = decode_image(encode_image(bright_on_dark, image_format), NO_CROP)
    inverted = decode_image(encode_image(dark_on_bright, image_format), NO_CROP)

    assert np.abs(normal - inverted).mean() < 3.0
    assert_same_picture(normal, as_input(glyph), lossy=image_format == "JPEG")


@pytest.mark.parametrize(
    ("background", "expected_border"), [("dark", 0.0), ("light", 255.0)], ids=["dark", "light"]
)
def test_background_setting_chooses_the_output_polarity(
    background: str, expected_border: float, glyph: np.ndarray
) -> None:
    for source in (glyph, 255 - glyph):
        decoded = decode_image(
            encode_image(Image.fromarray(source), "PNG"),
            Preprocessing(background=background, crop=False),
        )
        assert decoded[0, 0, 0] == expected_border


def test_background_keep_leaves_polarity_alone(glyph: np.ndarray) -> None:
    decoded = decode_image(
        encode_image(Image.fromarray(255 - glyph), "PNG"),
        Preprocessing(background="keep", crop=False),
    )

    assert np.array_equal(decoded, as_input(255 - glyph))


@pytest.mark.parametrize(
    ("mode", "colour"),
    [("RGBA", 0), ("RGBA", 255), ("RGBA", 128), ("LA", 0), ("LA", 255)],
    ids=["RGBA-black", "RGBA-white", "RGBA-grey", "LA-black", "LA-white"],
)
def test_ink_carried_only_by_alpha_is_visible(mode: str, colour: int, glyph: np.ndarray) -> None:
    """A transparent PNG whose colour is uniform and whose ink is only its alpha channel.

    The matte contrasts with the colour, so the ink keeps its full contrast against it.
    """
    bands = len(mode) - 1
    flat = [Image.new("L", (28, 28), colour)] * bands
    image = Image.merge(mode, [*flat, Image.fromarray(glyph)])
    contrast = max(colour, 255 - colour) / 255.0

    decoded = decode_image(encode_image(image, "PNG"), NO_CROP)

    assert_same_picture(decoded, np.rint(as_input(glyph) * contrast), lossy=False)


def test_fully_transparent_image_decodes_to_background() -> None:
    decoded = decode_image(
        encode_image(Image.new("RGBA", (28, 28), (255, 0, 0, 0)), "PNG"), NO_CROP
    )

    assert not decoded.any()


def _tall_square_picture(ink: int, background: int) -> Image.Image:
    """A 28-wide, 56-tall picture holding a filled 28x28 square in the middle."""
    pixels = np.full((56, 28), background, dtype=np.uint8)
    pixels[14:42, :] = ink
    return Image.fromarray(pixels)


@pytest.mark.parametrize(("ink", "background"), [(255, 0), (0, 255)], ids=["light-ink", "dark-ink"])
def test_pad_keeps_the_aspect_ratio_and_pads_with_the_background(ink: int, background: int) -> None:
    decoded = decode_image(encode_image(_tall_square_picture(ink, background), "PNG"), NO_CROP)[
        ..., 0
    ]

    bright = decoded > 127
    rows, cols = np.flatnonzero(bright.any(axis=1)), np.flatnonzero(bright.any(axis=0))
    assert len(rows) == len(cols) == 14  # still a square, half the side
    assert (rows[0], cols[0]) == (7, 7)  # centred
    assert decoded[:, :6].max() == 0 and decoded[:, 22:].max() == 0  # background padding


def test_stretch_fills_the_input_ignoring_the_aspect_ratio() -> None:
    decoded = decode_image(
        encode_image(_tall_square_picture(255, 0), "PNG"), Preprocessing(fit="stretch", crop=False)
    )[..., 0]

    bright = decoded > 127
    assert bright.all(axis=1).sum() == 14  # full-width rows: the square became a wide band
    assert bright.any(axis=0).all()


# -- JPEG draft ---------------------------------------------------------------------------------


@dataclass
class DraftCall:
    requested: tuple[int, int]
    before: tuple[int, int]
    after: tuple[int, int]


@pytest.fixture
def draft_calls(monkeypatch: pytest.MonkeyPatch) -> list[DraftCall]:
    """Record every JpegImageFile.draft call of the test (the real draft still runs)."""
    calls: list[DraftCall] = []
    real_draft = JpegImagePlugin.JpegImageFile.draft

    def spy(self: JpegImagePlugin.JpegImageFile, mode: str | None, size: tuple[int, int] | None):
        before = self.size
        result = real_draft(self, mode, size)
        calls.append(DraftCall(tuple(size or (0, 0)), before, self.size))
        return result

    monkeypatch.setattr(JpegImagePlugin.JpegImageFile, "draft", spy)
    return calls


def test_large_jpeg_is_decoded_at_reduced_scale_with_draft(
    glyph_image: Image.Image, draft_calls: list[DraftCall]
) -> None:
    """A 3200x2400 JPEG is DCT-scaled to 1/8 and decodes like the full-scale picture."""
    big = glyph_image.resize((2400, 2400), Image.Resampling.BICUBIC)
    canvas = Image.new("L", (3200, 2400), 0)
    canvas.paste(big, (400, 0))
    full_scale = decode_image(encode_image(canvas, "PNG"), NO_CROP)  # PNG: decoded at full size

    data = encode_image(canvas, "JPEG", quality=90)
    draft_calls.clear()

    decoded = decode_image(data, NO_CROP)

    assert len(draft_calls) == 1
    call = draft_calls[0]
    assert call.before == (3200, 2400)
    assert call.after == (400, 300)  # 1/8 scale: never below the requested size
    assert min(call.after) >= max(call.requested)
    assert np.abs(decoded - full_scale).mean() < 3.0


def test_small_jpeg_is_not_shrunk_below_the_model_input(
    glyph_image: Image.Image, draft_calls: list[DraftCall]
) -> None:
    decode_image(encode_image(glyph_image.resize((40, 40)), "JPEG"), NO_CROP)

    assert [call.after for call in draft_calls] == [(40, 40)]


# -- bad inputs ---------------------------------------------------------------------------------


def png_claiming(width: int, height: int) -> bytes:
    """A tiny PNG whose IHDR (with a valid CRC) claims width x height 8-bit gray pixels."""

    def chunk(kind: bytes, body: bytes) -> bytes:
        crc = zlib.crc32(kind + body) & 0xFFFFFFFF
        return struct.pack(">I", len(body)) + kind + body + struct.pack(">I", crc)

    header = struct.pack(">IIBBBBB", width, height, 8, 0, 0, 0, 0)
    pixels = zlib.compress(b"\0" * 1024)
    return (
        b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", header) + chunk(b"IDAT", pixels) + chunk(b"IEND", b"")
    )


def jpeg_claiming(width: int, height: int) -> bytes:
    """A real 16x16 JPEG whose SOF0 header is rewritten to claim width x height."""
    data = bytearray(encode_image(Image.new("L", (16, 16), 0), "JPEG"))
    sof = data.index(b"\xff\xc0")
    # SOF0: marker(2) length(2) precision(1) height(2) width(2)
    data[sof + 5 : sof + 9] = struct.pack(">HH", height, width)
    return bytes(data)


def _noise_png(size: int = 64) -> bytes:
    noise = np.random.default_rng(0).integers(0, 256, (size, size), dtype=np.uint8)
    return encode_image(Image.fromarray(noise), "PNG")


def _noise_jpeg(size: int = 64) -> bytes:
    noise = np.random.default_rng(0).integers(0, 256, (size, size), dtype=np.uint8)
    return encode_image(Image.fromarray(noise), "JPEG")


def _cut(data: bytes, keep: float) -> bytes:
    return data[: int(len(data) * keep)]


SVG = b'<svg xmlns="http://www.w3.org/2000/svg" width="9" height="9"><rect width="9"/></svg>'


@dataclass(frozen=True)
class BadCase:
    id: str
    make: Callable[[], bytes]
    error: type[ImageError]
    limits: ImageLimits = field(default_factory=ImageLimits)


BAD_CASES = [
    BadCase("empty", lambda: b"", NotAnImageError),
    BadCase("truncated-png", lambda: _cut(_noise_png(), 0.5), NotAnImageError),
    BadCase("truncated-png-header", lambda: _noise_png()[:20], NotAnImageError),
    BadCase("truncated-jpeg", lambda: _cut(_noise_jpeg(), 0.5), NotAnImageError),
    BadCase("truncated-jpeg-header", lambda: _noise_jpeg()[:12], NotAnImageError),
    BadCase("random-bytes", lambda: np.random.default_rng(7).bytes(4096), NotAnImageError),
    BadCase("text", lambda: b"label,pixels\n3,0 0 0 12 255\n" * 20, NotAnImageError),
    BadCase("html", lambda: b"<!DOCTYPE html><html><body><p>hi</p></body></html>", NotAnImageError),
    BadCase("svg", lambda: SVG, UnsupportedImageError),
    BadCase("svg-xml-prolog", lambda: b'<?xml version="1.0"?>\n' + SVG, UnsupportedImageError),
    BadCase(
        "svg-after-comment", lambda: b"\n  <!-- drawn by hand -->\n" + SVG, UnsupportedImageError
    ),
    BadCase("ico", lambda: encode_image(Image.new("RGB", (32, 32)), "ICO"), UnsupportedImageError),
    BadCase("ppm", lambda: encode_image(Image.new("RGB", (32, 32)), "PPM"), UnsupportedImageError),
    BadCase("pcx", lambda: encode_image(Image.new("RGB", (32, 32)), "PCX"), UnsupportedImageError),
    BadCase("tga", lambda: encode_image(Image.new("RGB", (32, 32)), "TGA"), UnsupportedImageError),
    BadCase("png-60000x60000", lambda: png_claiming(60_000, 60_000), ImageTooLargeError),
    BadCase("jpeg-65000x65000", lambda: jpeg_claiming(65_000, 65_000), ImageTooLargeError),
    # Under Pillow's own bomb threshold (~179 Mpx), over the decoder's 40 Mpx default.
    BadCase("png-8000x8000", lambda: png_claiming(8_000, 8_000), ImageTooLargeError),
    BadCase("over-byte-limit", _noise_png, ImageTooLargeError, ImageLimits(max_bytes=1024)),
    BadCase(
        "over-custom-pixel-limit", _noise_png, ImageTooLargeError, ImageLimits(max_pixels=4095)
    ),
]


@pytest.mark.parametrize("case", BAD_CASES, ids=lambda case: case.id)
def test_bad_input_raises_its_typed_error_without_allocating(case: BadCase) -> None:
    """Each bad input fails with its own error class, using well under 1 MiB of memory.

    tracemalloc sees Python and numpy allocations; Pillow's own allocator is checked in
    test_claimed_pixels_are_never_allocated.
    """
    data = case.make()
    tracemalloc.start()
    try:
        with pytest.raises(case.error) as raised:
            decode_image(data, limits=case.limits)
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()

    assert type(raised.value) is case.error
    assert str(raised.value)
    assert peak < MiB


@pytest.mark.parametrize(
    "make",
    [
        lambda: png_claiming(60_000, 60_000),
        lambda: jpeg_claiming(65_000, 65_000),
        lambda: png_claiming(8_000, 8_000),
    ],
    ids=["png-60000x60000", "jpeg-65000x65000", "png-8000x8000"],
)
def test_claimed_pixels_are_never_allocated(make: Callable[[], bytes]) -> None:
    """Pillow's allocator creates no image at all: the header alone refuses the bomb."""
    data = make()
    Image.core.reset_stats()

    with pytest.raises(ImageTooLargeError):
        decode_image(data)

    stats = Image.core.get_stats()
    assert stats["new_count"] == 0
    assert stats["allocated_blocks"] == 0


def test_pixel_limit_is_inclusive() -> None:
    data = encode_image(Image.new("L", (64, 64)), "PNG")

    assert decode_image(data, limits=ImageLimits(max_pixels=64 * 64)).shape == (28, 28, 1)
    with pytest.raises(ImageTooLargeError):
        decode_image(data, limits=ImageLimits(max_pixels=64 * 64 - 1))


def test_byte_limit_is_inclusive() -> None:
    data = encode_image(Image.new("L", (64, 64)), "PNG")

    assert decode_image(data, limits=ImageLimits(max_bytes=len(data))).shape == (28, 28, 1)
    with pytest.raises(ImageTooLargeError):
        decode_image(data, limits=ImageLimits(max_bytes=len(data) - 1))


@pytest.mark.parametrize("error", [NotAnImageError, UnsupportedImageError, ImageTooLargeError])
def test_image_errors_share_one_base_class_and_have_distinct_codes(
    error: type[ImageError],
) -> None:
    assert issubclass(error, ImageError)
    assert issubclass(error, LeptonModelError)
    assert error.code not in {ImageError.code, LeptonModelError.code}


def test_corrupt_pixel_data_after_a_valid_header_is_not_an_image() -> None:
    data = bytearray(encode_image(Image.fromarray(np.full((64, 64), 200, np.uint8)), "PNG"))
    idat = data.index(b"IDAT")
    data[idat + 4 : idat + 24] = bytes(20)  # garbage inside the compressed stream

    with pytest.raises(NotAnImageError):
        decode_image(bytes(data))


def test_a_gif_cut_at_any_byte_raises_only_image_errors() -> None:
    """Truncating a valid file anywhere yields an ImageError, never another exception."""
    data = encode_image(Image.fromarray(np.eye(32, dtype=np.uint8) * 255), "GIF")
    for end in range(1, len(data)):
        with contextlib.suppress(ImageError):
            decode_image(data[:end])


# Cropping to content


def _digit_on_canvas(canvas: int, inner: int, offset: tuple[int, int] | None = None) -> bytes:
    glyph = np.zeros((20, 12), dtype=np.uint8)
    glyph[2:18, 2:10] = 255
    glyph[5:15, 5:7] = 0  # a "0"-like ring: taller than wide
    ink = Image.fromarray(glyph).resize((inner * 12 // 20, inner), Image.Resampling.BILINEAR)
    picture = Image.new("L", (canvas, canvas), 0)
    x, y = offset or ((canvas - ink.width) // 2, (canvas - inner) // 2)
    picture.paste(ink, (x, y))
    return encode_image(picture, "PNG")


def test_margins_do_not_change_the_input() -> None:
    tight = decode_image(_digit_on_canvas(40, 40))
    framed = decode_image(_digit_on_canvas(120, 40))
    assert np.abs(tight - framed).mean() < 8


def test_position_on_the_canvas_does_not_change_the_input() -> None:
    centred = decode_image(_digit_on_canvas(120, 40))
    corner = decode_image(_digit_on_canvas(120, 40, offset=(3, 5)))
    assert np.abs(centred - corner).mean() < 8


def test_cropped_content_fills_the_input_height() -> None:
    decoded = decode_image(_digit_on_canvas(120, 40))[..., 0]
    rows_with_ink = np.flatnonzero((decoded > 64).any(axis=1))
    assert rows_with_ink[0] <= 1 and rows_with_ink[-1] >= 26


def test_a_blank_image_is_not_cropped() -> None:
    blank = encode_image(Image.new("L", (50, 30), 0), "PNG")
    assert np.array_equal(decode_image(blank), np.zeros((28, 28, 1), dtype=np.float32))


def test_models_saved_before_cropping_existed_are_served_without_it() -> None:
    assert Preprocessing.from_dict({"height": 28, "width": 28}).crop is False


# -- memory bounded by the model's input ----------------------------------------------------------


def test_an_image_costing_more_than_the_decode_limit_is_refused_before_decoding() -> None:
    data = encode_image(Image.new("RGBA", (1000, 1000)), "PNG")  # 4 MB of pixels
    Image.core.reset_stats()

    with pytest.raises(ImageTooLargeError, match=r"would take \d+\.\d MiB; the limit is 3\.0 MiB"):
        decode_image(data, limits=ImageLimits(max_decode_bytes=3 * MiB))
    assert Image.core.get_stats()["new_count"] == 0


def test_a_jpeg_costs_what_its_draft_scale_decodes() -> None:
    """A 4000x4000 baseline JPEG is decoded at 1/8 scale: far under a 16 MiB decode limit,
    though its full-size pixels alone would be 61 MiB."""
    data = encode_image(Image.new("RGB", (4000, 4000), (255, 255, 255)), "JPEG")

    assert decode_image(data, limits=ImageLimits(max_decode_bytes=16 * MiB)).shape == (28, 28, 1)


def test_images_decoded_at_once_share_the_decode_limit(monkeypatch: pytest.MonkeyPatch) -> None:
    """Eight threads decode 2000x2000 RGBA images (16 MiB of pixels each) under a 40 MiB limit:
    together they never hold more than it."""
    import threading
    from concurrent.futures import ThreadPoolExecutor

    from lepton_model import imaging

    held: list[int] = []
    lock = threading.Lock()
    reduce = imaging._reduce

    def reduce_and_record(image: Image.Image) -> Image.Image:
        with lock:
            held.append(imaging.DECODE_BUDGET.held)
        return reduce(image)

    monkeypatch.setattr(imaging, "_reduce", reduce_and_record)
    data = encode_image(Image.new("RGBA", (2000, 2000), (0, 0, 0, 255)), "PNG")
    limits = ImageLimits(max_decode_bytes=40 * MiB)
    with ThreadPoolExecutor(8) as pool:
        shapes = list(pool.map(lambda _: decode_image(data, limits=limits).shape, range(16)))

    assert shapes == [(28, 28, 1)] * 16
    assert max(held) <= 40 * MiB
    assert imaging.DECODE_BUDGET.held == 0


def test_a_one_pixel_high_strip_of_content_is_padded_not_stretched() -> None:
    """39000x1000 with a bar across: the input holds a faint thin line across its middle."""
    image = Image.new("L", (39_000, 1000), 0)
    image.paste(255, (0, 400, 39_000, 600))
    array = decode_image(encode_image(image, "PNG"), Preprocessing(crop=False))[..., 0]

    rows_with_ink = np.flatnonzero(array.max(axis=1) > 10)
    assert 1 <= rows_with_ink.size <= 2
    assert (array[rows_with_ink].min(axis=1) > 10).all()  # across the whole width
    assert abs(int(rows_with_ink.mean()) - 14) <= 1


# -- small images: border and content box found in Python --------------------------------------


def _small_images() -> list[bytes]:
    rng = np.random.default_rng(5)
    images = [
        _digit_on_canvas(40, 30),
        _digit_on_canvas(64, 20, offset=(1, 40)),
        encode_image(Image.new("L", (50, 30), 0), "PNG"),
        encode_image(Image.fromarray(rng.integers(0, 256, (1, 37), dtype=np.uint8)), "PNG"),
        encode_image(Image.fromarray(rng.integers(0, 256, (23, 1), dtype=np.uint8)), "PNG"),
    ]
    for size, background in (((29, 17), 0), ((17, 29), 255), ((64, 64), 230), ((7, 60), 20)):
        pixels = np.full((size[1], size[0], 3), background, dtype=np.uint8)
        pixels[size[1] // 4 : size[1] // 2, size[0] // 3 : size[0] - 2] = (255 - background, 9, 99)
        images.append(encode_image(Image.fromarray(pixels), "PNG"))
    return images


@pytest.mark.parametrize(
    "preprocessing",
    [
        Preprocessing(),
        Preprocessing(height=20, width=32, channels=3, background="light"),
        Preprocessing(height=64, width=64, background="keep", fit="stretch", crop=False),
        Preprocessing(height=8, width=8, channels=3, crop=False),
    ],
    ids=["28x28x1", "20x32x3-light", "64x64x1-stretch", "8x8x3"],
)
def test_small_images_decode_as_the_general_path_decodes_them(
    preprocessing: Preprocessing, monkeypatch: pytest.MonkeyPatch
) -> None:
    """In images up to _SMALL_SIDE pixels a side the content's columns are found, and the
    border's median sorted, in Python: the numpy calls that do it for larger images agree."""
    from lepton_model import imaging

    images = _small_images()
    small = [decode_image(data, preprocessing) for data in images]
    monkeypatch.setattr(imaging, "_SMALL_SIDE", 0)
    monkeypatch.setattr(imaging, "_SORT_IN_PYTHON", 0)
    general = [decode_image(data, preprocessing) for data in images]

    for fast, slow in zip(small, general, strict=True):
        assert fast.dtype == slow.dtype and np.array_equal(fast, slow)
