"""Typed errors of the CNN package: one base class, one subclass per thing a caller handles."""

from __future__ import annotations


class LeptonModelError(Exception):
    """Base of every error raised by lepton_model."""

    code = "model_error"


class ImageError(LeptonModelError):
    """The bytes could not be turned into a model input."""

    code = "invalid_image"


class NotAnImageError(ImageError):
    """Empty, truncated, corrupt or non-image bytes."""

    code = "not_an_image"


class UnsupportedImageError(ImageError):
    """A recognised format this package does not decode (SVG, PSD, ...)."""

    code = "unsupported_image"


class ImageTooLargeError(ImageError):
    """More bytes or pixels than the configured limits allow."""

    code = "image_too_large"


class DatasetError(LeptonModelError):
    """A dataset that cannot be trained on; `problems` lists what a person can fix."""

    code = "invalid_dataset"

    def __init__(self, message: str, problems: list[str] | None = None) -> None:
        super().__init__(message)
        self.problems: list[str] = list(problems or [])


class DatasetTooLargeError(DatasetError):
    """A dataset or archive beyond one of its limits; `limit` names the DatasetLimits field."""

    code = "dataset_too_large"

    def __init__(self, message: str, limit: str) -> None:
        super().__init__(message)
        self.limit = limit


class ArtifactError(LeptonModelError):
    """A model artifact directory that is missing files or holds invalid metadata."""

    code = "invalid_artifact"


class RuntimeUnavailableError(LeptonModelError):
    """The requested inference runtime (LiteRT or TensorFlow) is not installed."""

    code = "runtime_unavailable"
