"""Image bytes -> model input array, shared by training and serving.

Memory is bounded by the model's input, not by the image. Before any pixel is decoded, the
header says what decoding may cost (`decode_cost`: the decoder's own buffers for that format and
mode); an image over the byte, pixel or cost limits is refused in microseconds, and the images
decoded at once in a process share one `DecodeBudget`. While decoding, JPEGs are scaled down by
libjpeg (draft); other formats are decoded once at full size and immediately reduced, strip by
strip, into an 8-bit working image of at most `WORKING_PIXELS` (any colour mode conversion
happens per strip). Everything after that (orientation, alpha, cropping to content, padding,
resizing) runs on the small working image in uint8. Every failure is a typed `ImageError`.
"""

from __future__ import annotations

import io
import math
import threading
import warnings
from collections.abc import Callable
from dataclasses import dataclass

import numpy as np
from PIL import Image, ImageOps, PngImagePlugin, UnidentifiedImageError

from lepton_model.errors import ImageTooLargeError, NotAnImageError, UnsupportedImageError
from lepton_model.image_structure import check_structure
from lepton_model.spec import Preprocessing

# MPO is how Pillow opens many camera JPEGs (JPEG plus a preview frame).
SUPPORTED_FORMATS = frozenset({"JPEG", "MPO", "PNG", "GIF", "BMP", "WEBP", "TIFF"})
_EXIF_ORIENTATION = 0x0112
# Our own limits are checked right after the header is read; Pillow's warning for images
# between its soft and hard limits would only be noise (and catching it per call is not
# thread-safe). Above twice its limit Pillow refuses by itself, which we report as too large.
warnings.filterwarnings("ignore", category=Image.DecompressionBombWarning, module="PIL.Image")
# Pillow inflates a PNG's compressed text chunks while opening it, up to 64 MiB in all by
# default; nothing here reads them, so a file may not make Pillow hold more than this.
PngImagePlugin.MAX_TEXT_MEMORY = min(PngImagePlugin.MAX_TEXT_MEMORY, 1024 * 1024)
_TEXT_MARKUP_PREFIXES = (b"<?xml", b"<svg", b"<!doctype svg", b"<!DOCTYPE svg")

# The working image every format is reduced into before anything else is done with it: large
# enough that cropping to content keeps a digit that fills 1/20 of a big canvas sharp at 28x28,
# small enough that its uint8 copies cost a few MiB.
WORKING_PIXELS = 1024 * 1024
# Conversions of a full-size image run over horizontal strips of about this many pixels.
_STRIP_PIXELS = 1024 * 1024
_HIGH_DEPTH = ("I;16", "I;16B", "I;16L", "I;16N", "I", "F")
_ALPHA = ("LA", "La", "PA", "RGBA", "RGBa")


@dataclass(frozen=True)
class ImageLimits:
    """Upper bounds on one image: encoded bytes, pixels (decoding time) and `max_decode_bytes`,
    the memory its decoding may take (which is also what all images decoded at once in a process
    may take together)."""

    max_bytes: int = 20 * 1024 * 1024
    max_pixels: int = 40_000_000
    max_decode_bytes: int = 160 * 1024 * 1024
    max_segments: int = 10_000  # chunks, markers, blocks or strips (image_structure)


DEFAULT_LIMITS = ImageLimits()


class DecodeBudget:
    """Bytes of decoder memory held by the images being decoded in this process right now.

    A decode holds its `decode_cost` while its full-size pixels exist; a decode that would take
    the process past the limit it is given waits for others to finish (one always runs).
    """

    def __init__(self) -> None:
        self._held = 0
        self._waiting = 0  # decodes waiting for others to give their bytes back
        self._lock = threading.Lock()
        self._changed = threading.Condition(self._lock)

    @property
    def held(self) -> int:
        return self._held

    def hold(self, cost: int, capacity: int) -> _Holding:
        """`with budget.hold(cost, capacity):` holds `cost` bytes for the block."""
        return _Holding(self, cost, capacity)

    def _take(self, cost: int, capacity: int) -> None:
        with self._lock:
            if self._held and self._held + cost > capacity:
                self._waiting += 1
                try:
                    while self._held and self._held + cost > capacity:
                        self._changed.wait()
                finally:
                    self._waiting -= 1
            self._held += cost

    def _give_back(self, cost: int) -> None:
        with self._lock:  # the condition's own lock, without its Python-level wrapper
            self._held -= cost
            if self._waiting:
                self._changed.notify_all()


class _Holding:
    """One decode's hold on the budget (a plain context manager: it runs for every image)."""

    __slots__ = ("_budget", "_capacity", "_cost")

    def __init__(self, budget: DecodeBudget, cost: int, capacity: int) -> None:
        self._budget, self._cost, self._capacity = budget, cost, capacity

    def __enter__(self) -> None:
        self._budget._take(self._cost, self._capacity)

    def __exit__(self, *exc: object) -> None:
        self._budget._give_back(self._cost)


DECODE_BUDGET = DecodeBudget()


def decode_image(
    data: bytes,
    preprocessing: Preprocessing | None = None,
    limits: ImageLimits = DEFAULT_LIMITS,
) -> np.ndarray:
    """Decode one encoded image into a float32 array of shape (height, width, channels), 0..255."""
    prep = preprocessing or Preprocessing()
    image = open_image(data, limits)
    header_size = image.size
    if image.format in ("JPEG", "MPO"):
        # DCT scaling: decode at 1/2, 1/4 or 1/8 size when the result is still >= the target.
        target = max(prep.height, prep.width)
        image.draft("RGB" if image.mode == "RGB" else image.mode, (target, target))
    cost = decode_cost(image, header_size)
    if cost > limits.max_decode_bytes:
        width, height = header_size
        raise ImageTooLargeError(
            f"decoding this {width}x{height} {image.format} ({image.mode}) would take "
            f"{_mib(cost)}; the limit is {_mib(limits.max_decode_bytes)}"
        )
    with DECODE_BUDGET.hold(cost, limits.max_decode_bytes):
        try:
            image.load()
            orientation = _orientation(image)
        except (OSError, SyntaxError, ValueError, Image.DecompressionBombError) as exc:
            raise NotAnImageError(f"the image data is truncated or corrupt ({exc})") from exc
        working = _reduce(image)
        del image  # the full-size pixels: the rest works on the small working image
    if orientation != 1:
        working.getexif()[_EXIF_ORIENTATION] = orientation  # the cached Exif exif_transpose reads
        working = ImageOps.exif_transpose(working)
    working = _to_channels(working, prep)
    # From here on the working image is read as bytes: the border and the content's box from
    # its gray bytes; a small image is cropped and padded on its bytes, a larger one as a uint8
    # array; Pillow is called again only when the result must be resized.
    gray_image = working if working.mode == "L" else working.convert("L")
    gray = gray_image.tobytes()
    width, height = working.size
    background = _border_level(gray, width, height)
    box = _content_box(gray, width, height, background) if prep.crop else None
    # Judged on the whole image's border, before cropping put ink at the edges.
    invert = prep.background != "keep" and (background > 127.5) == (prep.background == "dark")
    return _fit(working, gray if gray_image is working else None, box, prep, background, invert)


# Where Pillow finds a PNG's orientation: an eXIf chunk, an ImageMagick text chunk, XMP.
_PNG_ORIENTATION_SOURCES = frozenset(("exif", "Raw profile type exif", "XML:com.adobe.xmp", "xmp"))


def _orientation(image: Image.Image) -> int:
    """The EXIF orientation (1 = as stored). A PNG with none of the chunks Pillow reads it from
    is upright without building its Exif (most PNGs: ~10 µs a request)."""
    if image.format == "PNG" and _PNG_ORIENTATION_SOURCES.isdisjoint(image.info):
        return 1
    return image.getexif().get(_EXIF_ORIENTATION, 1)


def open_image(data: bytes, limits: ImageLimits = DEFAULT_LIMITS) -> Image.Image:
    """Identify `data` and check limits from its header; nothing is decoded yet."""
    if not data:
        raise NotAnImageError("the body is empty")
    if len(data) > limits.max_bytes:
        raise ImageTooLargeError(
            f"the image is {len(data)} bytes; the limit is {limits.max_bytes} bytes"
        )
    head = data[:256].lstrip()
    if head.startswith(_TEXT_MARKUP_PREFIXES) or b"<svg" in head:
        raise UnsupportedImageError("SVG and other vector formats are not supported")
    check_structure(data, limits.max_segments)
    webp = _webp_size(data)
    if webp is not None:  # Pillow allocates a WebP's canvas while opening it: check first
        _check_pixels(*webp, limits)
    try:
        image = Image.open(io.BytesIO(data))
    except Image.DecompressionBombError as exc:
        raise ImageTooLargeError(f"the image has too many pixels ({exc})") from exc
    except UnidentifiedImageError as exc:
        raise NotAnImageError("the data is not a recognised image") from exc
    except (OSError, SyntaxError, ValueError, EOFError) as exc:
        raise NotAnImageError(f"the image header is corrupt ({exc})") from exc
    if image.format not in SUPPORTED_FORMATS:
        raise UnsupportedImageError(
            f"{image.format} images are not supported; send JPEG, PNG, GIF, BMP, WebP or TIFF"
        )
    width, height = image.size
    if width < 1 or height < 1:
        raise NotAnImageError("the image has no pixels")
    _check_pixels(width, height, limits)
    return image


def _check_pixels(width: int, height: int, limits: ImageLimits) -> None:
    if width * height > limits.max_pixels:
        raise ImageTooLargeError(
            f"the image is {width}x{height} pixels; the limit is {limits.max_pixels} pixels"
        )


def _mib(size: int) -> str:
    return f"{size / (1024 * 1024):.1f} MiB"


def decode_cost(image: Image.Image, header_size: tuple[int, int] | None = None) -> int:
    """Bytes the decoder holds for `image` at its (drafted) size, from its header alone
    (`header_size`: the size before a JPEG draft).

    Pillow keeps a pixel in 1 byte (modes 1, L, P), 2 (16-bit) or 4 (everything else); a
    progressive JPEG also keeps every DCT coefficient (2 bytes a sample) whatever the draft
    scale; libwebp decodes into buffers of its own first; a full-size image is reduced strip by
    strip, and the strips' conversions add a little. Checked against VmHWM for every format
    in tests/lepton_model/test_imaging_memory.py.
    """
    width, height = image.size
    pixels = width * height
    per_pixel = 1 if image.mode in ("1", "L", "P") else 2 if image.mode.startswith("I;16") else 4
    cost = pixels * per_pixel
    if image.format in ("JPEG", "MPO"):
        if image.info.get("progressive") or image.info.get("progression"):
            full_width, full_height = header_size or image.size
            cost += full_width * full_height * 2 * _jpeg_samples_per_pixel(image)
    elif image.format == "WEBP":
        cost += pixels * 12  # libwebp's canvas and frame buffers, measured: 16 bytes a pixel
    return cost + _STRIP_PIXELS * 8


def _jpeg_samples_per_pixel(image: Image.Image) -> float:
    """DCT samples per pixel, all components together (4:2:0 colour: 1.5)."""
    layers = getattr(image, "layer", None) or []
    try:
        h_max = max(layer[1] for layer in layers)
        v_max = max(layer[2] for layer in layers)
        return sum(layer[1] * layer[2] for layer in layers) / (h_max * v_max)
    except (ValueError, TypeError, IndexError, ZeroDivisionError):
        return float(len(image.getbands()))


def _webp_size(data: bytes) -> tuple[int, int] | None:
    """A WebP's canvas size from its first chunk header (RIFF....WEBP + VP8/VP8L/VP8X).

    Written here because Pillow's WebP plugin allocates the canvas in `Image.open`, before a
    caller can see the size, and offers no public way to read it first.
    """
    if len(data) < 30 or data[:4] != b"RIFF" or data[8:12] != b"WEBP":
        return None
    chunk = data[12:16]
    if chunk == b"VP8X":
        return int.from_bytes(data[24:27], "little") + 1, int.from_bytes(data[27:30], "little") + 1
    if chunk == b"VP8L" and data[20] == 0x2F:
        bits = int.from_bytes(data[21:25], "little")
        return (bits & 0x3FFF) + 1, ((bits >> 14) & 0x3FFF) + 1
    if chunk == b"VP8 ":
        width = int.from_bytes(data[26:28], "little") & 0x3FFF
        height = int.from_bytes(data[28:30], "little") & 0x3FFF
        return width, height
    return None


# -- full size -> working image ------------------------------------------------------------------


def _reduce(image: Image.Image) -> Image.Image:
    """The image in an 8-bit mode (L, RGB, or premultiplied RGBa when it has alpha), reduced
    by an integer factor to at most WORKING_PIXELS, converting one strip at a time."""
    width, height = image.size
    if width * height <= WORKING_PIXELS and image.mode in ("L", "RGB"):
        return image  # already 8-bit and small enough: its own working image
    factor = max(1, math.ceil(math.sqrt(width * height / WORKING_PIXELS)))
    convert = _strip_converter(image)
    if factor == 1:
        return convert(image)
    rows = factor * max(1, _STRIP_PIXELS // (width * factor))
    out_size = (max(1, width // factor), max(1, height // factor))
    working: Image.Image | None = None
    for top in range(0, factor * out_size[1], rows):
        bottom = min(top + rows, factor * out_size[1])
        strip = convert(image.crop((0, top, factor * out_size[0], bottom))).reduce(factor)
        if working is None:
            working = Image.new(strip.mode, out_size)
        working.paste(strip, (0, top // factor))
    assert working is not None
    return working


def _strip_converter(image: Image.Image) -> Callable[[Image.Image], Image.Image]:
    """What turns a piece of `image` into its 8-bit working mode (decided once, for the whole
    image: the scale of 16/32-bit pixels comes from the whole image's extrema)."""
    mode = image.mode
    if mode in _HIGH_DEPTH:
        scale = 255.0 / _high_depth_top(image)

        def high_depth(piece: Image.Image) -> Image.Image:
            values = np.asarray(piece, dtype=np.float32) * np.float32(scale)
            np.clip(values, 0.0, 255.0, out=values)
            return Image.fromarray(np.rint(values).astype(np.uint8), mode="L")

        return high_depth
    if mode in _ALPHA or (mode == "P" and "transparency" in image.info):
        return _premultiplied
    if mode == "P":
        return lambda piece: piece.convert("RGB")
    if mode in ("L", "RGB"):
        return lambda piece: piece
    if mode == "1":
        return lambda piece: piece.convert("L")
    return lambda piece: piece.convert("RGB")  # CMYK, YCbCr, LAB, HSV


def _premultiplied(piece: Image.Image) -> Image.Image:
    """RGBa: averaging premultiplied pixels keeps colour and coverage exact while reducing."""
    return piece if piece.mode == "RGBa" else piece.convert("RGBA").convert("RGBa")


def _high_depth_top(image: Image.Image) -> float:
    """The value that maps to 255: 16-bit and 32-bit integers by their range, floats by
    whether they look like 0..1 (Pillow's own convert would clip instead)."""
    _, high = image.getextrema()
    if image.mode == "F":
        return 1.0 if high <= 1.0 else 255.0
    if image.mode.startswith("I;16") or high > 255:
        return 65535.0
    return 255.0


# -- working image -> model input (all at working size or smaller) -------------------------------


def _to_channels(image: Image.Image, prep: Preprocessing) -> Image.Image:
    """The working image in L or RGB, alpha composited onto a contrasting matte."""
    if image.mode == "RGBa":
        image = _composite_alpha(image)
    wanted = "L" if prep.channels == 1 else "RGB"
    return image if image.mode == wanted else image.convert(wanted)


def _composite_alpha(image: Image.Image) -> Image.Image:
    """Flatten premultiplied RGBa onto a background that contrasts with the visible pixels.

    A transparent PNG may carry its content in colour (opaque background) or in alpha only
    (ink on nothing); a contrasting matte keeps the ink visible in both cases.
    """
    rgba = np.asarray(image)
    alpha = rgba[..., 3]
    if int(alpha.min()) == 255:
        return image.convert("RGB")
    weight = float(alpha.sum(dtype=np.int64))
    # Premultiplied: the luminance sum is already weighted by alpha.
    luminance = rgba[..., :3].reshape(-1, 3) @ np.array([299, 587, 114], dtype=np.int64)
    ink = float(luminance.sum()) / 1000.0 / weight * 255.0 if weight > 0 else 0.0
    matte = 0 if ink >= 128.0 else 255
    # flat = premultiplied colour + matte x (1 - alpha), in uint16 so nothing overflows
    flat = rgba[..., :3].astype(np.uint16)
    flat += ((255 - alpha.astype(np.uint16)) * matte // 255)[..., np.newaxis]
    np.minimum(flat, 255, out=flat)
    return Image.fromarray(flat.astype(np.uint8), mode="RGB")


# In images at most this many pixels wide and high, the content's columns are found in Python,
# on their bytes: a few slices cost less than the numpy calls that do it for a large image.
_SMALL_SIDE = 64
# Up to this many values, Python sorts the border's ring faster than numpy is called.
_SORT_IN_PYTHON = 256


def _border_level(gray: bytes, width: int, height: int) -> int:
    """Median brightness of the outermost pixel ring of a width x height 8-bit image given as
    its bytes, row by row: its background. The ring is sliced from the bytes: the top and
    bottom rows, then the first and last columns between them (an image one pixel high or
    wide counts its one row or column twice)."""
    bottom = (height - 1) * width  # where the last row starts
    ring = gray[:width] + gray[bottom:] + gray[width:bottom:width]
    ring += gray[2 * width - 1 : bottom : width]
    if len(ring) <= _SORT_IN_PYTHON:
        return sorted(ring)[len(ring) // 2]
    return int(np.sort(np.frombuffer(ring, np.uint8))[len(ring) // 2])


# How far (of 255) a pixel must stand from the background to count as content when cropping:
# high enough to ignore JPEG noise and faint anti-aliasing, low enough to keep thin strokes.
_CONTENT_THRESHOLD = 64


_LEVELS = np.arange(256)
# Which gray levels count as content (1) or not (0), for each background level: one
# bytes.translate marks the content of a whole image.
_CONTENT = tuple(
    (np.abs(_LEVELS - background) > _CONTENT_THRESHOLD).astype(np.uint8).tobytes()
    for background in range(256)
)


def _content_box(
    gray: bytes, width: int, height: int, background: int
) -> tuple[int, int, int, int] | None:
    """The bounding box (left, top, right, bottom) of the pixels of a width x height 8-bit
    image (its bytes, row by row) that stand out from the background; None when none do."""
    content = gray.translate(_CONTENT[background])
    first = content.find(1)
    if first < 0:
        return None  # blank: nothing to centre on
    top, bottom = first // width, content.rfind(1) // width + 1
    rows = content[top * width : bottom * width]
    if width <= _SMALL_SIDE and height <= _SMALL_SIDE:
        # Column by column from each side (rows[x::width] is column x): some column has content.
        left, right = 0, width
        while 1 not in rows[left::width]:
            left += 1
        while 1 not in rows[right - 1 :: width]:
            right -= 1
        return left, top, right, bottom
    band = np.frombuffer(rows, np.uint8).reshape(bottom - top, width)
    columns = band.any(axis=0).tobytes()
    return columns.find(1), top, columns.rfind(1) + 1, bottom


_REDUCING_GAP = 3.0


def _canvas_pixels(width: int, height: int, prep: Preprocessing) -> float:
    """Pixels of the canvas that pads a width x height image to the target's aspect."""
    scale = max(width / prep.width, height / prep.height)
    return prep.width * prep.height * scale * scale


def _pad_reduction(width: int, height: int, prep: Preprocessing) -> int:
    """The factor a width x height image is reduced by before it is padded: the one the resize
    would use (its reducing_gap), so the padded canvas stays within a few times the target
    whatever the image's aspect."""
    factor = max(1, int(max(width / prep.width, height / prep.height) / _REDUCING_GAP))
    while _canvas_pixels(width // factor, height // factor, prep) > max(
        WORKING_PIXELS, 4 * prep.width * prep.height
    ):
        factor += 1
    return factor


def _padded_size(width: int, height: int, prep: Preprocessing) -> tuple[int, int]:
    """The canvas that pads a width x height image to the target's aspect."""
    scale = max(width / prep.width, height / prep.height)
    return max(width, round(prep.width * scale)), max(height, round(prep.height * scale))


def _fit(
    image: Image.Image,
    data: bytes | None,
    box: tuple[int, int, int, int] | None,
    prep: Preprocessing,
    background: int,
    invert: bool,
) -> np.ndarray:
    """Cut `image` (L or RGB; `data`: its bytes, when already read) to `box` and resize it to
    the model's input size; with fit='pad' the aspect ratio is kept and the rest of the input
    is filled with the background colour (on a canvas a few times the target). The answer is
    float32 (height, width, channels), 255 - each value when `invert`.

    The pixels stay bytes until the end (row slices cut and pad them), so a small image costs
    a few slices and one conversion to float32 instead of a numpy call per step.
    """
    mode, (stride, _) = image.mode, image.size
    channels = 1 if mode == "L" else 3
    stride *= channels  # bytes a row
    if data is None:
        data = image.tobytes()
    left, top, right, bottom = box or (0, 0, *image.size)
    width, height = right - left, bottom - top
    piece = (left * channels, top, right * channels, bottom)
    size = (width, height)
    if prep.fit == "pad" and width * prep.height != height * prep.width:
        factor = _pad_reduction(width, height, prep)
        if factor > 1:
            cut = _place(data, stride, piece, width * channels, height, 0, 0)
            reduced = _image(cut, mode, size).reduce(factor)
            data, (width, height) = reduced.tobytes(), reduced.size
            stride, piece = width * channels, (0, 0, width * channels, height)
        size = _padded_size(width, height, prep)
        at = (size[1] - height) // 2 * size[0] + (size[0] - width) // 2  # in pixels
        pixels = _place(data, stride, piece, size[0] * channels, size[1], at * channels, background)
    else:
        pixels = _place(data, stride, piece, width * channels, height, 0, 0)
    if size != (prep.width, prep.height):
        resized = _image(pixels, mode, size).resize(
            (prep.width, prep.height), Image.Resampling.BILINEAR, reducing_gap=_REDUCING_GAP
        )
        pixels = resized.tobytes()
    if invert:
        pixels = pixels.translate(_INVERTED)
    array = np.frombuffer(pixels, np.uint8).astype(np.float32)  # a writable copy
    return array.reshape(prep.height, prep.width, channels)


def _place(
    data: bytes,
    stride: int,
    piece: tuple[int, int, int, int],
    canvas_row: int,
    canvas_height: int,
    at: int,
    background: int,
) -> bytes:
    """The `piece` (left, top, right, bottom, in bytes of a row and rows) of an image whose
    rows are `stride` bytes (`data`), placed on a canvas of `canvas_height` rows of
    `canvas_row` bytes at byte `at`, the rest filled with `background`. With a canvas the size
    of the piece (`at` 0) this is the cut piece itself."""
    left, top, right, bottom = piece
    row = right - left
    fill = bytes((background,))
    after = canvas_row * canvas_height - at - (bottom - top - 1) * canvas_row - row
    if row == stride == canvas_row:  # whole rows, one slice
        pixels = data[top * stride : bottom * stride]
    else:
        rows = [
            data[start : start + row]
            for start in range(top * stride + left, bottom * stride, stride)
        ]
        pixels = (fill * (canvas_row - row)).join(rows)
    return b"".join((fill * at, pixels, fill * after)) if at or after else pixels


def _image(pixels: bytes, mode: str, size: tuple[int, int]) -> Image.Image:
    """An L or RGB Pillow image over pixel bytes (without a copy)."""
    return Image.frombuffer(mode, size, pixels, "raw", mode, 0, 1)


_INVERTED = bytes(range(255, -1, -1))
