"""Datasets from folders, archives and arrays; digests; validation; the stratified split."""

from __future__ import annotations

import io
import tracemalloc
import zipfile
from collections.abc import Callable
from pathlib import Path

import numpy as np
import pytest

from lepton_model import datasets, digits
from lepton_model.datasets import Dataset, DatasetLimits
from lepton_model.errors import DatasetError, LeptonModelError

Files = list[tuple[str, bytes]]
Packer = Callable[..., bytes]


def assert_same_dataset(got: Dataset, expected: Dataset) -> None:
    assert got.digest == expected.digest
    assert got.class_names == expected.class_names
    assert np.array_equal(got.labels, expected.labels)
    assert np.array_equal(got.images, expected.images)


# -- sources ------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("packing", "wrapper"),
    [
        ("folder", ""),
        ("folder", "digits/"),
        ("zip", ""),
        ("zip", "digits/"),
        ("tar.gz", ""),
        ("tar.gz", "digits/"),
        ("tar.gz", "./digits/"),
    ],
)
def test_folder_zip_and_targz_give_the_same_dataset_and_digest(
    packing: str,
    wrapper: str,
    tiny_files: Files,
    tiny_dataset: Dataset,
    zip_bytes: Packer,
    tar_bytes: Packer,
    tree: Callable,
    tmp_path: Path,
) -> None:
    """`<label>/<image>` files load identically however they are packed, wrapped or not."""
    if packing == "folder":
        tree(tmp_path / "upload", [(wrapper + name, data) for name, data in tiny_files])
        loaded = datasets.load_directory(tmp_path / "upload")
    elif packing == "zip":
        loaded = datasets.load_archive(zip_bytes(tiny_files, wrapper))
    else:
        loaded = datasets.load_archive(tar_bytes(tiny_files, wrapper))

    assert_same_dataset(loaded, tiny_dataset)
    assert loaded.class_names == ("0", "1", "2")
    assert loaded.class_counts == {"0": 12, "1": 12, "2": 12}
    assert loaded.images.shape == (36, 28, 28, 1) and loaded.images.dtype == np.float32


@pytest.mark.parametrize("suffix", [".zip", ".tar.gz"])
def test_load_archive_reads_a_path(
    suffix: str,
    tiny_files: Files,
    tiny_dataset: Dataset,
    zip_bytes: Packer,
    tar_bytes: Packer,
    tmp_path: Path,
) -> None:
    path = tmp_path / f"digits{suffix}"
    path.write_bytes(zip_bytes(tiny_files) if suffix == ".zip" else tar_bytes(tiny_files))

    assert_same_dataset(datasets.load_archive(path), tiny_dataset)


def test_os_and_tool_junk_is_ignored(
    tiny_files: Files, tiny_dataset: Dataset, zip_bytes: Packer
) -> None:
    """macOS resource forks, .DS_Store, hidden files and manifest.json are not images."""
    junk = [
        ("__MACOSX/digits/0/._0000.png", b"\x00\x05\x16\x07 resource fork"),
        ("digits/.DS_Store", b"Bud1 finder data"),
        ("digits/0/.DS_Store", b"Bud1 finder data"),
        ("digits/1/.hidden.png", b"not an image"),
        ("digits/manifest.json", b'{"labels": ["0", "1", "2"]}'),
    ]
    packed = zip_bytes([(f"digits/{name}", data) for name, data in tiny_files] + junk)

    assert_same_dataset(datasets.load_archive(packed), tiny_dataset)


def test_digest_changes_when_one_image_changes(tiny_files: Files, tiny_dataset: Dataset) -> None:
    name, _ = tiny_files[5]
    other_digit = digits.digit_files(indices=np.array([1000]))[0][1]
    changed = [(n, other_digit if n == name else d) for n, d in tiny_files]

    assert datasets.from_files(changed).digest != tiny_dataset.digest


def test_digest_changes_when_one_image_is_relabelled(
    tiny_files: Files, tiny_dataset: Dataset
) -> None:
    name, data = tiny_files[0]  # a "0"
    relabelled = [("1/moved.png", data), *tiny_files[1:]]

    assert not name.startswith("1/")
    assert datasets.from_files(relabelled).digest != tiny_dataset.digest


def test_digest_ignores_file_order(tiny_files: Files, tiny_dataset: Dataset) -> None:
    assert datasets.from_files(list(reversed(tiny_files))).digest == tiny_dataset.digest


def test_numeric_labels_sort_numerically(tiny_files: Files) -> None:
    renamed = [(name.replace("2/", "10/", 1), data) for name, data in tiny_files]

    assert datasets.from_files(renamed).class_names == ("0", "1", "10")


# -- arrays -------------------------------------------------------------------------------------


def seed_article_arrays(count: int = 20) -> tuple[list, list]:
    """x_train/y_train as the seed article had them: Python lists, pixels scaled to [0, 1]."""
    rng = np.random.default_rng(3)
    x_train = (rng.random((count, 28, 28)) ** 4).round(4)
    y_train = [i % 2 for i in range(count)]
    return x_train.tolist(), y_train


def test_from_arrays_accepts_the_seed_articles_unit_range_lists() -> None:
    x_train, y_train = seed_article_arrays()

    dataset = datasets.from_arrays(x_train, y_train)

    assert dataset.images.shape == (20, 28, 28, 1) and dataset.images.dtype == np.float32
    assert dataset.images.max() > 1.0  # rescaled to the 0..255 every runtime expects
    expected = np.asarray(x_train, dtype=np.float32)[..., np.newaxis] * 255.0
    assert np.allclose(dataset.images, expected)
    assert dataset.class_names == ("0", "1")
    assert dataset.labels.tolist() == y_train


def test_from_arrays_is_the_same_for_unit_and_byte_range() -> None:
    x_train, y_train = seed_article_arrays()
    scaled = np.asarray(x_train, dtype=np.float32) * 255.0

    unit = datasets.from_arrays(x_train, y_train)
    byte = datasets.from_arrays(scaled, y_train)

    assert np.allclose(unit.images, byte.images, atol=1e-3)


@pytest.mark.parametrize(
    "shape", [(6, 8, 8), (6, 56, 56, 1), (6, 28, 28, 3)], ids=["8x8", "56x56x1", "28x28x3"]
)
def test_from_arrays_conforms_images_to_the_model_input(shape: tuple[int, ...]) -> None:
    images = np.random.default_rng(0).integers(0, 256, shape).astype(np.float32)

    dataset = datasets.from_arrays(images, ["a", "b"] * 3)

    assert dataset.images.shape == (6, 28, 28, 1)
    assert dataset.images.min() >= 0.0 and dataset.images.max() <= 255.0


def test_from_arrays_maps_labels_through_the_given_class_names() -> None:
    images = np.zeros((4, 28, 28), dtype=np.float32)

    dataset = datasets.from_arrays(images, ["dog", "cat", "dog", "cat"], ["dog", "cat"])

    assert dataset.class_names == ("dog", "cat")
    assert dataset.labels.tolist() == [0, 1, 0, 1]


def test_from_arrays_digest_follows_the_pixels() -> None:
    images = np.random.default_rng(0).integers(0, 256, (4, 28, 28)).astype(np.float32)
    labels = [0, 1, 0, 1]
    changed = images.copy()
    changed[2, 3, 4] += 1.0

    same = datasets.from_arrays(images.copy(), labels).digest
    assert datasets.from_arrays(images, labels).digest == same
    assert datasets.from_arrays(changed, labels).digest != same


@pytest.mark.parametrize(
    ("images", "labels", "class_names", "message"),
    [
        (np.zeros((4, 28, 28)), [0, 1, 0], None, "labels"),
        (np.zeros((28, 28)), [0, 1], None, "shape"),
        (np.zeros((0, 28, 28)), [], None, "shape"),
        (np.full((2, 28, 28), np.nan), [0, 1], None, "NaN"),
        ([["a"] * 28] * 2, [0, 1], None, "numeric"),
        (np.zeros((2, 28, 28)), ["cat", "eel"], ["cat", "dog"], "eel"),
        (np.zeros((3, 28, 28)), [1, 1, 1], None, "class"),
    ],
    ids=[
        "count-mismatch",
        "one-image",
        "empty",
        "nan",
        "not-numeric",
        "unknown-label",
        "one-class",
    ],
)
def test_from_arrays_rejects_bad_input(
    images: object, labels: list, class_names: list | None, message: str
) -> None:
    with pytest.raises(DatasetError, match=message):
        datasets.from_arrays(images, labels, class_names)  # type: ignore[arg-type]


# -- validation ---------------------------------------------------------------------------------


def test_a_single_class_is_refused(tiny_files: Files) -> None:
    only_zeros = [(name, data) for name, data in tiny_files if name.startswith("0/")]

    with pytest.raises(DatasetError, match="at least 2") as raised:
        datasets.from_files(only_zeros)

    assert raised.value.problems == ["classes found: 0"]


def test_a_class_below_the_minimum_is_named(tiny_files: Files) -> None:
    ones = [name for name, _ in tiny_files if name.startswith("1/")]
    fewer = [(name, data) for name, data in tiny_files if name not in ones[3:]]

    with pytest.raises(DatasetError, match="too few") as raised:
        datasets.from_files(fewer)

    assert raised.value.problems == ["class '1' has 3 image(s); at least 5 needed"]


def test_undecodable_files_are_listed_by_name(tiny_files: Files) -> None:
    broken = [*tiny_files, ("2/notes.png", b"just text"), ("0/cut.png", tiny_files[0][1][:40])]

    with pytest.raises(DatasetError, match="2 file") as raised:
        datasets.from_files(broken)

    named = sorted(problem.split(":")[0] for problem in raised.value.problems)
    assert named == ["0/cut.png", "2/notes.png"]


def test_the_list_of_bad_files_is_capped(tiny_files: Files) -> None:
    broken = tiny_files + [(f"0/bad{i}.png", b"nope") for i in range(5)]

    with pytest.raises(DatasetError, match=r"\(2 not listed\)") as raised:
        datasets.from_files(broken, limits=DatasetLimits(max_bad_files_listed=3))

    assert len(raised.value.problems) == 3


def test_loose_files_outside_label_folders_are_refused(tiny_files: Files) -> None:
    loose = [*tiny_files, ("stray.png", tiny_files[0][1])]

    with pytest.raises(DatasetError, match="label folder") as raised:
        datasets.from_files(loose)

    assert raised.value.problems == ["stray.png"]


def test_an_empty_dataset_is_refused(tmp_path: Path) -> None:
    with pytest.raises(DatasetError, match="no files"):
        datasets.load_directory(tmp_path)


def test_a_missing_folder_is_refused(tmp_path: Path) -> None:
    with pytest.raises(DatasetError, match="not a directory"):
        datasets.load_directory(tmp_path / "missing")


def test_too_many_files_are_refused(tiny_files: Files) -> None:
    with pytest.raises(DatasetError, match="more than 10 files"):
        datasets.from_files(tiny_files, limits=DatasetLimits(max_files=10))


def test_dataset_errors_are_lepton_model_errors() -> None:
    assert issubclass(DatasetError, LeptonModelError)


@pytest.mark.parametrize("packing", ["zip", "tar.gz"])
def test_members_that_climb_out_of_the_archive_are_skipped(
    packing: str, tiny_files: Files, tiny_dataset: Dataset, zip_bytes: Packer, tar_bytes: Packer
) -> None:
    evil = [
        ("../../etc/0/escape.png", tiny_files[0][1]),
        ("digits/../../1/escape.png", tiny_files[0][1]),
        ("/abs/2/escape.png", tiny_files[0][1]),
    ]
    files = [*tiny_files, *evil]
    packed = zip_bytes(files) if packing == "zip" else tar_bytes(files)

    assert_same_dataset(datasets.load_archive(packed), tiny_dataset)


def test_tar_links_are_skipped(tiny_files: Files, tiny_dataset: Dataset, tar_bytes: Packer) -> None:
    packed = tar_bytes(tiny_files, links=["0/passwd.png", "1/passwd.png"])

    assert_same_dataset(datasets.load_archive(packed), tiny_dataset)


def _zip_with_bad_crc(files: Files) -> bytes:
    stored = io.BytesIO()
    with zipfile.ZipFile(stored, "w", zipfile.ZIP_STORED) as archive:
        for name, data in files:
            archive.writestr(name, data)
    damaged = bytearray(stored.getvalue())
    damaged[200] ^= 0xFF  # inside the first member's stored bytes
    return bytes(damaged)


@pytest.mark.parametrize(
    "make",
    [
        lambda files, zip_bytes, tar_bytes: b"",
        lambda files, zip_bytes, tar_bytes: np.random.default_rng(1).bytes(2048),
        lambda files, zip_bytes, tar_bytes: zip_bytes(files)[:-300],
        lambda files, zip_bytes, tar_bytes: tar_bytes(files)[:4000],
        lambda files, zip_bytes, tar_bytes: _zip_with_bad_crc(files),
    ],
    ids=["empty", "random", "truncated-zip", "truncated-targz", "zip-bad-crc"],
)
def test_unreadable_archives_raise_dataset_error(
    make: Callable[..., bytes], tiny_files: Files, zip_bytes: Packer, tar_bytes: Packer
) -> None:
    with pytest.raises(DatasetError, match="not a readable"):
        datasets.load_archive(make(tiny_files, zip_bytes, tar_bytes))


@pytest.mark.parametrize("packing", ["zip", "tar.gz"])
def test_archive_bombs_are_refused_before_decompression(
    packing: str, tiny_files: Files, zip_bytes: Packer, tar_bytes: Packer
) -> None:
    """A member whose unpacked size breaks the limit is refused from its header, unread."""
    bomb = [*tiny_files, ("0/zeros.png", bytes(16 * 1024 * 1024))]
    packed = zip_bytes(bomb) if packing == "zip" else tar_bytes(bomb)
    assert len(packed) < 1024 * 1024
    limits = DatasetLimits(max_total_bytes=1024 * 1024)

    tracemalloc.start()
    try:
        with pytest.raises(DatasetError, match="larger than"):
            datasets.load_archive(packed, limits=limits)
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()

    assert peak < 8 * 1024 * 1024


# -- split --------------------------------------------------------------------------------------


def row_dataset(labels: list[int]) -> Dataset:
    """A dataset whose 'image' i holds the number i, so a split can be traced to rows."""
    rows = np.arange(len(labels), dtype=np.float32).reshape(-1, 1, 1, 1)
    names = tuple(str(label) for label in sorted(set(labels)))
    return Dataset(rows, np.asarray(labels, dtype=np.int64), names, "sha256:rows")


def rows_of(dataset: Dataset) -> list[int]:
    return dataset.images.ravel().astype(int).tolist()


def test_split_is_stratified_disjoint_and_complete() -> None:
    dataset = row_dataset([0] * 50 + [1] * 20 + [2] * 3)

    train, validation = datasets.split(dataset, 0.2, seed=1)

    assert sorted(rows_of(train) + rows_of(validation)) == list(range(73))
    assert validation.class_counts == {"0": 10, "1": 4, "2": 1}
    assert train.class_counts == {"0": 40, "1": 16, "2": 2}


def test_split_keeps_every_class_on_both_sides() -> None:
    dataset = row_dataset([0, 0, 1, 1, 2, 2])

    train, validation = datasets.split(dataset, 0.9, seed=0)

    assert set(train.labels.tolist()) == set(validation.labels.tolist()) == {0, 1, 2}


def test_split_is_deterministic_for_a_seed() -> None:
    dataset = row_dataset([0] * 30 + [1] * 30)

    first = datasets.split(dataset, 0.3, seed=5)
    again = datasets.split(dataset, 0.3, seed=5)
    other = datasets.split(dataset, 0.3, seed=6)

    assert rows_of(first[1]) == rows_of(again[1])
    assert rows_of(first[1]) != rows_of(other[1])


@pytest.mark.parametrize("fraction", [0.0, 1.0, -0.1, 1.5])
def test_split_rejects_a_fraction_outside_0_1(fraction: float) -> None:
    with pytest.raises(DatasetError, match="between 0 and 1"):
        datasets.split(row_dataset([0, 0, 1, 1]), fraction)


def test_split_needs_two_images_per_class() -> None:
    with pytest.raises(DatasetError, match="'1' needs at least 2"):
        datasets.split(row_dataset([0, 0, 1]), 0.5)


def test_three_way_split_is_stratified_disjoint_and_complete() -> None:
    dataset = row_dataset([0] * 100 + [1] * 40 + [2] * 3)

    splits = datasets.split_three(dataset, 0.2, 0.15, seed=3)

    parts = [rows_of(splits.train), rows_of(splits.validation), rows_of(splits.test)]
    assert sorted(parts[0] + parts[1] + parts[2]) == list(range(143))
    assert splits.test.class_counts == {"0": 15, "1": 6, "2": 1}
    assert splits.validation.class_counts == {"0": 20, "1": 8, "2": 1}
    assert splits.train.class_counts["2"] == 1


def test_three_way_split_needs_three_images_per_class() -> None:
    with pytest.raises(DatasetError, match="'1' needs at least 3 images"):
        datasets.split_three(row_dataset([0, 0, 0, 1, 1]))


def test_a_subset_keeps_the_file_each_image_came_from(
    tiny_files: list[tuple[str, bytes]],
) -> None:
    dataset = datasets.from_files(tiny_files)

    subset = dataset.subset(np.array([0, 5]))

    assert subset.sources == (dataset.sources[0], dataset.sources[5])
    assert all(name in dict(tiny_files) for name in dataset.sources)
