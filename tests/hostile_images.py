"""Images built to cost a decoder memory and time: a few KB to a few MB each, made in a second.

Each entry says what a bounded decoder must do with it: classify it (it is large but affordable
once reduced while decoding) or refuse it as too large (its header or structure already says it
would cost more than the limits allow). Shared by the decoder's own memory tests and the
hostile-request suite against a real `lepton serve infer`.
"""

from __future__ import annotations

import io
import struct
import zlib
from collections.abc import Callable
from dataclasses import dataclass
from functools import cache

import numpy as np
from PIL import Image


def _encode(image: Image.Image, image_format: str, **options: object) -> bytes:
    buffer = io.BytesIO()
    image.save(buffer, image_format, **options)
    return buffer.getvalue()


def _png_chunk(kind: bytes, data: bytes) -> bytes:
    return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))


def _png_header_only(width: int, height: int, color_type: int = 6) -> bytes:
    """A PNG whose header claims width x height RGBA pixels, with one empty IDAT."""
    ihdr = struct.pack(">IIBBBBB", width, height, 8, color_type, 0, 0, 0)
    return (
        b"\x89PNG\r\n\x1a\n"
        + _png_chunk(b"IHDR", ihdr)
        + _png_chunk(b"IDAT", zlib.compress(b""))
        + _png_chunk(b"IEND", b"")
    )


def _small_png() -> bytes:
    return _encode(Image.new("L", (8, 8), 0), "PNG")


def _png_with_chunks(count: int) -> bytes:
    png = _small_png()
    header_end = 8 + 25  # signature + IHDR
    return png[:header_end] + _png_chunk(b"tEXt", b"k\x00v") * count + png[header_end:]


def _png_text_bomb() -> bytes:
    """200 zTXt chunks each inflating to 1 MiB: Pillow inflates text while opening."""
    png = _small_png()
    text = _png_chunk(b"zTXt", b"k\x00\x00" + zlib.compress(b"\x00" * (1 << 20), 9))
    return png[:33] + text * 200 + png[33:]


def _jpeg_with_markers(count: int) -> bytes:
    jpeg = _encode(Image.new("L", (8, 8), 0), "JPEG")
    return jpeg[:2] + b"\xff\xfe\x00\x02" * count + jpeg[2:]


def _jpeg_with_junk(size: int) -> bytes:
    jpeg = _encode(Image.new("L", (8, 8), 0), "JPEG")
    return jpeg[:2] + b"\x00" * size + jpeg[2:]


def _gif_with_comments(count: int) -> bytes:
    gif = _encode(Image.new("L", (8, 8), 0), "GIF")
    descriptor = gif.index(b"\x2c")
    return gif[:descriptor] + b"\x21\xfe\x01a\x00" * count + gif[descriptor:]


def _animated_gif() -> bytes:
    frames = [Image.new("P", (2000, 2000), index % 2) for index in range(40)]
    return _encode(frames[0], "GIF", save_all=True, append_images=frames[1:])


def _tiff_of_strips(strips: int) -> bytes:
    """A 1 x `strips` 8-bit TIFF with one row per strip: Pillow lists every strip at open."""
    entries: list[bytes] = []

    def entry(tag: int, kind: int, count: int, value: int) -> None:
        entries.append(struct.pack("<HHII", tag, kind, count, value))

    offsets = (8 + 8 * strips + np.arange(strips, dtype=np.uint32)).astype("<u4").tobytes()
    counts = np.ones(strips, dtype="<u4").tobytes()
    directory = 8 + 9 * strips
    entry(256, 4, 1, 1)
    entry(257, 4, 1, strips)
    entry(258, 3, 1, 8)
    entry(259, 3, 1, 1)
    entry(262, 3, 1, 1)
    entry(273, 4, strips, 8)
    entry(277, 3, 1, 1)
    entry(278, 4, 1, 1)
    entry(279, 4, strips, 8 + 4 * strips)
    table = struct.pack("<H", len(entries)) + b"".join(entries) + b"\x00\x00\x00\x00"
    return b"II*\x00" + struct.pack("<I", directory) + offsets + counts + b"\x00" * strips + table


def _bmp_rle8(width: int, height: int) -> bytes:
    """An RLE8 BMP coded as one-pixel runs: Pillow decodes run-length BMPs in Python."""
    rle = ((b"\x01\x07" * width) + b"\x00\x00") * height + b"\x00\x01"
    palette = b"".join(bytes((i, i, i, 0)) for i in range(256))
    info = struct.pack("<IiiHHIIiiII", 40, width, height, 1, 8, 1, len(rle), 2835, 2835, 256, 0)
    offset = 14 + 40 + len(palette)
    return b"BM" + struct.pack("<IHHI", offset + len(rle), 0, 0, offset) + info + palette + rle


def _exif_rotated_large() -> bytes:
    exif = Image.Exif()
    exif[0x0112] = 6
    return _encode(Image.new("RGB", (8000, 4000), (255, 255, 255)), "JPEG", exif=exif.tobytes())


def _transparent_palette() -> bytes:
    return _encode(Image.new("P", (6000, 6000), 0), "PNG", transparency=0)


@dataclass(frozen=True)
class Hostile:
    """A hostile image and what a bounded decoder does with it."""

    build: Callable[[], bytes]
    outcome: str  # "classified" or "refused"
    why: str


HOSTILE_IMAGES: dict[str, Hostile] = {
    "wide-png-39000x1000": Hostile(
        lambda: _encode(Image.new("L", (39000, 1000), 255), "PNG"),
        "classified",
        "40 KB; padding it to a square at full size took 1.67 GB",
    ),
    "rgba-png-6000x6000-transparent": Hostile(
        lambda: _encode(Image.new("RGBA", (6000, 6000), (0, 0, 0, 0)), "PNG"),
        "classified",
        "140 KB; alpha composited in float32 at full size took 2.2 GB",
    ),
    "palette-png-6000x6000-transparent": Hostile(
        _transparent_palette, "classified", "a palette converted to RGBA at full size"
    ),
    "gray16-png-6000x6000": Hostile(
        lambda: _encode(Image.new("I;16", (6000, 6000), 40000), "PNG"),
        "classified",
        "16-bit pixels scaled in float64 at full size",
    ),
    "bilevel-png-8000x5000": Hostile(
        lambda: _encode(Image.new("1", (8000, 5000), 1), "PNG"), "classified", "mode 1"
    ),
    "la-png-5000x5000": Hostile(
        lambda: _encode(Image.new("LA", (5000, 5000), (0, 0)), "PNG"), "classified", "mode LA"
    ),
    "tall-rgb-png-100x300000": Hostile(
        lambda: _encode(Image.new("RGB", (100, 300_000), (255, 255, 255)), "PNG"),
        "classified",
        "the other extreme aspect, in colour",
    ),
    "cmyk-jpeg-6000x6000": Hostile(
        lambda: _encode(Image.new("CMYK", (6000, 6000), (0, 0, 0, 0)), "JPEG"),
        "classified",
        "CMYK",
    ),
    "progressive-jpeg-6000x6000": Hostile(
        lambda: _encode(Image.new("RGB", (6000, 6000), (0, 0, 0)), "JPEG", progressive=True),
        "classified",
        "a progressive JPEG keeps every coefficient whatever the draft scale",
    ),
    "exif-rotated-jpeg-8000x4000": Hostile(
        _exif_rotated_large, "classified", "orientation applied after reducing, not before"
    ),
    "float-tiff-4000x4000": Hostile(
        lambda: _encode(Image.new("F", (4000, 4000), 0.5), "TIFF", compression="tiff_deflate"),
        "classified",
        "32-bit float pixels",
    ),
    "animated-gif-40-frames-2000x2000": Hostile(
        _animated_gif, "classified", "only the first frame is decoded"
    ),
    "webp-lossless-6000x6000": Hostile(
        lambda: _encode(Image.new("RGBA", (6000, 6000), (0, 0, 0, 0)), "WEBP", lossless=True),
        "refused",
        "1.4 KB; libwebp's buffers would take 550 MB",
    ),
    "png-header-claims-100000x100000": Hostile(
        lambda: _png_header_only(100_000, 100_000), "refused", "the pixel limit, from the header"
    ),
    "png-million-chunks": Hostile(
        lambda: _png_with_chunks(1_000_000), "refused", "15 MB of empty chunks took Pillow 5 s"
    ),
    "png-text-bomb": Hostile(_png_text_bomb, "refused", "200 MiB of compressed text"),
    "jpeg-four-million-markers": Hostile(
        lambda: _jpeg_with_markers(4_000_000), "refused", "16 MB of comment markers took 9 s"
    ),
    "jpeg-sixteen-megabytes-of-junk": Hostile(
        lambda: _jpeg_with_junk(16_000_000), "refused", "Pillow skips junk a byte at a time"
    ),
    "gif-three-million-comments": Hostile(
        lambda: _gif_with_comments(3_000_000), "refused", "15 MB of comment blocks took 4 s"
    ),
    "tiff-two-million-strips": Hostile(
        lambda: _tiff_of_strips(2_000_000), "refused", "took Pillow 20 s and 770 MB at open"
    ),
    "bmp-rle8-ten-million-runs": Hostile(
        lambda: _bmp_rle8(4000, 2500), "refused", "RLE decoded in Python took 5.6 s"
    ),
}


@cache
def hostile_image(name: str) -> bytes:
    """The bytes of HOSTILE_IMAGES[name], built once per process."""
    return HOSTILE_IMAGES[name].build()
