"""Hostile archives: every bomb is refused with a DatasetError naming its limit, quickly and in
bounded memory.

The bombs are loaded in a fresh process whose peak resident memory (VmHWM) is compared with a
bound: the peak of loading the tiny 36-image dataset (interpreter, numpy, Pillow, decoding) plus
four times the per-member limit. Reading one member holds at most its chunks, their join and
the decoder's view of them (three copies of at most `max_member_bytes`); the fourth is slack for
the allocator. A bomb that inflated as far as its header claims would need gigabytes.
"""

from __future__ import annotations

import io
import stat
import tarfile
import zipfile
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from PIL import Image

from archive_bombs import (
    GiB,
    MiB,
    RawMember,
    deflated,
    deflated_zeros,
    gzip_bytes,
    gzip_of,
    raw_zip,
    tar_entry,
    tar_header,
    tar_of_entries,
    targz_of_zeros,
    zeros_member,
    zip_directory_bomb,
    zip_of_zeros,
)
from lepton_model import datasets
from lepton_model.datasets import Dataset, DatasetLimits
from lepton_model.errors import DatasetError, DatasetTooLargeError

Files = list[tuple[str, bytes]]
# Per bomb: stopping at the limits takes 0.1-3 s here (2 shared cores), inflating them to the
# end from seconds to minutes; the memory bound is what tells the two apart for small bombs.
SECONDS = 10.0
MEMBER_LIMIT = DatasetLimits().max_member_bytes


@pytest.fixture(scope="session")
def memory_bound(baseline_vmhwm: int) -> int:
    return baseline_vmhwm + 4 * MEMBER_LIMIT


@pytest.fixture
def write(tmp_path: Path) -> Callable[[str, bytes], Path]:
    def put(name: str, data: bytes) -> Path:
        path = tmp_path / name
        path.write_bytes(data)
        return path

    return put


def tar_prefix(files: Files) -> bytes:
    """Whole tar entries of `files`, without the end-of-archive blocks."""
    return b"".join(tar_entry(name, data) for name, data in files)


def targz(entries: bytes) -> bytes:
    return gzip_bytes(entries + bytes(1024))


def assert_same_dataset(got: Dataset, expected: Dataset) -> None:
    assert got.digest == expected.digest
    assert np.array_equal(got.images, expected.images)


# -- bombs, measured in a fresh process -----------------------------------------------------------


def bomb_zip_zeros(files: Files) -> bytes:
    """3 GiB of zeros in one deflated member, 3 MB packed, headers honest."""
    return zip_of_zeros("digits/0/zeros.png", 3 * GiB)


def bomb_targz_zeros(files: Files) -> bytes:
    """3 GiB of zeros in one member of a .tar.gz, after the real images."""
    return targz_of_zeros("digits/0/zeros.png", 3 * GiB, tar_prefix(files))


def bomb_zip_macosx(files: Files) -> bytes:
    """A 3 GiB member hidden where nothing is ever decoded."""
    return raw_zip([deflated(name, data) for name, data in files] + [
        zeros_member("__MACOSX/0/._zeros.png", 3 * GiB)
    ])  # fmt: skip


def bomb_targz_dotfile(files: Files) -> bytes:
    return targz_of_zeros("0/.zeros.png", 3 * GiB, tar_prefix(files))


def bomb_zip_million_entries(files: Files) -> bytes:
    """A tiny zip whose zip64 end record declares a million entries."""
    return raw_zip([deflated("0/a.png", files[0][1])], zip64_entries=1_000_000)


def bomb_zip_huge_directory(files: Files) -> bytes:
    return raw_zip([deflated("0/a.png", files[0][1])], directory_size=1 * GiB)


def bomb_targz_pax_header(files: Files) -> bytes:
    """A pax extended header claiming 3 GiB of records (tarfile reads those by itself)."""
    return targz_of_zeros("././@PaxHeader", 3 * GiB, tar_prefix(files), kind=tarfile.XHDTYPE)


def bomb_targz_long_name(files: Files) -> bytes:
    """A GNU long-name entry claiming a 3 GiB name."""
    return targz_of_zeros("././@LongLink", 3 * GiB, kind=tarfile.GNUTYPE_LONGNAME)


def bomb_many_members(files: Files) -> bytes:
    """60 members of 19 MiB of zeros each: every one under the member limit, 1.1 GiB in all."""
    return raw_zip([zeros_member(f"0/zeros{i}.png", 19 * MiB) for i in range(60)])


@pytest.mark.parametrize(
    ("make", "limit"),
    [
        (bomb_zip_zeros, "max_member_bytes"),
        (bomb_targz_zeros, "max_member_bytes"),
        (bomb_zip_macosx, "max_member_bytes"),
        (bomb_targz_dotfile, "max_member_bytes"),
        (bomb_zip_million_entries, "max_entries"),
        (bomb_zip_huge_directory, "max_directory_bytes"),
        (bomb_targz_pax_header, "max_header_bytes"),
        (bomb_targz_long_name, "max_header_bytes"),
        (bomb_many_members, "max_total_bytes"),
    ],
    ids=lambda value: getattr(value, "__name__", value).removeprefix("bomb_"),
)
def test_a_bomb_is_refused_naming_its_limit_in_bounded_memory_and_time(
    make: Callable[[Files], bytes],
    limit: str,
    tiny_files: Files,
    write: Callable[[str, bytes], Path],
    load_in_subprocess: Callable[..., Any],
    memory_bound: int,
) -> None:
    path = write(make.__name__.removeprefix("bomb_"), make(tiny_files))
    assert path.stat().st_size < 8 * MiB

    loaded = load_in_subprocess(path)

    assert loaded.error == "DatasetTooLargeError", loaded.message
    assert loaded.limit == limit
    assert " limit is " in loaded.message and loaded.message.endswith(f"({limit})")
    assert loaded.vmhwm < memory_bound, f"{loaded.vmhwm / MiB:.0f} MiB"
    assert loaded.seconds < SECONDS


@pytest.mark.parametrize("declared", [1000, MEMBER_LIMIT - 1], ids=["1KB", "under-the-limit"])
def test_a_zip_whose_headers_understate_a_member_is_read_no_further_than_declared(
    declared: int,
    write: Callable[[str, bytes], Path],
    load_in_subprocess: Callable[..., Any],
    memory_bound: int,
) -> None:
    """1 GiB of deflate data behind headers that claim less (and a CRC that matches the
    claim): inflation stops at the claim and the member is just that many zeros."""
    path = write("understated.zip", zip_of_zeros("0/zeros.png", 1 * GiB, declared=declared))

    loaded = load_in_subprocess(path)

    assert loaded.error == "DatasetError"
    assert loaded.problems == ["0/zeros.png: the data is not a recognised image"]
    assert loaded.vmhwm < memory_bound, f"{loaded.vmhwm / MiB:.0f} MiB"
    assert loaded.seconds < SECONDS


def test_a_nested_archive_bomb_is_not_unpacked(
    tiny_files: Files,
    write: Callable[[str, bytes], Path],
    load_in_subprocess: Callable[..., Any],
    memory_bound: int,
) -> None:
    inner = zip_of_zeros("0/zeros.png", 3 * GiB)
    path = write(
        "nested.zip", raw_zip([deflated(n, d) for n, d in [*tiny_files, ("1/x.png", inner)]])
    )

    loaded = load_in_subprocess(path)

    assert loaded.error == "DatasetError"
    assert loaded.problems == [
        "1/x.png: an archive inside the dataset (nested archives are not unpacked)"
    ]
    assert loaded.vmhwm < memory_bound
    assert loaded.seconds < SECONDS


def test_a_central_directory_that_understates_its_entries_costs_its_size_at_most(
    write: Callable[[str, bytes], Path],
    load_in_subprocess: Callable[..., Any],
    baseline_vmhwm: int,
) -> None:
    """A full 16 MiB directory of minimal 47-byte records behind an end record declaring one
    entry: zipfile parses them all (357 000 ZipInfo) before they can be counted. Each record
    becomes a ZipInfo of about 400 bytes (9 times its size) and the directory bytes are held
    twice while parsed: 12 times the directory limit bounds it."""
    limit = DatasetLimits().max_directory_bytes
    path = write("directory.zip", zip_directory_bomb(limit // 47))

    loaded = load_in_subprocess(path)

    assert loaded.limit == "max_entries"
    assert loaded.message.startswith("the zip has 356962 entries")
    assert loaded.vmhwm < baseline_vmhwm + 12 * limit, f"{loaded.vmhwm / MiB:.0f} MiB"
    assert loaded.seconds < SECONDS


def test_many_tiny_entries_stop_at_the_entry_limit(
    write: Callable[[str, bytes], Path],
    load_in_subprocess: Callable[..., Any],
    memory_bound: int,
) -> None:
    """200 000 empty hidden files (100 MB of tar, 100 KB packed): skipped ones count too."""
    path = write("many.tar.gz", tar_of_entries(tar_header("0/._x.png"), 200_000))

    loaded = load_in_subprocess(path, max_entries=20_000)

    assert loaded.limit == "max_entries"
    assert "more than 20000 entries" in loaded.message
    assert loaded.vmhwm < memory_bound
    assert loaded.seconds < SECONDS


def test_a_gzip_header_that_never_ends_is_refused_quickly(
    write: Callable[[str, bytes], Path], load_in_subprocess: Callable[..., Any]
) -> None:
    """FNAME flag set and 64 MiB without the NUL that ends the name."""
    path = write("endless.tar.gz", b"\x1f\x8b\x08\x08\x00\x00\x00\x00\x02\x03" + b"a" * (64 * MiB))

    loaded = load_in_subprocess(path)

    assert loaded.error == "DatasetError" and "truncated" in loaded.message
    assert loaded.seconds < SECONDS


# -- limits, in process ---------------------------------------------------------------------------


def test_skipped_tar_members_count_towards_the_total(tiny_files: Files) -> None:
    hidden = b"".join(tar_entry(f"0/._junk{i}.png", bytes(8 * MiB)) for i in range(3))
    packed = targz(tar_prefix(tiny_files) + hidden)

    with pytest.raises(DatasetTooLargeError, match="total unpacked size") as raised:
        datasets.load_archive(packed, limits=DatasetLimits(max_total_bytes=20 * MiB))

    assert raised.value.limit == "max_total_bytes"


def test_skipped_zip_members_are_never_inflated(tiny_files: Files, tiny_dataset: Dataset) -> None:
    """A junk member that lies about its size costs nothing: it is not read at all."""
    liar = RawMember("__MACOSX/._x", deflated_zeros(64 * MiB), 10)
    packed = raw_zip([*(deflated(n, d) for n, d in tiny_files), liar])

    loaded = datasets.load_archive(packed, limits=DatasetLimits(max_total_bytes=MiB))

    assert_same_dataset(loaded, tiny_dataset)


@pytest.mark.parametrize("packing", ["zip", "tar.gz"])
def test_every_entry_counts_not_only_the_kept_ones(packing: str, tiny_files: Files) -> None:
    junk = [(f"__MACOSX/._{i}", b"x") for i in range(30)]
    files = tiny_files[:5] + junk
    if packing == "zip":
        packed = raw_zip([deflated(n, d) for n, d in files])
    else:
        packed = targz(tar_prefix(files))

    with pytest.raises(DatasetTooLargeError, match=r"more than 20 entries|declares 35 entries"):
        datasets.load_archive(packed, limits=DatasetLimits(max_entries=20))


def test_a_zip_whose_end_record_understates_its_entries_is_counted(tiny_files: Files) -> None:
    packed = raw_zip([deflated(n, d) for n, d in tiny_files], entries=1)

    with pytest.raises(DatasetTooLargeError, match="the zip has 36 entries"):
        datasets.load_archive(packed, limits=DatasetLimits(max_entries=20))


def test_the_zip64_end_record_and_a_comment_are_found(
    tiny_files: Files, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The end record is looked for as zipfile does: behind a comment, with zip64 records."""
    monkeypatch.setattr(zipfile, "ZIP_FILECOUNT_LIMIT", 4)  # zipfile writes zip64 records above
    buffer = io.BytesIO()
    with zipfile.ZipFile(buffer, "w") as archive:
        for name, data in tiny_files:
            archive.writestr(name, data)
        archive.comment = b"a comment pushes the end record back " * 100
    packed = buffer.getvalue()
    assert b"PK\x06\x06" in packed

    with pytest.raises(DatasetTooLargeError, match="the zip declares 36 entries"):
        datasets.load_archive(packed, limits=DatasetLimits(max_entries=20))
    assert len(datasets.load_archive(packed)) == 36


def test_the_archive_itself_is_bounded(tiny_files: Files, zip_bytes: Callable) -> None:
    packed = zip_bytes(tiny_files)

    with pytest.raises(DatasetTooLargeError, match="archive size limit is 1000 bytes"):
        datasets.load_archive(packed, limits=DatasetLimits(max_archive_bytes=1000))


def test_the_decoded_dataset_is_bounded(tiny_files: Files, zip_bytes: Callable) -> None:
    """36 images of 28x28x1 float32 are 112 896 bytes."""
    with pytest.raises(DatasetTooLargeError, match=r"28x28x1 float32") as raised:
        datasets.load_archive(
            zip_bytes(tiny_files), limits=DatasetLimits(max_decoded_bytes=100_000)
        )

    assert raised.value.limit == "max_decoded_bytes"
    assert "decoded dataset size limit is 100000 bytes" in str(raised.value)


def test_the_source_pixels_are_bounded(tiny_files: Files, zip_bytes: Callable) -> None:
    """40 megapixels of PNG is 40 KB packed and a quarter of a second to decode."""
    buffer = io.BytesIO()
    Image.new("L", (6400, 6250), 0).save(buffer, "PNG")
    huge = [(f"{i % 2}/huge{i}.png", buffer.getvalue()) for i in range(6)]

    with pytest.raises(DatasetTooLargeError, match="total source pixel limit") as raised:
        datasets.load_archive(
            zip_bytes(tiny_files + huge), limits=DatasetLimits(max_total_pixels=100_000_000)
        )

    assert raised.value.limit == "max_total_pixels"


def test_arrays_are_bounded_by_the_decoded_limit() -> None:
    with pytest.raises(DatasetTooLargeError, match="decoded dataset size"):
        datasets.from_arrays(
            np.zeros((40, 8, 8)), [0, 1] * 20, limits=DatasetLimits(max_decoded_bytes=100_000)
        )


def test_a_long_path_is_refused(tiny_files: Files, zip_bytes: Callable) -> None:
    deep = "a/" * 300 + "0/x.png"
    with pytest.raises(DatasetTooLargeError, match="607 characters") as raised:
        datasets.load_archive(zip_bytes([*tiny_files, (deep, tiny_files[0][1])]))

    assert raised.value.limit == "max_name_chars"


def test_reading_stops_after_too_many_undecodable_files(tiny_files: Files) -> None:
    junk = [(f"0/junk{i:03}.png", b"not an image") for i in range(50)]

    with pytest.raises(DatasetError, match="more than 10 files could not be decoded") as raised:
        datasets.from_files(tiny_files + junk, limits=DatasetLimits(max_bad_files=10))

    assert len(raised.value.problems) == 10


def test_a_bzip2_zip_member_is_refused(tiny_files: Files) -> None:
    buffer = io.BytesIO()
    with zipfile.ZipFile(buffer, "w", zipfile.ZIP_BZIP2) as archive:
        archive.writestr(*tiny_files[0])

    with pytest.raises(DatasetError, match="method 12; only stored and deflate"):
        datasets.load_archive(buffer.getvalue())


# -- what is skipped, what is unreadable ----------------------------------------------------------


@pytest.mark.parametrize("packing", ["zip", "tar.gz"])
def test_an_archive_of_only_climbing_members_holds_no_files(packing: str) -> None:
    names = ["../../etc/0/passwd.png", "/etc/1/shadow.png", "a/../../0/x.png"]
    if packing == "zip":
        packed = raw_zip([deflated(name, b"x") for name in names])
    else:
        packed = targz(b"".join(tar_entry(name, b"x") for name in names))

    with pytest.raises(DatasetError, match="holds no files"):
        datasets.load_archive(packed)


def test_zip_symlinks_and_devices_are_skipped(tiny_files: Files, tiny_dataset: Dataset) -> None:
    links = [
        RawMember("0/passwd.png", b"/etc/passwd", 11, method=0, mode=stat.S_IFLNK | 0o777),
        RawMember("1/null.png", b"", 0, method=0, mode=stat.S_IFCHR | 0o666),
    ]
    packed = raw_zip([*(deflated(n, d) for n, d in tiny_files), *links])

    assert_same_dataset(datasets.load_archive(packed), tiny_dataset)


def test_tar_links_devices_and_fifos_are_skipped(tiny_files: Files, tiny_dataset: Dataset) -> None:
    odd = b"".join(
        [
            tar_header("0/passwd.png", kind=tarfile.SYMTYPE, linkname="/etc/passwd"),
            tar_header("1/shadow.png", kind=tarfile.LNKTYPE, linkname="../../etc/shadow"),
            tar_header("2/null.png", kind=tarfile.CHRTYPE, devmajor=1, devminor=3),
            tar_header("2/pipe.png", kind=tarfile.FIFOTYPE),
        ]
    )

    assert_same_dataset(datasets.load_archive(targz(tar_prefix(tiny_files) + odd)), tiny_dataset)


def test_a_tar_of_a_gzip_of_a_gzip_is_not_unpacked_twice(tiny_files: Files) -> None:
    with pytest.raises(DatasetError, match="not a readable"):
        datasets.load_archive(gzip_bytes(targz(tar_prefix(tiny_files))))


@pytest.mark.parametrize(
    "damage",
    [
        lambda packed: packed[: len(packed) // 2],
        lambda packed: packed[:20] + bytes(200) + packed[220:],
        lambda packed: gzip_of(b"\xff" * 64),
    ],
    ids=["truncated", "zeroed", "bad-deflate"],
)
def test_a_damaged_tar_gz_is_unreadable(
    damage: Callable[[bytes], bytes], tiny_files: Files
) -> None:
    with pytest.raises(DatasetError, match="not a readable"):
        datasets.load_archive(damage(targz(tar_prefix(tiny_files))))


def test_a_zip_whose_member_points_outside_the_file_is_unreadable(tiny_files: Files) -> None:
    packed = bytearray(raw_zip([deflated(n, d) for n, d in tiny_files[:3]]))
    directory = packed.rfind(b"PK\x01\x02")
    packed[directory + 42 : directory + 46] = (2**31).to_bytes(4, "little")  # its offset

    with pytest.raises(DatasetError, match="not a readable"):
        datasets.load_archive(bytes(packed))


# -- sources ------------------------------------------------------------------------------------


SOURCES = ("bytes", "path", "file")


class _Unseekable(io.RawIOBase):
    """A pipe-like stream: reads only."""

    def __init__(self, data: bytes) -> None:
        self._data = io.BytesIO(data)

    def readable(self) -> bool:
        return True

    def readinto(self, buffer) -> int:  # type: ignore[no-untyped-def]
        chunk = self._data.read(len(buffer))
        buffer[: len(chunk)] = chunk
        return len(chunk)


@pytest.mark.parametrize(
    ("packing", "source"),
    [
        *((packing, source) for packing in ("zip", "tar.gz", "tar") for source in SOURCES),
        ("tar.gz", "pipe"),
        ("tar", "pipe"),
    ],
)
def test_archives_stream_from_bytes_paths_and_file_objects(
    packing: str, source: str, tiny_files: Files, tiny_dataset: Dataset, tmp_path: Path
) -> None:
    if packing == "zip":
        packed = raw_zip([deflated(n, d) for n, d in tiny_files])
    else:
        plain = tar_prefix(tiny_files) + bytes(1024)
        packed = gzip_bytes(plain) if packing == "tar.gz" else plain
    path = tmp_path / "archive"
    path.write_bytes(packed)
    given = {
        "bytes": lambda: packed,
        "path": lambda: path,
        "file": lambda: path.open("rb"),
        "pipe": lambda: _Unseekable(packed),
    }[source]()

    assert_same_dataset(datasets.load_archive(given), tiny_dataset)


def test_a_zip_from_a_stream_that_cannot_seek_is_unreadable(tiny_files: Files) -> None:
    """A zip is read from its end; through a pipe it is only bytes that are not a tar."""
    with pytest.raises(DatasetError, match="not a readable"):
        datasets.load_archive(_Unseekable(raw_zip([deflated(n, d) for n, d in tiny_files])))


def test_a_multi_member_gzip_is_read_whole(tiny_files: Files, tiny_dataset: Dataset) -> None:
    entries = tar_prefix(tiny_files)
    half = entries.rfind(b"ustar", 0, len(entries) // 2) - 257
    packed = gzip_bytes(entries[:half]) + gzip_bytes(entries[half:] + bytes(1024))

    assert_same_dataset(datasets.load_archive(packed), tiny_dataset)


# -- folders ------------------------------------------------------------------------------------


def test_a_folder_with_too_many_entries_is_refused(tmp_path: Path) -> None:
    for i in range(12):
        (tmp_path / "0" / f"{i}.png").parent.mkdir(exist_ok=True)
        (tmp_path / "0" / f"{i}.png").write_bytes(b"x")

    with pytest.raises(DatasetTooLargeError, match="entry count limit is 10 entries"):
        datasets.load_directory(tmp_path, limits=DatasetLimits(max_entries=10))


def test_a_folder_file_over_the_member_limit_is_refused_unread(tmp_path: Path) -> None:
    (tmp_path / "0").mkdir()
    with (tmp_path / "0" / "big.png").open("wb") as sparse:
        sparse.truncate(3 * GiB)  # a sparse file: costs no disk

    with pytest.raises(DatasetTooLargeError, match="is 3221225472 bytes") as raised:
        datasets.scan_directory(tmp_path)

    assert raised.value.limit == "max_member_bytes"
