"""Fixtures of the lepton_model tests: images, small datasets, tiny models and the digits model.

Fast tests use a tiny CNN trained for a few epochs on 36 digit images. The real CNN, trained
once per session on the bundled digits, is shared by every slow test that needs it.
"""

from __future__ import annotations

import io
import json
import shutil
import subprocess
import sys
import tarfile
import zipfile
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from lepton_model import datasets, digits, training
from lepton_model.artifacts import ModelMetadata, export_artifact
from lepton_model.spec import ModelSpec
from lepton_model.training import TrainedModel, TrainingConfig

Files = list[tuple[str, bytes]]

TINY_CLASSES = (0, 1, 2)
TINY_PER_CLASS = 12


# -- images -------------------------------------------------------------------------------------


@pytest.fixture
def glyph() -> np.ndarray:
    """A 28x28 'L'-shaped stroke, 255 on 0: asymmetric under every rotation and flip."""
    pixels = np.zeros((28, 28), dtype=np.uint8)
    pixels[4:24, 6:10] = 255  # the upright bar, left of centre
    pixels[20:24, 6:22] = 255  # the foot, pointing right
    return pixels


@pytest.fixture
def glyph_image(glyph: np.ndarray) -> Image.Image:
    return Image.fromarray(glyph, mode="L")


# -- datasets and archives ----------------------------------------------------------------------


def pack_zip(files: Sequence[tuple[str, bytes]], prefix: str = "") -> bytes:
    """A zip of `files`, each name prefixed with `prefix`."""
    buffer = io.BytesIO()
    with zipfile.ZipFile(buffer, "w", zipfile.ZIP_DEFLATED) as archive:
        for name, data in files:
            archive.writestr(prefix + name, data)
    return buffer.getvalue()


def pack_tar(
    files: Sequence[tuple[str, bytes]], prefix: str = "", links: Sequence[str] = ()
) -> bytes:
    """A .tar.gz of `files` (plus symlink members named in `links`, pointing at /etc/passwd)."""
    buffer = io.BytesIO()
    with tarfile.open(fileobj=buffer, mode="w:gz") as archive:
        for name, data in files:
            info = tarfile.TarInfo(prefix + name)
            info.size = len(data)
            archive.addfile(info, io.BytesIO(data))
        for name in links:
            info = tarfile.TarInfo(prefix + name)
            info.type = tarfile.SYMTYPE
            info.linkname = "/etc/passwd"
            archive.addfile(info)
    return buffer.getvalue()


def write_tree(root: Path, files: Sequence[tuple[str, bytes]]) -> Path:
    """Write `files` under `root` as a folder tree."""
    for name, data in files:
        target = root / name
        target.parent.mkdir(parents=True, exist_ok=True)
        target.write_bytes(data)
    return root


@pytest.fixture
def zip_bytes() -> Callable[..., bytes]:
    return pack_zip


@pytest.fixture
def tar_bytes() -> Callable[..., bytes]:
    return pack_tar


@pytest.fixture
def tree() -> Callable[[Path, Sequence[tuple[str, bytes]]], Path]:
    return write_tree


@pytest.fixture(scope="session")
def tiny_indices() -> np.ndarray:
    """Indices of the first TINY_PER_CLASS digits of each TINY_CLASSES label."""
    _, labels = digits.load_digits()
    return np.concatenate(
        [np.flatnonzero(labels == label)[:TINY_PER_CLASS] for label in TINY_CLASSES]
    )


@pytest.fixture(scope="session")
def tiny_files_session(tiny_indices: np.ndarray) -> Files:
    return digits.digit_files(indices=tiny_indices)


@pytest.fixture
def tiny_files(tiny_files_session: Files) -> Files:
    """36 `<label>/<index>.png` digit files, 3 classes (a fresh list each test)."""
    return list(tiny_files_session)


@pytest.fixture(scope="session")
def tiny_dataset(tiny_files_session: Files) -> datasets.Dataset:
    return datasets.from_files(tiny_files_session)


# -- loading in a fresh process (peak memory and time under hostile input) --------------------

_LOAD_ARCHIVE = """
import json, sys, time
from lepton_model import datasets
from lepton_model.errors import LeptonModelError

limits = datasets.DatasetLimits(**json.loads(sys.argv[2]))
started = time.perf_counter()
try:
    outcome = {"images": len(datasets.load_archive(sys.argv[1], limits=limits))}
except LeptonModelError as exc:
    outcome = {"error": type(exc).__name__, "message": str(exc),
               "limit": getattr(exc, "limit", None), "problems": getattr(exc, "problems", [])}
outcome["seconds"] = time.perf_counter() - started
with open("/proc/self/status") as status:
    peak = next(line for line in status if line.startswith("VmHWM:"))
outcome["vmhwm"] = int(peak.split()[1]) * 1024
print(json.dumps(outcome))
"""


@dataclass(frozen=True)
class Loaded:
    """What `load_archive` did in a fresh process: its error, peak resident memory, seconds."""

    error: str | None
    message: str
    limit: str | None
    problems: list[str]
    vmhwm: int  # bytes, VmHWM of the whole process
    seconds: float  # the load alone, without the interpreter's start-up


LoadArchive = Callable[..., Loaded]


@pytest.fixture(scope="session")
def load_in_subprocess() -> LoadArchive:
    """Runs `load_archive(path, limits=DatasetLimits(**limits))` in a fresh Python process."""

    def load(path: Path, **limits: int) -> Loaded:
        done = subprocess.run(
            [sys.executable, "-c", _LOAD_ARCHIVE, str(path), json.dumps(limits)],
            capture_output=True,
            text=True,
            timeout=120,
            check=True,
        )
        outcome = json.loads(done.stdout)
        shown = outcome.get("limit") or outcome.get("error") or "loaded"
        print(  # with -s: the numbers behind the bounds
            f"\n{path.name}: VmHWM {outcome['vmhwm'] / 2**20:.0f} MiB, "
            f"{outcome['seconds']:.2f} s, {shown}"
        )
        return Loaded(
            error=outcome.get("error"),
            message=outcome.get("message", ""),
            limit=outcome.get("limit"),
            problems=outcome.get("problems", []),
            vmhwm=outcome["vmhwm"],
            seconds=outcome["seconds"],
        )

    return load


@pytest.fixture(scope="session")
def baseline_vmhwm(
    load_in_subprocess: LoadArchive,
    tiny_files_session: Files,
    tmp_path_factory: pytest.TempPathFactory,
) -> int:
    """Peak memory of loading the tiny dataset: the interpreter, numpy, Pillow, decoding."""
    path = tmp_path_factory.mktemp("baseline") / "tiny.zip"
    path.write_bytes(pack_zip(tiny_files_session))
    loaded = load_in_subprocess(path)
    assert loaded.error is None, loaded.message
    return loaded.vmhwm


# -- models -------------------------------------------------------------------------------------


@pytest.fixture(scope="session")
def tiny_spec() -> ModelSpec:
    """Two small conv blocks with dropout: a non-default architecture that trains in ~1 s."""
    return ModelSpec(num_classes=len(TINY_CLASSES), filters=(4, 8), dense_units=16, dropout=0.25)


@pytest.fixture(scope="session")
def tiny_config() -> TrainingConfig:
    return TrainingConfig(epochs=3, batch_size=8)


@pytest.fixture(scope="session")
def tiny_trained(
    tiny_dataset: datasets.Dataset, tiny_spec: ModelSpec, tiny_config: TrainingConfig
) -> TrainedModel:
    return training.train(tiny_dataset, tiny_spec, tiny_config)


@dataclass(frozen=True)
class ExportedModel:
    """An artifact directory with the metadata export_artifact returned for it."""

    directory: Path
    metadata: ModelMetadata
    trained: TrainedModel


@pytest.fixture(scope="session")
def tiny_artifact(
    tiny_trained: TrainedModel,
    tiny_dataset: datasets.Dataset,
    tmp_path_factory: pytest.TempPathFactory,
) -> ExportedModel:
    """The tiny model exported once per session. Read only: use `tiny_artifact_copy` to edit."""
    directory = tmp_path_factory.mktemp("tiny-artifact")
    metadata = export_artifact(tiny_trained, directory, "tiny", "v1", tiny_dataset.digest)
    return ExportedModel(directory, metadata, tiny_trained)


@pytest.fixture
def tiny_artifact_copy(tiny_artifact: ExportedModel, tmp_path: Path) -> Path:
    """A private copy of the tiny artifact directory that a test may change."""
    return Path(shutil.copytree(tiny_artifact.directory, tmp_path / "artifact"))


# -- the real digits model (slow) ---------------------------------------------------------------


@pytest.fixture(scope="session")
def digit_files_all() -> Files:
    """All 1797 bundled digits as 28x28 `<label>/<index>.png` files."""
    return digits.digit_files()


@pytest.fixture(scope="session")
def digits_dataset(digit_files_all: Files) -> datasets.Dataset:
    return datasets.from_files(digit_files_all)


@pytest.fixture(scope="session")
def digits_trained(digits_dataset: datasets.Dataset) -> TrainedModel:
    """The default CNN trained by the package with its default config: once per session."""
    return training.train(digits_dataset)


@pytest.fixture(scope="session")
def digits_artifact(
    digits_trained: TrainedModel,
    digits_dataset: datasets.Dataset,
    tmp_path_factory: pytest.TempPathFactory,
) -> ExportedModel:
    directory = tmp_path_factory.mktemp("digits-artifact")
    metadata = export_artifact(digits_trained, directory, "digits", "v1", digits_dataset.digest)
    return ExportedModel(directory, metadata, digits_trained)


@dataclass(frozen=True)
class HeldOut:
    """The test split of the digits model as source pixels (8x8, 0..16) and labels."""

    pixels: np.ndarray
    labels: np.ndarray
    images: np.ndarray  # the decoded model inputs, as training saw them


@pytest.fixture(scope="session")
def held_out_digits(
    digit_files_all: Files, digits_dataset: datasets.Dataset, digits_trained: TrainedModel
) -> HeldOut:
    """The digits train() held out for testing (neither fitting nor early stopping saw them),
    recovered by repeating its seeded split on row numbers."""
    rows = np.arange(len(digits_dataset), dtype=np.float32).reshape(-1, 1, 1, 1)
    row_set = datasets.Dataset(rows, digits_dataset.labels, digits_dataset.class_names, "")
    config = digits_trained.config
    test = datasets.split_three(
        row_set, config.validation_split, config.test_split, config.seed
    ).test
    chosen = test.images.ravel().astype(np.int64)
    # from_files orders the files by path: row r is the r-th path in sorted order.
    paths = sorted(name for name, _ in digit_files_all)
    source_index = np.array([int(Path(paths[r]).stem) for r in chosen])
    pixels, labels = digits.load_digits()
    assert np.array_equal(labels[source_index], digits_dataset.labels[chosen])
    return HeldOut(pixels[source_index], labels[source_index], digits_dataset.images[chosen])
