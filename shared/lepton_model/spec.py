"""Small immutable values that describe a model: its architecture and its input preprocessing."""

from __future__ import annotations

from dataclasses import asdict, dataclass, field, fields
from typing import Any, Literal

Background = Literal["dark", "light", "keep"]
Fit = Literal["pad", "stretch"]


def _from_mapping(cls: type, data: dict[str, Any]) -> Any:
    """Build a dataclass from a mapping, ignoring unknown keys and turning lists into tuples."""
    known = {f.name for f in fields(cls)}
    values = {k: tuple(v) if isinstance(v, list) else v for k, v in data.items() if k in known}
    return cls(**values)


@dataclass(frozen=True)
class Preprocessing:
    """How image bytes become a model input; stored with the model so serving matches training.

    `background="dark"` turns images so their background is dark (ink bright), which makes a
    model trained on one polarity read the other; `crop=True` cuts the image to the bounding
    box of what differs from its background, so margins and position do not matter;
    `fit="pad"` keeps the aspect ratio by padding with the background colour before resizing.
    """

    height: int = 28
    width: int = 28
    channels: int = 1
    background: Background = "dark"
    fit: Fit = "pad"
    crop: bool = True

    def __post_init__(self) -> None:
        if self.channels not in (1, 3):
            raise ValueError("channels must be 1 (grayscale) or 3 (RGB)")
        if not (4 <= self.height <= 1024 and 4 <= self.width <= 1024):
            raise ValueError("height and width must be between 4 and 1024 pixels")
        if self.background not in ("dark", "light", "keep"):
            raise ValueError("background must be 'dark', 'light' or 'keep'")
        if self.fit not in ("pad", "stretch"):
            raise ValueError("fit must be 'pad' or 'stretch'")

    @property
    def input_shape(self) -> tuple[int, int, int]:
        return (self.height, self.width, self.channels)

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> Preprocessing:
        # Models saved before `crop` existed were trained without it: serve them the same way.
        return _from_mapping(cls, {"crop": False, **data})


@dataclass(frozen=True)
class ModelSpec:
    """The CNN's shape. The defaults are the seed article's network:
    Conv2D 32 3x3 relu -> MaxPooling 2x2 -> Flatten -> Dense 64 relu -> Dense softmax."""

    num_classes: int = 10
    preprocessing: Preprocessing = field(default_factory=Preprocessing)
    filters: tuple[int, ...] = (32,)
    kernel_size: int = 3
    pool_size: int = 2
    dense_units: int = 64
    dropout: float = 0.0

    def __post_init__(self) -> None:
        if self.num_classes < 2:
            raise ValueError("a classifier needs at least 2 classes")
        if not self.filters or any(f < 1 for f in self.filters):
            raise ValueError("filters needs one positive count per conv block")
        if self.kernel_size < 1 or self.pool_size < 1:
            raise ValueError("kernel_size and pool_size must be positive")
        side = min(self.preprocessing.height, self.preprocessing.width)
        for _ in self.filters:  # each block: a 'valid' convolution, then pooling
            side = (side - self.kernel_size + 1) // self.pool_size
        if side < 1:
            raise ValueError(
                f"a {self.preprocessing.height}x{self.preprocessing.width} input is too small "
                f"for {len(self.filters)} conv block(s) of kernel {self.kernel_size} "
                f"and pool {self.pool_size}"
            )
        if self.dense_units < 1:
            raise ValueError("dense_units must be positive")
        if not 0.0 <= self.dropout < 1.0:
            raise ValueError("dropout must be in [0, 1)")

    def parameter_count(self) -> int:
        """How many weights `build_model` makes of this spec, counted without building it."""
        height, width = self.preprocessing.height, self.preprocessing.width
        channels, count = self.preprocessing.channels, 0
        for filters in self.filters:  # a 'valid' convolution, then pooling
            count += (self.kernel_size * self.kernel_size * channels + 1) * filters
            height = (height - self.kernel_size + 1) // self.pool_size
            width = (width - self.kernel_size + 1) // self.pool_size
            channels = filters
        flat = height * width * channels
        return count + (flat + 1) * self.dense_units + (self.dense_units + 1) * self.num_classes

    def to_dict(self) -> dict[str, Any]:
        data = asdict(self)
        data["filters"] = list(self.filters)
        return data

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> ModelSpec:
        values = dict(data)
        if isinstance(values.get("preprocessing"), dict):
            values["preprocessing"] = Preprocessing.from_dict(values["preprocessing"])
        return _from_mapping(cls, values)
