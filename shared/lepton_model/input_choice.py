"""The model input chosen from the data: colour kept when the images have colour, and an input
size from the images' own sizes (bounded), for trainings that do not say.

One pass over the files decodes each into a 16x16 colour thumbnail (cheap: the decoder reduces
while decoding) and reads its size from the header; the choice and the reason for each part of it
are returned, so the metadata and the CLI can say what was chosen and why.
"""

from __future__ import annotations

import statistics
from collections.abc import Iterable
from dataclasses import dataclass, replace

import numpy as np

from lepton_model.datasets import DatasetLimits, is_ignored
from lepton_model.errors import ImageError
from lepton_model.imaging import DEFAULT_LIMITS, ImageLimits, decode_image, open_image
from lepton_model.spec import Preprocessing

# An image is in colour when its pixels differ between channels by more than this on average
# (of 255): JPEG chroma noise on a gray picture stays well under it.
COLOUR_CHROMA = 12.0
# The dataset keeps colour when at least this share of its images is in colour.
COLOUR_SHARE = 0.1
# The input side chosen from the images' shorter sides: never under the seed article's 28 (the
# digits), never over 64 (CPU training time and the decoded dataset's memory grow with its
# square).
MIN_SIDE, MAX_SIDE = 28, 64
_PROBE = Preprocessing(
    height=16, width=16, channels=3, background="keep", fit="stretch", crop=False
)


@dataclass(frozen=True)
class InputChoice:
    """The preprocessing to train with, and why each chosen part was chosen."""

    preprocessing: Preprocessing
    reasons: dict[str, str]

    def to_dict(self) -> dict[str, object]:
        prep = self.preprocessing
        return {
            "channels": prep.channels,
            "image_size": [prep.height, prep.width],
            "why": dict(self.reasons),
        }


def choose_input(
    files: Iterable[tuple[str, bytes]],
    base: Preprocessing,
    *,
    choose_channels: bool = True,
    choose_size: bool = True,
    choose_background: bool = True,
    image_limits: ImageLimits = DEFAULT_LIMITS,
    limits: DatasetLimits | None = None,
) -> InputChoice:
    """Choose channels, input size and (for colour) polarity from `files`; what is not to be
    chosen keeps `base`'s value.

    Files that are not images are skipped here: the decoding pass names them.
    """
    limits = limits or DatasetLimits()
    chroma: list[float] = []
    sides: list[int] = []
    for name, data in files:
        if is_ignored(name):
            continue
        try:
            width, height = open_image(data, image_limits).size
            thumbnail = decode_image(data, _PROBE, image_limits)
        except ImageError:
            continue
        sides.append(min(width, height))
        chroma.append(float((thumbnail.max(axis=-1) - thumbnail.min(axis=-1)).mean()))
    prep, reasons = base, {}
    if not sides:
        return InputChoice(prep, reasons)
    if choose_channels:
        share = float(np.mean(np.asarray(chroma) > COLOUR_CHROMA))
        channels = 3 if share >= COLOUR_SHARE else 1
        prep = replace(prep, channels=channels)
        reasons["channels"] = (
            f"{share:.0%} of the {len(chroma)} images are in colour: kept as RGB"
            if channels == 3
            else f"{share:.0%} of the {len(chroma)} images are in colour: read as grayscale"
        )
    if choose_background and prep.channels == 3 and prep.background != "keep":
        # Turning light backgrounds dark would invert colours (red on white becomes cyan).
        prep = replace(prep, background="keep")
        reasons["background"] = "colour images are read as they are: no light/dark inversion"
    if choose_size:
        median = statistics.median(sides)
        side = int(min(MAX_SIDE, max(MIN_SIDE, round(median / 4) * 4)))
        why = (
            f"the images' median shorter side is {median:g} px (bounded to {MIN_SIDE}..{MAX_SIDE})"
        )
        fitted, per_pixel = side, 4 * prep.channels  # float32 a channel
        while fitted > MIN_SIDE and len(sides) * fitted**2 * per_pixel > limits.max_decoded_bytes:
            fitted -= 4
        if fitted < side:
            why += f", lowered to {fitted} px to fit the decoded-dataset limit"
        prep = replace(prep, height=fitted, width=fitted)
        reasons["image_size"] = why
    return InputChoice(prep, reasons)
