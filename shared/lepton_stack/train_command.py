"""`lepton train DIR`: check a `<label>/<image>` folder, upload it as one dataset archive (its
options in the archive's manifest.json), and follow the training through its status object in
the models bucket (ModelStore.read_status), not through log text.

Exit codes say what happened: 0 the model is live, 3 it was trained but held back by the gate,
1 the training failed or did not finish in time, 2 the folder or the options are wrong.
"""

from __future__ import annotations

import io
import json
import re
import sys
import time
import zipfile
from collections import Counter
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from lepton_model.datasets import (
    MANIFEST_NAME,
    DatasetLimits,
    check_counts,
    is_ignored,
    label_of,
    label_paths,
    scan_directory,
)
from lepton_model.errors import DatasetError

EXIT_LIVE, EXIT_FAILED, EXIT_USAGE, EXIT_HELD_BACK = 0, 1, 2, 3
_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]{0,62}$")


class FolderError(Exception):
    """The folder cannot be a dataset, or the options cannot train; nothing was uploaded."""


@dataclass(frozen=True)
class Upload:
    """A checked folder, archived with its options."""

    name: str
    data: bytes
    images: int
    labels: tuple[str, ...]


def model_name_for(folder: Path, name: str | None) -> str:
    """`name`, or the folder's name made into a valid model name."""
    if name is not None:
        if not _NAME.match(name):
            raise FolderError(
                f"--name {name!r}: use letters, digits, '.', '_' or '-' (starting with a letter "
                "or digit, at most 63)"
            )
        return name
    cleaned = re.sub(r"[^A-Za-z0-9._-]+", "-", folder.resolve().name).lstrip("._-")[:63]
    if not cleaned:
        raise FolderError(f"cannot name a model after {folder}: give one with --name")
    return cleaned


def archive_folder(
    folder: Path, name: str, options: dict[str, Any], limits: DatasetLimits
) -> Upload:
    """Check the folder against the training function's limits and shape, and `options` as
    it parses them, then zip it with a manifest.json of `options` as the first member."""
    if not folder.is_dir():
        raise FolderError(f"{folder} is not a folder of <label>/<image> files")
    _check_options(options, name)
    try:
        files = [path for path, _ in scan_directory(folder, limits) if not is_ignored(path)]
    except DatasetError as exc:
        raise FolderError(
            f"{folder} is beyond the training function's dataset limits: {exc}"
        ) from exc
    # Labelled as the training function will label them (a shared wrapper folder dropped).
    file_labels = [label_of(path) for path in label_paths(files)]
    labels = sorted({label for label in file_labels if label is not None})
    loose = [path for path, label in zip(files, file_labels, strict=True) if label is None]
    if loose:
        raise FolderError(
            f"{folder} has files outside label folders ({', '.join(loose[:3])}); expected "
            "<label>/<image>"
        )
    if len(labels) < 2:
        found = f"one label folder ({labels[0]})" if labels else "no label folder with images"
        raise FolderError(f"{folder} has {found}: a classifier needs at least two")
    try:  # counted on files: a class short of images here is short after decoding too
        check_counts(Counter(file_labels), tuple(labels), limits)
    except DatasetError as exc:
        raise FolderError(f"{folder}: {exc}: {'; '.join(exc.problems)}") from exc
    buffer = io.BytesIO()
    with zipfile.ZipFile(buffer, "w", zipfile.ZIP_DEFLATED) as archive:
        archive.writestr(MANIFEST_NAME, json.dumps({**options, "model": name}))
        for relative in files:
            archive.write(folder / relative, relative)
    data = buffer.getvalue()
    if len(data) > limits.max_archive_bytes:
        raise FolderError(
            f"{folder} is beyond the training function's dataset limits: "
            f"{limits.violation('max_archive_bytes', f'its zip is {len(data)} bytes')}"
        )
    return Upload(name, data, len(files), tuple(labels))


def _check_options(options: dict[str, Any], name: str) -> None:
    """FolderError for options the training function would refuse, before anything is
    uploaded (a refused upload would still replace the dataset of that name)."""
    from lepton_runtime.errors import BadRequestError
    from lepton_runtime.training.requests import DatasetSource, parse_options

    try:
        parse_options({**options, "model": name}, name, DatasetSource("archive", name=name))
    except BadRequestError as exc:
        raise FolderError(str(exc)) from exc


def follow(
    read_status: Any, since: float, timeout: float, out: Any = sys.stdout
) -> tuple[int, dict[str, Any] | None]:
    """Follow a training's status until it ends; (exit code, final status)."""
    from tqdm import tqdm

    bar: Any = None
    deadline = time.monotonic() + timeout
    try:
        while time.monotonic() < deadline:
            status = read_status()
            if status is None or float(status.get("started", 0)) < since:
                time.sleep(0.3)
                continue
            stage = status.get("stage")
            if stage in ("training", "publishing") and status.get("epochs"):
                if bar is None:
                    bar = tqdm(
                        total=int(status["epochs"]),
                        desc=f"training {status['model']} (early stopping may end it sooner)",
                        unit="epoch",
                        file=sys.stderr,
                    )
                bar.update(max(0, int(status.get("epoch", 0)) - bar.n))
                metrics = status.get("metrics") or {}
                if "val_accuracy" in metrics:
                    bar.set_postfix(val_accuracy=f"{metrics['val_accuracy']:.3f}")
            if stage in ("done", "failed"):
                if bar is not None:
                    bar.close()
                    bar = None
                return summarize(status, out), status
            time.sleep(0.3)
    finally:
        if bar is not None:
            bar.close()
    return EXIT_FAILED, None


def summarize(status: dict[str, Any], out: Any = sys.stdout) -> int:
    """Print what a finished training did; its exit code."""
    reply = status.get("reply") or {}
    if status.get("stage") == "failed":
        error = reply.get("error") or status.get("error") or {}
        print(f"training failed: {reply.get('reason') or error.get('message')}", file=out)
        for problem in error.get("problems") or []:
            print(f"  {problem}", file=out)
        return EXIT_FAILED
    metrics = reply.get("metrics") or {}
    version = reply.get("version")
    name = reply.get("name")
    again = (
        " (these images were trained before: the first result)" if reply.get("duplicate") else ""
    )
    print(
        f"{name} version {version}{again}: test accuracy {metrics.get('test_accuracy', 0):.2%} "
        f"on {metrics.get('test_count', '?')} images it never saw "
        f"(validation {metrics.get('val_accuracy', 0):.2%})",
        file=out,
    )
    chosen = reply.get("input") or {}
    if chosen:
        height, width = chosen.get("image_size", ["?", "?"])
        kind = "RGB" if chosen.get("channels") == 3 else "grayscale"
        why = "; ".join((chosen.get("chosen_from_data") or {}).values())
        print(f"input: {height}x{width} {kind}" + (f" ({why})" if why else ""), file=out)
    location = reply.get("location") or {}
    if location:
        print(f"files and plots: s3://{location['bucket']}/{location['prefix']}", file=out)
    if reply.get("promoted"):
        print(f"now live: lepton predict --model {name} IMAGE...", file=out)
        return EXIT_LIVE
    print(f"not made live: {reply.get('gate')}", file=out)
    return EXIT_HELD_BACK
