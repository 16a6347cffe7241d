"""lepton_model: the CNN, its image decoder, datasets, training, artifacts and runtimes.

Pure ML: no HTTP, CloudEvents, boto3 or Flask. TensorFlow is imported only by the functions
that train or run Keras models, so the inference image can use LiteRT alone.

The names below are imported on first use (PEP 562): a process that only classifies never
loads the training, dataset and plotting modules (a fifth of the inference function's start).
"""

from __future__ import annotations

import importlib
from typing import Any

__version__ = "0.1.0"

_WHERE = {
    "build_model": "architecture",
    "ModelMetadata": "artifacts",
    "export_artifact": "artifacts",
    "read_metadata": "artifacts",
    "Classifier": "classifier",
    "Prediction": "classifier",
    "load_classifier": "classifier",
    "Dataset": "datasets",
    "from_arrays": "datasets",
    "load_archive": "datasets",
    "load_directory": "datasets",
    "split": "datasets",
    "ArtifactError": "errors",
    "DatasetError": "errors",
    "ImageError": "errors",
    "ImageTooLargeError": "errors",
    "LeptonModelError": "errors",
    "NotAnImageError": "errors",
    "RuntimeUnavailableError": "errors",
    "UnsupportedImageError": "errors",
    "ImageLimits": "imaging",
    "decode_image": "imaging",
    "load_predictor": "predictors",
    "ModelSpec": "spec",
    "Preprocessing": "spec",
    "TrainedModel": "training",
    "TrainingConfig": "training",
    "train": "training",
}

__all__ = sorted([*_WHERE, "__version__"])


def __getattr__(name: str) -> Any:
    module = _WHERE.get(name)
    if module is None:
        raise AttributeError(f"module 'lepton_model' has no attribute {name!r}")
    return getattr(importlib.import_module(f"lepton_model.{module}"), name)
