"""Hostile archives built on the fly, cheaply: deflate streams of zeros, raw zip records, tars.

A 3 GiB member of zeros costs about 3 MB and a few milliseconds to build: one 1 MiB block of
zeros is compressed once after a full flush (which makes its encoding independent of what came
before) and the same bytes are repeated. Checksums of such huge members are left 0: a reader
that keeps its limits stops long before it could check them.
"""

from __future__ import annotations

import io
import struct
import tarfile
import zlib
from collections.abc import Sequence
from dataclasses import dataclass

BLOCK = 1 << 20
GiB = 1 << 30
MiB = 1 << 20

_LOCAL = struct.Struct("<4s5H3L2H")
_CENTRAL = struct.Struct("<4s6H3L5H2L")
_END = struct.Struct("<4s4H2LH")
_END64 = struct.Struct("<4sQ2H2L4Q")
_LOCATOR = struct.Struct("<4sLQL")


def deflated_zeros(size: int, prefix: bytes = b"") -> bytes:
    """A raw deflate stream of `prefix` followed by `size` zero bytes."""
    packer = zlib.compressobj(9, zlib.DEFLATED, -15)
    head = packer.compress(prefix) + packer.flush(zlib.Z_FULL_FLUSH)
    count, rest = divmod(size, BLOCK)
    if count == 0:
        return head + packer.compress(bytes(rest)) + packer.flush()
    block = packer.compress(bytes(BLOCK)) + packer.flush(zlib.Z_FULL_FLUSH)
    again = packer.compress(bytes(BLOCK)) + packer.flush(zlib.Z_FULL_FLUSH)
    assert block == again, "zlib's encoding of a block after a full flush should not vary"
    return head + block * count + packer.compress(bytes(rest)) + packer.flush()


def gzip_of(deflate: bytes, crc: int = 0, size: int = 0) -> bytes:
    """A gzip member around a raw deflate stream."""
    header = b"\x1f\x8b\x08\x00\x00\x00\x00\x00\x02\x03"
    return header + deflate + struct.pack("<2L", crc & 0xFFFFFFFF, size & 0xFFFFFFFF)


def gzip_bytes(data: bytes) -> bytes:
    """A correct gzip member (CRC and size) of small `data`."""
    packer = zlib.compressobj(9, zlib.DEFLATED, -15)
    return gzip_of(packer.compress(data) + packer.flush(), zlib.crc32(data), len(data))


# -- zip ------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class RawMember:
    """One zip member written as given: `data` is stored as is (deflate when method is 8)."""

    name: str
    data: bytes
    size: int  # the uncompressed size both headers declare
    method: int = zlib.DEFLATED
    crc: int = 0
    mode: int | None = None  # a unix st_mode for the external attributes (symlinks, devices)


def deflated(name: str, data: bytes, **overrides) -> RawMember:
    """A correct deflated member of small `data` (overrides can then lie about it)."""
    packer = zlib.compressobj(9, zlib.DEFLATED, -15)
    fields = {"size": len(data), "crc": zlib.crc32(data)} | overrides
    return RawMember(name, packer.compress(data) + packer.flush(), **fields)


def raw_zip(
    members: Sequence[RawMember],
    *,
    entries: int | None = None,
    zip64_entries: int | None = None,
    directory_size: int | None = None,
) -> bytes:
    """A zip written record by record; the end record can declare any entry count and size."""
    out = io.BytesIO()
    central = io.BytesIO()
    for member in members:
        offset = out.tell()
        name = member.name.encode()
        out.write(
            _LOCAL.pack(
                b"PK\x03\x04",
                20,
                0,
                member.method,
                0,
                0x21,
                member.crc,
                len(member.data),
                member.size,
                len(name),
                0,
            )
        )
        out.write(name + member.data)
        made_by = (3 << 8 | 20) if member.mode is not None else 20
        central.write(
            _CENTRAL.pack(
                b"PK\x01\x02",
                made_by,
                20,
                0,
                member.method,
                0,
                0x21,
                member.crc,
                len(member.data),
                member.size,
                len(name),
                0,
                0,
                0,
                0,
                (member.mode or 0) << 16,
                offset,
            )
        )
        central.write(name)
    start = out.tell()
    out.write(central.getvalue())
    size = len(central.getvalue()) if directory_size is None else directory_size
    count = len(members) if entries is None else entries
    if zip64_entries is not None:
        end64 = out.tell()
        out.write(
            _END64.pack(b"PK\x06\x06", 44, 45, 45, 0, 0, zip64_entries, zip64_entries, size, start)
        )
        out.write(_LOCATOR.pack(b"PK\x06\x07", 0, end64, 1))
        out.write(_END.pack(b"PK\x05\x06", 0, 0, 0xFFFF, 0xFFFF, 0xFFFFFFFF, 0xFFFFFFFF, 0))
    else:
        out.write(_END.pack(b"PK\x05\x06", 0, 0, count, count, size, start, 0))
    return out.getvalue()


def zeros_member(name: str, size: int, *, declared: int | None = None) -> RawMember:
    """A deflated member of `size` zeros whose headers declare `declared` bytes; its CRC is
    right (when cheap to compute: up to 64 MiB) only for the declared size."""
    declared = size if declared is None else declared
    crc = zlib.crc32(bytes(declared)) if declared <= 64 * MiB else 0
    return RawMember(name, deflated_zeros(size), declared, crc=crc)


def zip_of_zeros(name: str, size: int, *, declared: int | None = None) -> bytes:
    """A zip of one `zeros_member`."""
    return raw_zip([zeros_member(name, size, declared=declared)])


# -- tar ------------------------------------------------------------------------------------------


def tar_header(name: str, size: int = 0, kind: bytes = tarfile.REGTYPE, **fields) -> bytes:
    """One ustar header block (GNU format, so sizes beyond 8 GiB still fit)."""
    info = tarfile.TarInfo(name)
    info.size = size
    info.type = kind
    for key, value in fields.items():
        setattr(info, key, value)
    return info.tobuf(format=tarfile.GNU_FORMAT)


def tar_entry(name: str, data: bytes) -> bytes:
    """A regular member: header, data, padding to the next 512-byte block."""
    return tar_header(name, len(data)) + data + bytes(-len(data) % 512)


def targz_of_zeros(
    name: str, size: int, prefix: bytes = b"", kind: bytes = tarfile.REGTYPE
) -> bytes:
    """A .tar.gz of `prefix` (whole tar entries) then one entry of type `kind` with `size`
    zeros of data (a multiple of 512), the end-of-archive blocks included."""
    return gzip_of(deflated_zeros(size + 1024, prefix + tar_header(name, size, kind)))


def tar_of_entries(entry: bytes, count: int) -> bytes:
    """The same tar entry `count` times, gzip-compressed as a repeated block."""
    assert BLOCK % len(entry) == 0, "the entry must divide 1 MiB"
    per_block = BLOCK // len(entry)
    blocks, rest = divmod(count, per_block)
    packer = zlib.compressobj(9, zlib.DEFLATED, -15)
    chunk = entry * per_block
    first = packer.compress(chunk) + packer.flush(zlib.Z_FULL_FLUSH)
    again = packer.compress(chunk) + packer.flush(zlib.Z_FULL_FLUSH)
    assert first == again
    tail = packer.compress(entry * rest + bytes(1024)) + packer.flush()
    return gzip_of(first * blocks + tail)


def zip_directory_bomb(entries: int, declared: int = 1) -> bytes:
    """A zip whose central directory repeats one minimal 47-byte record `entries` times while
    its end record declares `declared`: zipfile builds a ZipInfo for each record."""
    local = _LOCAL.pack(b"PK\x03\x04", 20, 0, 0, 0, 0x21, 0, 0, 0, 1, 0) + b"a"
    record = _CENTRAL.pack(b"PK\x01\x02", 20, 20, 0, 0, 0, 0x21, 0, 0, 0, 1, 0, 0, 0, 0, 0, 0)
    directory = (record + b"a") * entries
    end = _END.pack(b"PK\x05\x06", 0, 0, declared, declared, len(directory), len(local), 0)
    return local + directory + end
