"""lepton_model: the CNN, its image decoder, datasets, training, artifacts and runtimes.

Pure ML: no HTTP, CloudEvents, boto3 or Flask. TensorFlow is imported only by the functions
that train or run Keras models, so the inference image can use LiteRT alone.
"""

from lepton_model.architecture import build_model
from lepton_model.artifacts import ModelMetadata, export_artifact, read_metadata
from lepton_model.classifier import Classifier, Prediction, load_classifier
from lepton_model.datasets import Dataset, from_arrays, load_archive, load_directory, split
from lepton_model.errors import (
    ArtifactError,
    DatasetError,
    ImageError,
    ImageTooLargeError,
    LeptonModelError,
    NotAnImageError,
    RuntimeUnavailableError,
    UnsupportedImageError,
)
from lepton_model.imaging import ImageLimits, decode_image
from lepton_model.predictors import load_predictor
from lepton_model.spec import ModelSpec, Preprocessing
from lepton_model.training import TrainedModel, TrainingConfig, train

__version__ = "0.1.0"

__all__ = [
    "ArtifactError",
    "Classifier",
    "Dataset",
    "DatasetError",
    "ImageError",
    "ImageLimits",
    "ImageTooLargeError",
    "LeptonModelError",
    "ModelMetadata",
    "ModelSpec",
    "NotAnImageError",
    "Prediction",
    "Preprocessing",
    "RuntimeUnavailableError",
    "TrainedModel",
    "TrainingConfig",
    "UnsupportedImageError",
    "__version__",
    "build_model",
    "decode_image",
    "export_artifact",
    "from_arrays",
    "load_archive",
    "load_classifier",
    "load_directory",
    "load_predictor",
    "read_metadata",
    "split",
    "train",
]
