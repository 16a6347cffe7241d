"""Labelled image datasets: from `<label>/<image>` folders or archives, or from arrays.

Archives are read as streams and never extracted to disk: a zip through zipfile, a tar (plain or
gzip) in tarfile's stream mode. Members are read in bounded chunks and every `DatasetLimits`
bound is checked against the bytes actually inflated, never against what a header claims.
Files are decoded as they arrive with the same `decode_image` the inference function uses (the
decoded arrays are kept, not the bytes), and fingerprinted by content so the same images give
the same digest however they were packed.
"""

from __future__ import annotations

import hashlib
import io
import stat
import struct
import tarfile
import zipfile
import zlib
from collections import Counter
from collections.abc import Iterable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path, PurePosixPath
from typing import BinaryIO, NamedTuple

import numpy as np
from PIL import Image

from lepton_model.errors import DatasetError, DatasetTooLargeError, ImageError
from lepton_model.imaging import DEFAULT_LIMITS, ImageLimits, decode_image, open_image
from lepton_model.spec import Preprocessing

ARCHIVE_SUFFIXES = (".zip", ".tar.gz", ".tgz", ".tar")
ArchiveSource = str | Path | bytes | bytearray | memoryview | BinaryIO
_IGNORED_PARTS = {"__MACOSX", ".DS_Store", "Thumbs.db"}
# A dataset's options: beside its label folders (a folder dataset) or an archive's first member.
MANIFEST_NAME = "manifest.json"
_IGNORED_NAMES = {MANIFEST_NAME, "README.md", "LICENSE", "labels.txt"}
_CHUNK = 256 * 1024
_GZIP_MAGIC = b"\x1f\x8b"
_NESTED_MAGIC = (b"PK\x03\x04", b"PK\x05\x06", _GZIP_MAGIC, b"BZh", b"\xfd7zXZ\x00")
# bzip2 and LZMA members are refused: zipfile inflates each compressed chunk of them whole, and
# 4 KiB of bzip2 can hold gigabytes of zeros.
_ZIP_METHODS = (zipfile.ZIP_STORED, zipfile.ZIP_DEFLATED)
_UNREADABLE = (
    tarfile.TarError,
    zipfile.BadZipFile,
    zlib.error,
    EOFError,
    OSError,
    RuntimeError,  # an encrypted zip member; tarfile's recursion over chained headers
    NotImplementedError,  # a zip compression method Python lacks
    UnicodeDecodeError,  # member names that are not UTF-8 (tar) or not their flagged encoding
    struct.error,
    ValueError,  # zipfile seeks to the offsets its records hold, negative ones included
)


@dataclass(frozen=True)
class DatasetLimits:
    """Every bound that keeps a hostile dataset from exhausting memory or time.

    Byte limits count bytes actually read or inflated, never what a header declares; a header
    that declares more is refused without reading.
    """

    max_files: int = 100_000  # files kept as images (junk and skipped entries not included)
    max_entries: int = 150_000  # archive entries or listed objects seen, kept or skipped
    max_member_bytes: int = DEFAULT_LIMITS.max_bytes  # one member unpacked: an image never is more
    max_total_bytes: int = 1024 * 1024 * 1024  # every byte inflated from one archive
    max_archive_bytes: int = 512 * 1024 * 1024  # the archive itself, as stored
    max_directory_bytes: int = 16 * 1024 * 1024  # a zip's central directory (parsed whole)
    max_header_bytes: int = 1024 * 1024  # a tar entry's own headers: pax, long names, sparse maps
    max_name_chars: int = 512  # a kept file's path
    max_decoded_bytes: int = 256 * 1024 * 1024  # the decoded images, n x h x w x c float32
    max_total_pixels: int = 2_000_000_000  # source pixels decoded, all images (decoding time)
    max_bad_files: int = 1_000  # undecodable files before reading stops
    min_classes: int = 2
    min_per_class: int = 5
    max_bad_files_listed: int = 20

    def violation(self, limit: str, subject: str) -> DatasetTooLargeError:
        """The error for `subject` breaking the limit named `limit` (a field of this class)."""
        description, unit = _LIMITS[limit]
        value = getattr(self, limit)
        amount = f"{value} {unit}" + (f" ({_binary(value)})" if unit == "bytes" else "")
        return DatasetTooLargeError(
            f"{subject}; the {description} limit is {amount} ({limit})", limit
        )


_LIMITS = {  # DatasetLimits field: (what it limits, its unit)
    "max_files": ("file count", "files"),
    "max_entries": ("entry count", "entries"),
    "max_member_bytes": ("per-member unpacked size", "bytes"),
    "max_total_bytes": ("total unpacked size", "bytes"),
    "max_archive_bytes": ("archive size", "bytes"),
    "max_directory_bytes": ("zip central directory size", "bytes"),
    "max_header_bytes": ("tar entry header size", "bytes"),
    "max_name_chars": ("path length", "characters"),
    "max_decoded_bytes": ("decoded dataset size", "bytes"),
    "max_total_pixels": ("total source pixel", "pixels"),
}


def _binary(size: int) -> str:
    for unit, scale in (("GiB", 1 << 30), ("MiB", 1 << 20), ("KiB", 1 << 10)):
        if size >= scale:
            return f"{size / scale:.4g} {unit}"
    return f"{size} B"


@dataclass(frozen=True)
class Dataset:
    """Decoded images (n, h, w, c) float32 in 0..255, integer labels, and class names.

    `sources` names the file each image was decoded from (its path as the archive, folder or
    listing gave it), so the encoded bytes can be read again; empty for array datasets.
    """

    images: np.ndarray
    labels: np.ndarray
    class_names: tuple[str, ...]
    digest: str
    sources: tuple[str, ...] = ()

    def __len__(self) -> int:
        return int(self.labels.shape[0])

    @property
    def class_counts(self) -> dict[str, int]:
        counts = np.bincount(self.labels, minlength=len(self.class_names))
        return {name: int(c) for name, c in zip(self.class_names, counts, strict=True)}

    def subset(self, indices: np.ndarray) -> Dataset:
        sources = tuple(self.sources[i] for i in indices) if self.sources else ()
        return Dataset(
            self.images[indices], self.labels[indices], self.class_names, self.digest, sources
        )


@dataclass(frozen=True)
class Splits:
    """Training (fitting), validation (early stopping) and test (the reported figure, which
    neither fitting nor early stopping saw)."""

    train: Dataset
    validation: Dataset
    test: Dataset


def is_ignored(name: str | PurePosixPath) -> bool:
    """OS and tool junk that is never an image: __MACOSX/, hidden files, manifest.json, ..."""
    parts = _parts(str(name))
    if parts and parts[-1] in _IGNORED_NAMES:
        return True
    return any(part in _IGNORED_PARTS or part.startswith(".") for part in parts)


def _parts(name: str) -> list[str]:
    """PurePosixPath(name).parts without the root, by string operations (once per entry)."""
    return [part for part in name.split("/") if part and part != "."]


# -- folders ------------------------------------------------------------------------------------


def scan_directory(root: Path, limits: DatasetLimits = DatasetLimits()) -> list[tuple[str, int]]:
    """(relative posix path, size) of every regular file under `root`, sorted, checked against
    the limits from the file system alone: nothing is read."""
    root = Path(root)
    found: list[tuple[str, int]] = []
    total = 0
    for seen, path in enumerate(root.rglob("*"), start=1):
        if seen > limits.max_entries:
            raise limits.violation(
                "max_entries", f"{root} has more than {limits.max_entries} entries"
            )
        if path.is_symlink() or not path.is_file():
            continue
        relative = path.relative_to(root).as_posix()
        size = path.stat().st_size
        if size > limits.max_member_bytes:
            raise limits.violation("max_member_bytes", f"{relative} is {size} bytes")
        total += size
        if total > limits.max_total_bytes:
            raise limits.violation(
                "max_total_bytes", f"the files under {root} are larger than allowed"
            )
        found.append((relative, size))
    return sorted(found)


def iter_directory(
    root: Path, limits: DatasetLimits = DatasetLimits()
) -> Iterator[tuple[str, bytes]]:
    """Yield (relative posix path, bytes) for every regular file under `root`, one at a time."""
    root = Path(root)
    for relative, _ in scan_directory(root, limits):
        with (root / relative).open("rb") as handle:
            data = handle.read(limits.max_member_bytes + 1)
        if len(data) > limits.max_member_bytes:  # it grew since the scan
            raise limits.violation("max_member_bytes", f"{relative} grew larger than allowed")
        yield relative, data


# -- archives -----------------------------------------------------------------------------------


def iter_archive(
    source: ArchiveSource, name: str = "", limits: DatasetLimits = DatasetLimits()
) -> Iterator[tuple[str, bytes]]:
    """Yield (member path, bytes) of a zip or tar(.gz) archive, one member at a time.

    `source` is a path, a binary file object (a zip needs a seekable one) or bytes. Links,
    devices, paths that climb out of the archive and OS junk (`is_ignored`) are skipped. Every
    entry counts towards `max_entries`, every inflated byte (skipped tar members' too) towards
    `max_total_bytes`; a member is read in chunks and refused past `max_member_bytes`.
    """
    label = name or (str(source) if isinstance(source, (str, Path)) else "the archive")
    budget = _Budget(limits)
    try:
        with _opened(source) as stream:
            yield from _members(stream, limits, budget)
    except _UNREADABLE as exc:
        raise DatasetError(f"{label} is not a readable .zip or .tar.gz archive ({exc})") from exc


@contextmanager
def _opened(source: ArchiveSource) -> Iterator[BinaryIO]:
    if isinstance(source, (str, Path)):
        with open(source, "rb") as handle:
            yield handle
    elif isinstance(source, (bytes, bytearray, memoryview)):
        yield io.BytesIO(source)
    else:
        yield source


class _Budget:
    """Bytes inflated from one archive so far, against `max_total_bytes`."""

    def __init__(self, limits: DatasetLimits) -> None:
        self.limits = limits
        self.spent = 0

    def expect(self, size: int) -> None:
        """Refuse before reading when a header alone already breaks the total."""
        self.check(self.spent + size)

    def spend(self, size: int) -> None:
        self.spent += size
        self.check(self.spent)

    def check(self, total: int) -> None:
        if total > self.limits.max_total_bytes:
            raise self.limits.violation(
                "max_total_bytes", "the archive is larger than allowed when unpacked"
            )


def _members(
    stream: BinaryIO, limits: DatasetLimits, budget: _Budget
) -> Iterator[tuple[str, bytes]]:
    if not _seekable(stream):
        return _tar_members(stream, limits, budget)
    start = stream.tell()
    size = stream.seek(0, io.SEEK_END) - start
    if size > limits.max_archive_bytes:
        raise limits.violation("max_archive_bytes", f"the archive is {size} bytes")
    stream.seek(start)
    head = stream.read(512)
    stream.seek(start)
    if head.startswith(_GZIP_MAGIC) or head[257:262] == b"ustar":
        return _tar_members(stream, limits, budget)
    directory = _zip_directory(stream)
    stream.seek(start)
    if directory is None:
        return _tar_members(stream, limits, budget)
    return _zip_members(stream, directory, limits, budget)


def _seekable(stream: BinaryIO) -> bool:
    try:
        return bool(stream.seekable())
    except (AttributeError, ValueError, OSError):
        return False


def _wanted(name: str) -> bool:
    """Not junk (but a manifest at the top: `archive_manifest` reads it), and inside the
    archive (no absolute paths, no `..`)."""
    name = name.replace("\\", "/")
    parts = _parts(name)
    if name.startswith("/") or ".." in parts:
        return False
    return not is_ignored(name) or (len(parts) <= 2 and parts[-1] == MANIFEST_NAME)


def archive_manifest(members: Iterable[tuple[str, bytes]]) -> bytes | None:
    """The bytes of a manifest.json that is an archive's first member (at its root or in its
    one top folder), read without going further into the archive; None without one."""
    first = next(iter(members), None)
    if first is None:
        return None
    parts = _parts(first[0])
    return first[1] if parts and parts[-1] == MANIFEST_NAME and len(parts) <= 2 else None


def _read_member(
    stream: BinaryIO, name: str, limits: DatasetLimits, budget: _Budget, keep: bool = True
) -> bytes:
    """A member's bytes, read in chunks and counted as they are inflated."""
    chunks: list[bytes] = []
    size = 0
    while chunk := stream.read(_CHUNK):
        size += len(chunk)
        if size > limits.max_member_bytes:
            raise limits.violation(
                "max_member_bytes", f"member {name!r} is larger than allowed when unpacked"
            )
        budget.spend(len(chunk))
        if keep:
            chunks.append(chunk)
    return b"".join(chunks)


# The end of central directory record and its zip64 variant (APPNOTE.TXT 4.3.14-4.3.16).
# zipfile has no public API for the entry count and directory size it is about to parse, and
# ZipFile() reads the whole directory into memory and builds a ZipInfo for every entry in it, so
# they are read here first, as zipfile finds them: the last 64 KiB, the record, then the zip64
# locator and record right before it.
_EOCD = struct.Struct("<4s4H2LH")  # signature, disks, entries here, entries, size, offset, comment
_EOCD_LOCATOR = struct.Struct("<4sLQL")  # signature, disk, zip64 record offset, disks
_EOCD64 = struct.Struct("<4sQ2H2L4Q")  # sig., size, versions, disks, entries here, entries, ...


def _zip_directory(stream: BinaryIO) -> tuple[int, int] | None:
    """(declared entries, central directory bytes) of a zip; None when it is not one."""
    end = stream.seek(0, io.SEEK_END)
    window = _EOCD.size + 0xFFFF  # the record and the longest comment
    span = min(end, window + _EOCD_LOCATOR.size + _EOCD64.size)
    stream.seek(end - span)
    tail = stream.read(span)
    at = len(tail) - _EOCD.size
    if not (at >= 0 and tail.startswith(b"PK\x05\x06", at) and tail.endswith(b"\0\0")):
        at = tail.rfind(b"PK\x05\x06", max(0, len(tail) - window))
        if at < 0 or at + _EOCD.size > len(tail):
            return None
    _, _, _, _, entries, size, _, _ = _EOCD.unpack_from(tail, at)
    locator = at - _EOCD_LOCATOR.size
    record = locator - _EOCD64.size
    if (
        record >= 0
        and tail.startswith(b"PK\x06\x07", locator)
        and tail.startswith(b"PK\x06\x06", record)
    ):
        fields = _EOCD64.unpack_from(tail, record)
        entries, size = fields[7], fields[8]
    return entries, size


def _zip_members(
    stream: BinaryIO, directory: tuple[int, int], limits: DatasetLimits, budget: _Budget
) -> Iterator[tuple[str, bytes]]:
    entries, size = directory
    if entries > limits.max_entries:
        raise limits.violation("max_entries", f"the zip declares {entries} entries")
    if size > limits.max_directory_bytes:
        raise limits.violation(
            "max_directory_bytes", f"the zip's central directory is {size} bytes"
        )
    with zipfile.ZipFile(stream) as archive:
        infos = archive.infolist()
        if len(infos) > limits.max_entries:
            raise limits.violation("max_entries", f"the zip has {len(infos)} entries")
        for info in infos:
            name = info.filename
            if info.file_size > limits.max_member_bytes:
                raise limits.violation(
                    "max_member_bytes", f"member {name!r} declares {info.file_size} bytes"
                )
            if not (_zip_regular(info) and _wanted(name)):
                continue  # never inflated, so it costs nothing
            if info.compress_type not in _ZIP_METHODS:
                raise DatasetError(
                    f"member {name!r} uses zip compression method {info.compress_type}; "
                    "only stored and deflate members are read"
                )
            budget.expect(info.file_size)
            with archive.open(info) as member:
                data = _read_member(member, name, limits, budget)
            yield name, data


def _zip_regular(info: zipfile.ZipInfo) -> bool:
    """A file; for zips made on Unix a regular one (no symlink, device or fifo). Many tools
    (zipfile's writestr too) leave the file type bits 0."""
    kind = stat.S_IFMT(info.external_attr >> 16)
    return not info.is_dir() and (info.create_system != 3 or kind in (0, stat.S_IFREG))


def _tar_members(
    raw: BinaryIO, limits: DatasetLimits, budget: _Budget
) -> Iterator[tuple[str, bytes]]:
    stream = _TarStream(raw, limits, budget)
    # Stream mode: nothing seeks and members are parsed one at a time. It is "r|" over our own
    # inflating stream rather than "r|*": tarfile would inflate by itself (and inflate a nested
    # layer too) in reads we could not count.
    with tarfile.open(fileobj=stream, mode="r|", errors="strict") as archive:  # type: ignore[call-overload]
        entries = 0
        while True:
            stream.between_members()
            member = archive.next()
            stream.in_member()
            # tarfile keeps every TarInfo to extract members by name later; stream mode never
            # does, and a name can be a megabyte long.
            archive.members.clear()
            if member is None:
                return
            entries += 1
            if entries > limits.max_entries:
                raise limits.violation(
                    "max_entries", f"the tar has more than {limits.max_entries} entries"
                )
            if member.islnk() or member.issym():
                continue
            if member.size > limits.max_member_bytes:
                raise limits.violation(
                    "max_member_bytes", f"member {member.name!r} declares {member.size} bytes"
                )
            keep = member.isreg() and _wanted(member.name)
            handle = archive.extractfile(member) if keep or member.size else None
            if handle is None:
                continue  # no data: directories, devices, fifos, empty skipped files
            budget.expect(member.size)
            data = _read_member(handle, member.name, limits, budget, keep)  # skipped: drained
            if keep:
                yield member.name, data


class _TarStream:
    """The tar bytes of a plain or gzip stream, inflated on demand for tarfile's stream mode.

    A read returns at most the bytes asked for, so nothing is inflated ahead of need. Between
    members (headers, pax records, GNU long names, sparse maps, padding: what tarfile reads by
    itself in `next()`) the bytes are counted here, towards the total and, per entry, against
    `max_header_bytes`; members' data is counted by `_read_member`. The gzip layer is zlib's
    (wbits 31), which parses the gzip header in C: gzip.GzipFile reads a file name or comment
    one byte per Python call, minutes for a header that never ends.
    """

    def __init__(self, raw: BinaryIO, limits: DatasetLimits, budget: _Budget) -> None:
        self._raw = raw
        self._limits = limits
        self._budget = budget
        self._inflater: zlib._Decompress | None = None
        self._pending = b""
        self._raw_bytes = -1  # -1: nothing read yet
        self._header_bytes: int | None = 0  # tarfile.open() reads the first header

    def between_members(self) -> None:
        self._header_bytes = 0

    def in_member(self) -> None:
        self._header_bytes = None

    def read(self, size: int | None = -1) -> bytes:
        data = self._next(_CHUNK if size is None or size < 0 else size)
        if self._header_bytes is not None:
            self._header_bytes += len(data)
            if self._header_bytes > self._limits.max_header_bytes:
                raise self._limits.violation(
                    "max_header_bytes",
                    "a tar entry's headers (pax records, long names, sparse maps) are larger "
                    "than allowed",
                )
            self._budget.spend(len(data))
        return data

    def _next(self, size: int) -> bytes:
        if self._raw_bytes < 0:
            self._raw_bytes = 0
            self._pending = self._raw_chunk()
            if self._pending.startswith(_GZIP_MAGIC):
                self._inflater = zlib.decompressobj(31)
        if self._inflater is None:
            if not self._pending:
                self._pending = self._raw_chunk()
            data, self._pending = self._pending[:size], self._pending[size:]
            return data
        while True:
            if self._inflater.eof:  # gzip members may follow one another
                self._pending = self._pending or self._raw_chunk()
                if not self._pending.startswith(_GZIP_MAGIC):
                    return b""  # the end; trailing bytes are ignored
                self._inflater = zlib.decompressobj(31)
            if not self._pending:
                self._pending = self._raw_chunk()
                if not self._pending:
                    raise EOFError("the gzip stream is truncated")
            data = self._inflater.decompress(self._pending, size)
            self._pending = (
                self._inflater.unused_data if self._inflater.eof else self._inflater.unconsumed_tail
            )
            if data or size == 0:
                return data

    def _raw_chunk(self) -> bytes:
        chunk = self._raw.read(_CHUNK)
        self._raw_bytes += len(chunk)
        if self._raw_bytes > self._limits.max_archive_bytes:
            raise self._limits.violation(
                "max_archive_bytes", "the archive stream is larger than allowed"
            )
        return chunk


# -- decoding -----------------------------------------------------------------------------------


class _File(NamedTuple):
    path: str
    image: np.ndarray | None  # None: not decodable
    note: str  # the sha256 of its bytes, or why it could not be decoded
    source: str  # the path as the file set named it


def from_files(
    files: Iterable[tuple[str, bytes]],
    preprocessing: Preprocessing | None = None,
    image_limits: ImageLimits = DEFAULT_LIMITS,
    limits: DatasetLimits = DatasetLimits(),
) -> Dataset:
    """Decode and validate a `<label>/<image>` file set into a Dataset.

    Files are decoded as `files` yields them and only the decoded arrays are kept. Raises
    DatasetError listing every undecodable file, classes that are too small, or too few
    classes: nothing is trained on a dataset with problems a person should fix first.
    """
    prep = preprocessing or Preprocessing()
    decoded = _decode_all(files, prep, image_limits, limits)
    if not decoded:
        raise DatasetError("the dataset holds no files; expected <label>/<image> files")
    paths = label_paths([item.path for item in decoded])
    items = [item._replace(path=path) for item, path in zip(decoded, paths, strict=True)]
    loose = [item.path for item in items if label_of(item.path) is None]
    if loose:
        raise DatasetError(
            "some files are not inside a label folder; expected <label>/<image>",
            loose[: limits.max_bad_files_listed],
        )
    items.sort(key=lambda item: item.path)
    bad = [f"{item.path}: {item.note}" for item in items if item.image is None]
    if bad:
        shown = bad[: limits.max_bad_files_listed]
        more = len(bad) - len(shown)
        raise DatasetError(
            f"{len(bad)} file(s) could not be decoded as images"
            + (f" ({more} not listed)" if more else ""),
            shown,
        )
    folders = [str(label_of(item.path)) for item in items]
    class_names = tuple(sorted(set(folders), key=_label_sort_key))
    index = {name: i for i, name in enumerate(class_names)}
    labels = [index[folder] for folder in folders]
    digest = hashlib.sha256()
    for folder, item in zip(folders, items, strict=True):
        digest.update(f"{folder}\0{item.note}\n".encode("utf-8", "surrogateescape"))
    check_counts(Counter(class_names[i] for i in labels), class_names, limits)
    return Dataset(
        images=np.stack([item.image for item in items]).astype(np.float32, copy=False),
        labels=np.asarray(labels, dtype=np.int64),
        class_names=class_names,
        digest="sha256:" + digest.hexdigest(),
        sources=tuple(item.source for item in items),
    )


def source_name(name: str) -> str:
    """A file set's path as `Dataset.sources` holds it."""
    return str(PurePosixPath(name))


def _decode_all(
    files: Iterable[tuple[str, bytes]],
    prep: Preprocessing,
    image_limits: ImageLimits,
    limits: DatasetLimits,
) -> list[_File]:
    """Every file that is not junk, decoded as it arrives; bounded by the dataset limits."""
    decoded: list[_File] = []
    bad = 0
    size = 0
    pixels = 0
    for name, data in files:
        if is_ignored(name):
            continue
        if len(decoded) >= limits.max_files:
            raise limits.violation(
                "max_files", f"the dataset has more than {limits.max_files} files"
            )
        if len(name) > limits.max_name_chars:
            raise limits.violation(
                "max_name_chars", f"the path {name[:60]!r}... is {len(name)} characters"
            )
        path = source_name(name)
        try:
            width, height = open_image(data, image_limits).size  # the header only
            pixels += width * height
            if pixels > limits.max_total_pixels:
                raise limits.violation(
                    "max_total_pixels", "the images hold more pixels than allowed"
                )
            image = decode_image(data, prep, image_limits)
        except ImageError as exc:
            bad += 1
            if bad > limits.max_bad_files:
                listed = [f"{f.path}: {f.note}" for f in decoded if f.image is None]
                raise DatasetError(
                    f"more than {limits.max_bad_files} files could not be decoded as images; "
                    "reading stopped there (max_bad_files)",
                    listed[: limits.max_bad_files_listed],
                ) from exc
            decoded.append(_File(path, None, _problem(data, exc), path))
            continue
        size += image.nbytes
        if size > limits.max_decoded_bytes:
            shape = "x".join(str(n) for n in image.shape)
            raise limits.violation(
                "max_decoded_bytes",
                f"the decoded images ({len(decoded) + 1 - bad} of {shape} float32 so far) "
                "are larger than allowed",
            )
        decoded.append(_File(path, image, hashlib.sha256(data).hexdigest(), path))
    return decoded


def label_paths(paths: Sequence[str]) -> list[str]:
    """`paths` as training reads them: without the folders that all of them share above their
    label folders (`digits/3/a.png` -> `3/a.png`). `label_of` tells each one's label."""
    depth = _wrapper_depth(paths) if paths else 0
    return [_strip(path, depth) for path in paths]


def label_of(path: str) -> str | None:
    """The label of a path `label_paths` gave: the folder the file is in (None: in none)."""
    parts = PurePosixPath(path).parts
    return parts[-2] if len(parts) >= 2 else None


def _wrapper_depth(paths: Sequence[str]) -> int:
    """How many leading folders all paths share and can lose keeping `<label>/<image>`
    (`digits/3/a.png` -> 1), found in one pass over the paths."""
    first = PurePosixPath(paths[0]).parts
    depth = len(first) - 2
    for path in paths:
        parts = PurePosixPath(path).parts
        depth = min(depth, len(parts) - 2)
        while depth > 0 and parts[:depth] != first[:depth]:
            depth -= 1
    return max(depth, 0)


def _strip(path: str, depth: int) -> str:
    return str(PurePosixPath(*PurePosixPath(path).parts[depth:])) if depth else path


def _problem(data: bytes, error: ImageError) -> str:
    if data.startswith(_NESTED_MAGIC) or data[257:262] == b"ustar":
        return "an archive inside the dataset (nested archives are not unpacked)"
    return str(error)


def load_directory(
    root: Path,
    preprocessing: Preprocessing | None = None,
    *,
    image_limits: ImageLimits = DEFAULT_LIMITS,
    limits: DatasetLimits = DatasetLimits(),
) -> Dataset:
    """Load a `<label>/<image>` folder."""
    root = Path(root)
    if not root.is_dir():
        raise DatasetError(f"{root} is not a directory")
    return from_files(iter_directory(root, limits), preprocessing, image_limits, limits)


def load_archive(
    source: ArchiveSource,
    preprocessing: Preprocessing | None = None,
    *,
    image_limits: ImageLimits = DEFAULT_LIMITS,
    limits: DatasetLimits = DatasetLimits(),
) -> Dataset:
    """Load a .zip or .tar(.gz) archive of `<label>/<image>` files, from a path, a binary file
    object or bytes, as a stream."""
    return from_files(iter_archive(source, limits=limits), preprocessing, image_limits, limits)


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
    decoded = pixels.shape[0] * int(np.prod(prep.input_shape)) * 4
    if decoded > limits.max_decoded_bytes:
        shape = "x".join(str(n) for n in prep.input_shape)
        raise limits.violation(
            "max_decoded_bytes", f"{pixels.shape[0]} images of {shape} float32 are {decoded} bytes"
        )
    pixels = _conform(pixels, prep)
    check_counts(Counter(class_names[i] for i in label_ids), class_names, limits)
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


def check_counts(counts: Counter, class_names: tuple[str, ...], limits: DatasetLimits) -> None:
    """DatasetError unless there are `limits.min_classes` classes of `limits.min_per_class`
    images each (`counts`: images per class name)."""
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


def split_three(
    dataset: Dataset, validation_fraction: float = 0.2, test_fraction: float = 0.15, seed: int = 42
) -> Splits:
    """Stratified, seeded split into training, validation and test sets (fractions of the
    whole); every class keeps at least one image in each."""
    if not 0.0 < test_fraction < 1.0 or not 0.0 < validation_fraction + test_fraction < 1.0:
        raise DatasetError("validation and test fractions must be positive and sum under 1")
    small = [name for name, count in dataset.class_counts.items() if count < 3]
    if small:
        raise DatasetError(
            f"class {small[0]!r} needs at least 3 images to split into training, validation "
            "and test sets"
        )
    rest, test = split(dataset, test_fraction, seed)
    train, validation = split(rest, validation_fraction / (1.0 - test_fraction), seed + 1)
    return Splits(train, validation, test)


def _label_sort_key(label: str) -> tuple[int, int | str]:
    """Numeric labels in numeric order ("2" before "10"), then the rest alphabetically."""
    return (0, int(label)) if label.isdigit() else (1, label)
