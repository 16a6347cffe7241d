"""A labelled colour dataset where the class is the colour: shapes of random size, place and
kind, each in its class's hue with random lightness, on light or dark backgrounds. Read as
grayscale, several classes have the same brightness; read in colour, they are easy."""

from __future__ import annotations

import colorsys
import io

import numpy as np
from PIL import Image, ImageDraw

HUES = {"red": 0.0, "yellow": 1 / 6, "green": 1 / 3, "blue": 2 / 3}


def colour_image(hue: float, rng: np.random.Generator, size: int = 40) -> bytes:
    background = int(rng.choice([235, 250, 20]))
    image = Image.new("RGB", (size, size), (background,) * 3)
    draw = ImageDraw.Draw(image)
    lightness = float(rng.uniform(0.35, 0.6))
    red, green, blue = colorsys.hls_to_rgb(hue + float(rng.uniform(-0.03, 0.03)), lightness, 0.9)
    colour = (int(red * 255), int(green * 255), int(blue * 255))
    left, top = rng.integers(0, size // 3, size=2)
    right, bottom = (
        left + rng.integers(size // 3, size // 2 + 1),
        top + rng.integers(size // 3, size // 2 + 1),
    )
    box = (int(left), int(top), int(right), int(bottom))
    (draw.ellipse if rng.random() < 0.5 else draw.rectangle)(box, fill=colour)
    buffer = io.BytesIO()
    image.save(buffer, "PNG")
    return buffer.getvalue()


def colour_files(per_class: int = 40, seed: int = 0, size: int = 40) -> list[tuple[str, bytes]]:
    """`<colour>/<n>.png` (path, bytes) pairs."""
    rng = np.random.default_rng(seed)
    return [
        (f"{name}/{index:03d}.png", colour_image(hue, rng, size))
        for name, hue in HUES.items()
        for index in range(per_class)
    ]
