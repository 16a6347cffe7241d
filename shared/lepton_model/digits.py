"""The bundled handwritten digits (UCI, CC BY 4.0; see data/README.md), rendered as images."""

from __future__ import annotations

import gzip
import io
import zipfile
from importlib import resources
from pathlib import Path

import numpy as np
from PIL import Image

_RESAMPLERS = (Image.Resampling.BICUBIC, Image.Resampling.BILINEAR, Image.Resampling.LANCZOS)


def load_digits() -> tuple[np.ndarray, np.ndarray]:
    """Return (images (1797, 8, 8) uint8 with values 0..16, labels (1797,) int64)."""
    raw = resources.files("lepton_model").joinpath("data/digits.csv.gz").read_bytes()
    table = np.loadtxt(io.StringIO(gzip.decompress(raw).decode()), delimiter=",", dtype=np.int64)
    return table[:, :64].reshape(-1, 8, 8).astype(np.uint8), table[:, 64]


def render_digit(pixels: np.ndarray, size: int = 28, variant: int = 0) -> Image.Image:
    """Render one 8x8 digit as a `size`x`size` grayscale image: bright ink on black.

    `variant` picks the upscaling filter, so a rendered set is not tied to one interpolation.
    """
    scaled = (pixels.astype(np.float32) * (255.0 / 16.0)).round().astype(np.uint8)
    resample = _RESAMPLERS[variant % len(_RESAMPLERS)]
    return Image.fromarray(scaled, mode="L").resize((size, size), resample)


def digit_files(
    size: int = 28, indices: np.ndarray | None = None, image_format: str = "PNG"
) -> list[tuple[str, bytes]]:
    """The digits as `<label>/<index>.png` (path, bytes) pairs."""
    images, labels = load_digits()
    chosen = np.arange(len(labels)) if indices is None else indices
    suffix = {"PNG": "png", "JPEG": "jpg"}.get(image_format, image_format.lower())
    files = []
    for i in chosen.tolist():
        buffer = io.BytesIO()
        render_digit(images[i], size, variant=i).save(buffer, image_format)
        files.append((f"{labels[i]}/{i:04d}.{suffix}", buffer.getvalue()))
    return files


def write_digits_archive(path: Path, size: int = 28, indices: np.ndarray | None = None) -> Path:
    """Write the digits as a zip of `<label>/<index>.png`, the layout the trainer expects."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    with zipfile.ZipFile(path, "w", compression=zipfile.ZIP_STORED) as archive:
        for name, data in digit_files(size, indices):
            archive.writestr(name, data)
    return path


def write_digits_directory(root: Path, size: int = 28, indices: np.ndarray | None = None) -> Path:
    """Write the digits as a `<label>/<index>.png` folder."""
    root = Path(root)
    for name, data in digit_files(size, indices):
        target = root / name
        target.parent.mkdir(parents=True, exist_ok=True)
        target.write_bytes(data)
    return root
