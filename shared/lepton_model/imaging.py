"""Image bytes -> model input array, shared by training and serving.

Limits are checked from the header before any pixel is decoded, so a decompression bomb costs
microseconds, not gigabytes. Every failure is a typed `ImageError`.
"""

from __future__ import annotations

import io
import warnings
from dataclasses import dataclass

import numpy as np
from PIL import Image, ImageOps, UnidentifiedImageError

from lepton_model.errors import ImageTooLargeError, NotAnImageError, UnsupportedImageError
from lepton_model.spec import Preprocessing

# MPO is how Pillow opens many camera JPEGs (JPEG plus a preview frame).
SUPPORTED_FORMATS = frozenset({"JPEG", "MPO", "PNG", "GIF", "BMP", "WEBP", "TIFF"})
_EXIF_ORIENTATION = 0x0112
# Our own pixel limit is checked right after the header is read; Pillow's warning for images
# between its soft and hard limits would only be noise (and catching it per call is not
# thread-safe). Above twice its limit Pillow refuses by itself, which we report as too large.
warnings.filterwarnings("ignore", category=Image.DecompressionBombWarning, module="PIL.Image")
_TEXT_MARKUP_PREFIXES = (b"<?xml", b"<svg", b"<!doctype svg", b"<!DOCTYPE svg")


@dataclass(frozen=True)
class ImageLimits:
    """Upper bounds on encoded size and decoded pixel count (width x height x frames)."""

    max_bytes: int = 20 * 1024 * 1024
    max_pixels: int = 40_000_000


DEFAULT_LIMITS = ImageLimits()


def decode_image(
    data: bytes,
    preprocessing: Preprocessing | None = None,
    limits: ImageLimits = DEFAULT_LIMITS,
) -> np.ndarray:
    """Decode one encoded image into a float32 array of shape (height, width, channels), 0..255."""
    prep = preprocessing or Preprocessing()
    image = open_image(data, limits)
    target = max(prep.height, prep.width)
    if image.format in ("JPEG", "MPO"):
        # DCT scaling: decode at 1/2, 1/4 or 1/8 size when the result is still >= the target.
        image.draft("RGB" if image.mode == "RGB" else image.mode, (target, target))
    try:
        image.load()
        if image.getexif().get(_EXIF_ORIENTATION, 1) != 1:
            image = ImageOps.exif_transpose(image)
    except (OSError, SyntaxError, ValueError, Image.DecompressionBombError) as exc:
        raise NotAnImageError(f"the image data is truncated or corrupt ({exc})") from exc
    image = _to_channels(image, prep)
    pixels = np.asarray(image)
    gray = pixels if pixels.ndim == 2 else pixels.mean(axis=-1, dtype=np.float32)
    background = _border_level(gray)
    if prep.crop:
        image = _crop_to_content(image, gray, background)
    array = _fit(image, prep, background)
    # Judged on the whole image's border, before cropping put ink at the edges.
    if prep.background != "keep" and (background > 127.5) == (prep.background == "dark"):
        np.subtract(255.0, array, out=array)
    return array


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
    try:
        image = Image.open(io.BytesIO(data))
    except Image.DecompressionBombError as exc:
        raise ImageTooLargeError(f"the image has too many pixels ({exc})") from exc
    except UnidentifiedImageError as exc:
        raise NotAnImageError("the data is not a recognised image") from exc
    except (OSError, SyntaxError, ValueError) as exc:
        raise NotAnImageError(f"the image header is corrupt ({exc})") from exc
    if image.format not in SUPPORTED_FORMATS:
        raise UnsupportedImageError(
            f"{image.format} images are not supported; send JPEG, PNG, GIF, BMP, WebP or TIFF"
        )
    width, height = image.size
    if width < 1 or height < 1:
        raise NotAnImageError("the image has no pixels")
    if width * height > limits.max_pixels:
        raise ImageTooLargeError(
            f"the image is {width}x{height} pixels; the limit is {limits.max_pixels} pixels"
        )
    return image


def _to_channels(image: Image.Image, prep: Preprocessing) -> Image.Image:
    """Convert any mode to 8-bit L or RGB, compositing alpha."""
    if image.mode in ("I;16", "I;16B", "I;16L", "I;16N", "I", "F"):
        image = _high_depth_to_l(image)
    if image.mode == "P":
        image = image.convert("RGBA" if "transparency" in image.info else "RGB")
    if image.mode in ("LA", "La", "PA", "RGBA", "RGBa"):
        image = _composite_alpha(image.convert("RGBA"))
    elif image.mode == "1":
        image = image.convert("L")
    elif image.mode not in ("L", "RGB"):
        image = image.convert("RGB")  # CMYK, YCbCr, LAB, HSV
    wanted = "L" if prep.channels == 1 else "RGB"
    return image if image.mode == wanted else image.convert(wanted)


def _high_depth_to_l(image: Image.Image) -> Image.Image:
    """Scale 16/32-bit integer or float pixels into 0..255 (Pillow's own convert clips)."""
    array = np.asarray(image, dtype=np.float64)
    if image.mode == "F":
        top = 1.0 if array.size and float(array.max()) <= 1.0 else 255.0
    elif image.mode.startswith("I;16") or (array.size and float(array.max()) > 255.0):
        top = 65535.0
    else:
        top = 255.0
    scaled = np.clip(array * (255.0 / top), 0.0, 255.0)
    return Image.fromarray(np.rint(scaled).astype(np.uint8), mode="L")


def _composite_alpha(image: Image.Image) -> Image.Image:
    """Flatten RGBA onto a background that contrasts with the visible pixels.

    A transparent PNG may carry its content in colour (opaque background) or in alpha only
    (ink on nothing); a contrasting matte keeps the ink visible in both cases.
    """
    rgba = np.asarray(image, dtype=np.float32)
    alpha = rgba[..., 3:4] / 255.0
    if float(alpha.min()) >= 1.0:
        return image.convert("RGB")
    weight = float(alpha.sum())
    luminance = rgba[..., :3] @ np.array([0.299, 0.587, 0.114], dtype=np.float32)
    ink = float((luminance * alpha[..., 0]).sum() / weight) if weight > 0 else 0.0
    matte = 0.0 if ink >= 128.0 else 255.0
    flat = rgba[..., :3] * alpha + matte * (1.0 - alpha)
    return Image.fromarray(np.rint(flat).astype(np.uint8), mode="RGB")


def _border_level(gray: np.ndarray) -> float:
    """Median brightness of the outermost pixel ring of a 2-D image: its background."""
    ring = np.concatenate((gray[0, :], gray[-1, :], gray[1:-1, 0], gray[1:-1, -1]))
    ring.sort()
    return float(ring[ring.size // 2])


# How far (of 255) a pixel must stand from the background to count as content when cropping:
# high enough to ignore JPEG noise and faint anti-aliasing, low enough to keep thin strokes.
_CONTENT_THRESHOLD = 64


def _crop_to_content(image: Image.Image, gray: np.ndarray, background: float) -> Image.Image:
    """Cut to the bounding box of the pixels that stand out from the background."""
    content = (gray < background - _CONTENT_THRESHOLD) | (gray > background + _CONTENT_THRESHOLD)
    rows = np.flatnonzero(content.any(axis=1))
    if rows.size == 0:
        return image  # blank: nothing to centre on
    cols = np.flatnonzero(content.any(axis=0))
    box = (int(cols[0]), int(rows[0]), int(cols[-1]) + 1, int(rows[-1]) + 1)
    return image if box == (0, 0, *image.size) else image.crop(box)


def _fit(image: Image.Image, prep: Preprocessing, background: float) -> np.ndarray:
    """Resize to the model's input size (padding to the target aspect first when fit='pad')."""
    width, height = image.size
    if prep.fit == "pad" and width * prep.height != height * prep.width:
        scale = max(width / prep.width, height / prep.height)
        canvas_size = (round(prep.width * scale), round(prep.height * scale))
        fill = round(background)
        canvas = Image.new(image.mode, canvas_size, (fill,) * len(image.getbands()))
        canvas.paste(image, ((canvas_size[0] - width) // 2, (canvas_size[1] - height) // 2))
        image = canvas
    if image.size != (prep.width, prep.height):
        image = image.resize((prep.width, prep.height), Image.Resampling.BILINEAR, reducing_gap=3.0)
    array = np.array(image, dtype=np.float32)  # a writable copy
    if array.ndim == 2:
        array = array[..., np.newaxis]
    return array
