"""`lepton train DIR`: the folder checks, the archive it uploads, how a result is told."""

from __future__ import annotations

import io
import json
import re
import zipfile
from pathlib import Path
from typing import Any

import pytest

from lepton_model.datasets import DatasetLimits
from lepton_stack import train_command as tc

# The archive's shape, not its counts: a class of one image is a folder these tests may use.
ANY_COUNT = DatasetLimits(min_per_class=1)


def _folder(root: Path, labels: dict[str, int]) -> Path:
    for label, count in labels.items():
        (root / label).mkdir(parents=True, exist_ok=True)
        for index in range(count):
            (root / label / f"{index}.png").write_bytes(f"{label}{index}".encode())
    return root


def test_the_model_is_named_after_the_folder(tmp_path: Path) -> None:
    assert tc.model_name_for(tmp_path / "my shapes!", None) == "my-shapes-"
    assert tc.model_name_for(tmp_path / "x", "colours") == "colours"
    with pytest.raises(tc.FolderError, match="--name"):
        tc.model_name_for(tmp_path / "x", "../up")


def test_the_archive_holds_the_options_first_then_the_images(tmp_path: Path) -> None:
    folder = _folder(tmp_path / "shapes", {"circle": 2, "square": 1})

    upload = tc.archive_folder(folder, "shapes", {"epochs": 5}, ANY_COUNT)

    archive = zipfile.ZipFile(io.BytesIO(upload.data))
    assert archive.namelist() == ["manifest.json", "circle/0.png", "circle/1.png", "square/0.png"]
    assert json.loads(archive.read("manifest.json")) == {"epochs": 5, "model": "shapes"}
    assert (upload.images, upload.labels) == (3, ("circle", "square"))


@pytest.mark.parametrize(
    ("labels", "message"),
    [({}, "no label folder with images"), ({"only": 3}, "one label folder (only)")],
    ids=["empty", "one-label"],
)
def test_a_folder_a_classifier_cannot_learn_from_is_refused(
    tmp_path: Path, labels: dict[str, int], message: str
) -> None:
    folder = _folder(tmp_path / "set", labels)
    folder.mkdir(exist_ok=True)

    with pytest.raises(tc.FolderError, match=re.escape(message)):
        tc.archive_folder(folder, "set", {}, DatasetLimits())


def test_a_class_short_of_images_is_refused_before_anything_is_uploaded(tmp_path: Path) -> None:
    """The training function's per-class minimum (5), counted on the files: refused here
    (exit 2), the folder is never uploaded over the dataset of that name to fail there."""
    folder = _folder(tmp_path / "shapes", {"circle": 6, "square": 2})

    with pytest.raises(tc.FolderError, match=r"class 'square' has 2 image\(s\); at least 5"):
        tc.archive_folder(folder, "shapes", {}, DatasetLimits())


def test_files_outside_label_folders_are_refused(tmp_path: Path) -> None:
    folder = _folder(tmp_path / "set", {"a": 1, "b": 1})
    (folder / "stray.png").write_bytes(b"x")

    with pytest.raises(tc.FolderError, match="outside label folders"):
        tc.archive_folder(folder, "set", {}, DatasetLimits())


def test_a_folder_wrapping_its_label_folders_is_taken_as_training_takes_it(
    tmp_path: Path,
) -> None:
    """`download/images/<label>/...` (an unpacked download): the training function drops the
    folder every file shares, so `lepton train download` must not call it one label."""
    download = tmp_path / "download"
    _folder(download / "images", {"circle": 2, "square": 1})

    upload = tc.archive_folder(download, "download", {}, ANY_COUNT)

    assert (upload.images, upload.labels) == (3, ("circle", "square"))


def test_the_labels_announced_are_the_folders_the_images_are_in(tmp_path: Path) -> None:
    """As training labels them: `A/more/x.png` is in class `more`, not `A`."""
    folder = _folder(tmp_path / "letters", {"A": 1, "B": 1})
    _folder(folder / "A", {"more": 1})

    upload = tc.archive_folder(folder, "letters", {}, ANY_COUNT)

    assert upload.labels == ("A", "B", "more")


def _done(promoted: bool, **reply: Any) -> dict[str, Any]:
    return {
        "stage": "done",
        "model": "shapes",
        "started": 10.0,
        "reply": {
            "name": "shapes",
            "version": "v9",
            "promoted": promoted,
            "gate": "the live version v1 tells [a, b] apart",
            "metrics": {"test_accuracy": 0.97, "test_count": 30, "val_accuracy": 0.99},
            "input": {
                "channels": 3,
                "image_size": [40, 40],
                "chosen_from_data": {"channels": "100% of the images are in colour"},
            },
            "location": {"bucket": "lepton-models", "prefix": "shapes/v9/"},
            **reply,
        },
    }


def test_a_live_result_exits_0_and_says_how_to_use_it() -> None:
    out = io.StringIO()

    assert tc.summarize(_done(True), out) == tc.EXIT_LIVE
    text = out.getvalue()
    assert "shapes version v9: test accuracy 97.00% on 30 images it never saw" in text
    assert "input: 40x40 RGB (100% of the images are in colour)" in text
    assert "files and plots: s3://lepton-models/shapes/v9/" in text
    assert "lepton predict --model shapes" in text


def test_a_held_back_result_exits_3_with_the_gate_reason() -> None:
    out = io.StringIO()

    assert tc.summarize(_done(False), out) == tc.EXIT_HELD_BACK
    assert "not made live: the live version v1 tells [a, b] apart" in out.getvalue()


def test_a_failed_training_exits_1_and_lists_the_problems() -> None:
    out = io.StringIO()
    status = {
        "stage": "failed",
        "reply": {
            "reason": "2 file(s) could not be decoded as images",
            "error": {"problems": ["a/x.png: not an image", "b/y.png: truncated"]},
        },
    }

    assert tc.summarize(status, out) == tc.EXIT_FAILED
    assert "a/x.png: not an image" in out.getvalue()


def test_follow_waits_for_this_trainings_status_and_ignores_older_ones() -> None:
    older = {**_done(True), "started": 1.0}
    statuses = iter(
        [
            None,
            older,
            {"stage": "loading", "model": "shapes", "started": 10.0},
            {"stage": "training", "model": "shapes", "started": 10.0, "epoch": 3, "epochs": 9},
            _done(False),
        ]
    )

    code, final = tc.follow(lambda: next(statuses), since=5.0, timeout=30, out=io.StringIO())

    assert code == tc.EXIT_HELD_BACK
    assert final is not None and final["reply"]["version"] == "v9"
