"""Labelled image datasets: from `<label>/<image>` folders or archives, or from arrays.

Files are read as bytes first (archives are never extracted to disk), decoded with the same
`decode_image` the inference function uses, and fingerprinted by content so the same images give
the same digest however they were packed.
"""

from __future__ import annotations

import hashlib
import io
import tarfile
import zipfile
import zlib
from collections import Counter
from collections.abc import Iterable, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path, PurePosixPath

import numpy as np
from PIL import Image

from lepton_model.errors import DatasetError, ImageError
from lepton_model.imaging import DEFAULT_LIMITS, ImageLimits, decode_image
from lepton_model.spec import Preprocessing

ARCHIVE_SUFFIXES = (".zip", ".tar.gz", ".tgz", ".tar")
_IGNORED_PARTS = {"__MACOSX", ".DS_Store", "Thumbs.db"}
_IGNORED_NAMES = {"manifest.json", "README.md", "LICENSE", "labels.txt"}


@dataclass(frozen=True)
class DatasetLimits:
    """Bounds that keep a hostile archive from exhausting memory."""

    max_files: int = 200_000
    max_total_bytes: int = 2 * 1024 * 1024 * 1024
    min_classes: int = 2
    min_per_class: int = 5
    max_bad_files_listed: int = 20


@dataclass(frozen=True)
class Dataset:
    """Decoded images (n, h, w, c) float32 in 0..255, integer labels, and class names."""

    images: np.ndarray
    labels: np.ndarray
    class_names: tuple[str, ...]
    digest: str

    def __len__(self) -> int:
        return int(self.labels.shape[0])

    @property
    def class_counts(self) -> dict[str, int]:
        counts = np.bincount(self.labels, minlength=len(self.class_names))
        return {name: int(c) for name, c in zip(self.class_names, counts, strict=True)}

    def subset(self, indices: np.ndarray) -> Dataset:
        return Dataset(self.images[indices], self.labels[indices], self.class_names, self.digest)


def iter_directory(root: Path) -> Iterator[tuple[str, bytes]]:
    """Yield (relative posix path, bytes) for every regular file under `root`."""
    root = Path(root)
    for path in sorted(root.rglob("*")):
        if path.is_file() and not path.is_symlink():
            yield path.relative_to(root).as_posix(), path.read_bytes()


def iter_archive(
    data: bytes, name: str = "", max_total_bytes: int | None = None
) -> Iterator[tuple[str, bytes]]:
    """Yield (member path, bytes) of a zip or tar(.gz) archive without extracting it.

    Links, devices and paths that climb out of the archive are skipped. Member sizes are
    checked against `max_total_bytes` before a member is decompressed (zip bombs).
    """
    total = 0

    def admit(size: int) -> None:
        nonlocal total
        total += size
        if max_total_bytes is not None and total > max_total_bytes:
            raise DatasetError(f"the dataset is larger than {max_total_bytes} bytes unpacked")

    try:
        if zipfile.is_zipfile(io.BytesIO(data)):
            with zipfile.ZipFile(io.BytesIO(data)) as archive:
                for info in archive.infolist():
                    if not info.is_dir() and _safe_member(info.filename):
                        admit(info.file_size)
                        yield info.filename, archive.read(info)
            return
        with tarfile.open(fileobj=io.BytesIO(data), mode="r:*") as archive:
            for member in archive:
                if member.isreg() and _safe_member(member.name):
                    admit(member.size)
                    handle = archive.extractfile(member)
                    if handle is not None:
                        yield member.name, handle.read()
    except (
        tarfile.TarError,
        zipfile.BadZipFile,
        zlib.error,
        EOFError,
        OSError,
        RuntimeError,  # an encrypted zip member
        NotImplementedError,  # a zip compression method Python lacks
    ) as exc:
        raise DatasetError(
            f"{name or 'the archive'} is not a readable .zip or .tar.gz archive ({exc})"
        ) from exc


def _safe_member(name: str) -> bool:
    path = PurePosixPath(name.replace("\\", "/"))
    return not path.is_absolute() and ".." not in path.parts


def labelled_files(
    files: Iterable[tuple[str, bytes]], limits: DatasetLimits = DatasetLimits()
) -> list[tuple[str, str, bytes]]:
    """Turn (path, bytes) pairs into (label, path, bytes), the label being the image's folder.

    A single wrapping folder (`digits/3/a.png`) is looked through.
    """
    entries: list[tuple[PurePosixPath, bytes]] = []
    total = 0
    for name, data in files:
        path = PurePosixPath(name)
        if any(part in _IGNORED_PARTS or part.startswith(".") for part in path.parts):
            continue
        if path.name in _IGNORED_NAMES:
            continue
        entries.append((path, data))
        total += len(data)
        if len(entries) > limits.max_files:
            raise DatasetError(f"the dataset has more than {limits.max_files} files")
        if total > limits.max_total_bytes:
            raise DatasetError(f"the dataset is larger than {limits.max_total_bytes} bytes")
    if not entries:
        raise DatasetError("the dataset holds no files; expected <label>/<image> files")
    while (
        entries
        and all(len(p.parts) > 2 for p, _ in entries)
        and (len({p.parts[0] for p, _ in entries}) == 1)
    ):
        entries = [(PurePosixPath(*p.parts[1:]), d) for p, d in entries]
    loose = [str(p) for p, _ in entries if len(p.parts) < 2]
    if loose:
        raise DatasetError(
            "some files are not inside a label folder; expected <label>/<image>",
            loose[: limits.max_bad_files_listed],
        )
    return [(p.parts[-2], str(p), d) for p, d in entries]


def from_files(
    files: Iterable[tuple[str, bytes]],
    preprocessing: Preprocessing | None = None,
    image_limits: ImageLimits = DEFAULT_LIMITS,
    limits: DatasetLimits = DatasetLimits(),
) -> Dataset:
    """Decode and validate a `<label>/<image>` file set into a Dataset.

    Raises DatasetError listing every undecodable file, classes that are too small, or too few
    classes: nothing is trained on a dataset with problems a person should fix first.
    """
    prep = preprocessing or Preprocessing()
    items = labelled_files(files, limits)
    class_names = tuple(sorted({label for label, _, _ in items}, key=_label_sort_key))
    index = {name: i for i, name in enumerate(class_names)}
    images: list[np.ndarray] = []
    labels: list[int] = []
    bad: list[str] = []
    digest = hashlib.sha256()
    for label, path, data in sorted(items, key=lambda item: item[1]):
        try:
            images.append(decode_image(data, prep, image_limits))
        except ImageError as exc:
            bad.append(f"{path}: {exc}")
            continue
        labels.append(index[label])
        digest.update(f"{label}\0{hashlib.sha256(data).hexdigest()}\n".encode())
    if bad:
        shown = bad[: limits.max_bad_files_listed]
        more = len(bad) - len(shown)
        raise DatasetError(
            f"{len(bad)} file(s) could not be decoded as images"
            + (f" ({more} not listed)" if more else ""),
            shown,
        )
    _check_counts(Counter(class_names[i] for i in labels), class_names, limits)
    return Dataset(
        images=np.stack(images).astype(np.float32, copy=False),
        labels=np.asarray(labels, dtype=np.int64),
        class_names=class_names,
        digest="sha256:" + digest.hexdigest(),
    )


def load_directory(root: Path, preprocessing: Preprocessing | None = None, **kwargs) -> Dataset:
    """Load a `<label>/<image>` folder."""
    root = Path(root)
    if not root.is_dir():
        raise DatasetError(f"{root} is not a directory")
    return from_files(iter_directory(root), preprocessing, **kwargs)


def load_archive(
    source: Path | bytes, preprocessing: Preprocessing | None = None, **kwargs
) -> Dataset:
    """Load a .zip or .tar(.gz) archive of `<label>/<image>` files, from a path or bytes."""
    data = Path(source).read_bytes() if isinstance(source, (str, Path)) else bytes(source)
    limits = kwargs.get("limits", DatasetLimits())
    return from_files(
        iter_archive(data, max_total_bytes=limits.max_total_bytes), preprocessing, **kwargs
    )


def from_arrays(
    images: Sequence | np.ndarray,
    labels: Sequence | np.ndarray,
    class_names: Sequence[str] | None = None,
    preprocessing: Preprocessing | None = None,
    limits: DatasetLimits = DatasetLimits(min_per_class=1),
) -> Dataset:
    """Build a Dataset from in-memory pixels (n, h, w) or (n, h, w, c), values 0..255.

    Labels may be integers or strings; images of another size are resized to the model input.
    """
    prep = preprocessing or Preprocessing()
    try:
        pixels = np.asarray(images, dtype=np.float32)
    except (TypeError, ValueError) as exc:
        raise DatasetError(f"images must be a numeric array ({exc})") from exc
    raw_labels = np.asarray(labels)
    if pixels.ndim == 3:
        pixels = pixels[..., np.newaxis]
    if pixels.ndim != 4 or pixels.shape[0] == 0:
        raise DatasetError("images must have shape (n, height, width) or (n, height, width, c)")
    if raw_labels.ndim != 1 or raw_labels.shape[0] != pixels.shape[0]:
        raise DatasetError(
            f"got {pixels.shape[0]} images but {raw_labels.size} labels; they must match"
        )
    if not np.isfinite(pixels).all():
        raise DatasetError("images contain NaN or infinite values")
    if class_names is None:
        names = sorted({str(v) for v in raw_labels.tolist()}, key=_label_sort_key)
        class_names = tuple(names)
    class_names = tuple(str(c) for c in class_names)
    index = {name: i for i, name in enumerate(class_names)}
    try:
        label_ids = np.asarray([index[str(v)] for v in raw_labels.tolist()], dtype=np.int64)
    except KeyError as exc:
        raise DatasetError(f"label {exc.args[0]!r} is not one of the class names") from exc
    pixels = _conform(pixels, prep)
    _check_counts(Counter(class_names[i] for i in label_ids), class_names, limits)
    digest = hashlib.sha256()
    digest.update(repr((pixels.shape, class_names)).encode())
    digest.update(np.ascontiguousarray(pixels).tobytes())
    digest.update(label_ids.tobytes())
    return Dataset(pixels, label_ids, class_names, "sha256:" + digest.hexdigest())


def _conform(pixels: np.ndarray, prep: Preprocessing) -> np.ndarray:
    """Resize/convert array images to the model input shape (values kept in 0..255)."""
    if float(pixels.max(initial=0.0)) <= 1.0:
        pixels = pixels * 255.0  # the seed article's arrays were scaled to [0, 1]
    n, h, w, c = pixels.shape
    if (h, w, c) == prep.input_shape:
        return pixels.astype(np.float32)
    out = np.empty((n, *prep.input_shape), dtype=np.float32)
    for i in range(n):
        frame = np.clip(pixels[i], 0, 255).astype(np.uint8)
        image = Image.fromarray(frame[..., 0] if c == 1 else frame[..., :3])
        image = image.convert("L" if prep.channels == 1 else "RGB")
        image = image.resize((prep.width, prep.height), Image.Resampling.BILINEAR)
        array = np.asarray(image, dtype=np.float32)
        out[i] = array[..., np.newaxis] if array.ndim == 2 else array
    return out


def _check_counts(counts: Counter, class_names: tuple[str, ...], limits: DatasetLimits) -> None:
    if len(class_names) < limits.min_classes:
        raise DatasetError(
            f"the dataset has {len(class_names)} class(es); at least {limits.min_classes} needed",
            [f"classes found: {', '.join(class_names) or 'none'}"],
        )
    small = [
        f"class {name!r} has {counts.get(name, 0)} image(s); at least {limits.min_per_class} needed"
        for name in class_names
        if counts.get(name, 0) < limits.min_per_class
    ]
    if small:
        raise DatasetError("some classes have too few images", small)


def split(
    dataset: Dataset, validation_fraction: float = 0.2, seed: int = 42
) -> tuple[Dataset, Dataset]:
    """Stratified, seeded split into (train, validation); every class keeps at least one
    image on each side."""
    if not 0.0 < validation_fraction < 1.0:
        raise DatasetError("validation_fraction must be between 0 and 1")
    rng = np.random.default_rng(seed)
    train_idx: list[np.ndarray] = []
    val_idx: list[np.ndarray] = []
    for label in range(len(dataset.class_names)):
        members = np.flatnonzero(dataset.labels == label)
        rng.shuffle(members)
        if members.size < 2:
            raise DatasetError(
                f"class {dataset.class_names[label]!r} needs at least 2 images to split"
            )
        n_val = min(max(1, round(members.size * validation_fraction)), members.size - 1)
        val_idx.append(members[:n_val])
        train_idx.append(members[n_val:])
    train = np.concatenate(train_idx)
    val = np.concatenate(val_idx)
    rng.shuffle(train)
    return dataset.subset(np.sort(train)), dataset.subset(np.sort(val))


def _label_sort_key(label: str) -> tuple[int, int | str]:
    """Numeric labels in numeric order ("2" before "10"), then the rest alphabetically."""
    return (0, int(label)) if label.isdigit() else (1, label)
