"""Property-based tests of the archive readers and dataset loaders: whatever the bytes, the only
error is a LeptonModelError and nothing beyond the limits is ever yielded."""

from __future__ import annotations

import io
import tarfile
import zipfile
from collections.abc import Callable
from dataclasses import replace
from pathlib import PurePosixPath

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from PIL import Image

from lepton_model import datasets
from lepton_model.datasets import DatasetLimits
from lepton_model.errors import LeptonModelError

pytestmark = pytest.mark.filterwarnings("ignore:Duplicate name:UserWarning")

LIMITS = DatasetLimits(
    max_entries=12,
    max_member_bytes=4096,
    max_total_bytes=16_384,
    max_header_bytes=2048,
    max_files=10,
    max_decoded_bytes=64 * 1024,
    max_bad_files=4,
)
CHECKED = settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.too_slow])

names = st.lists(
    st.sampled_from(["0", "1", "digits", "..", "__MACOSX", ".git", "é", "a" * 120]),
    min_size=1,
    max_size=4,
).map("/".join)
contents = st.binary(max_size=6000)
members = st.lists(st.tuples(names, contents), min_size=1, max_size=16)


def pack(kind: str, files: list[tuple[str, bytes]]) -> bytes:
    buffer = io.BytesIO()
    if kind == "zip":
        with zipfile.ZipFile(buffer, "w", zipfile.ZIP_DEFLATED) as archive:
            for name, data in files:
                archive.writestr(name, data)
        return buffer.getvalue()
    mode, form = {"tar": ("w", tarfile.GNU_FORMAT), "tar.gz": ("w:gz", tarfile.PAX_FORMAT)}[kind]
    with tarfile.open(fileobj=buffer, mode=mode, format=form) as archive:
        for name, data in files:
            info = tarfile.TarInfo(name)
            info.size = len(data)
            archive.addfile(info, io.BytesIO(data))
    return buffer.getvalue()


@st.composite
def mutated(draw: Callable, kind: str) -> bytes:
    """A valid archive, then a few byte flips, cuts and insertions."""
    data = bytearray(pack(kind, draw(members)))
    for _ in range(draw(st.integers(0, 6))):
        if not data:
            break
        at = draw(st.integers(0, len(data) - 1))
        action = draw(st.sampled_from(["flip", "cut", "insert", "max"]))
        if action == "flip":
            data[at] = draw(st.integers(0, 255))
        elif action == "cut":
            del data[at:]
        elif action == "insert":
            data[at:at] = draw(st.binary(min_size=1, max_size=16))
        else:  # the largest value in a size or count field
            data[at : at + 4] = b"\xff\xff\xff\xff"
    return bytes(data)


def assert_within_limits(source: bytes) -> None:
    """Reading `source` yields nothing the limits refuse, or raises a LeptonModelError."""
    entries = total = 0
    try:
        for name, data in datasets.iter_archive(source, limits=LIMITS):
            entries += 1
            total += len(data)
            path = PurePosixPath(name)
            assert len(data) <= LIMITS.max_member_bytes
            assert not path.is_absolute() and ".." not in path.parts
            assert not datasets.is_ignored(path)
    except LeptonModelError:
        pass
    assert entries <= LIMITS.max_entries
    assert total <= LIMITS.max_total_bytes


@CHECKED
@given(st.binary(max_size=4096))
def test_arbitrary_bytes_give_a_dataset_error_or_members_within_limits(data: bytes) -> None:
    assert_within_limits(data)


@CHECKED
@given(st.sampled_from([b"PK\x03\x04", b"\x1f\x8b\x08", b""]), st.binary(max_size=2048))
def test_arbitrary_bytes_behind_an_archive_signature_are_handled(head: bytes, rest: bytes) -> None:
    assert_within_limits(head + rest)


@pytest.mark.parametrize("kind", ["zip", "tar", "tar.gz"])
@CHECKED
@given(data=st.data())
def test_mutated_archives_give_a_dataset_error_or_members_within_limits(
    kind: str, data: st.DataObject
) -> None:
    assert_within_limits(data.draw(mutated(kind)))


@pytest.mark.parametrize("kind", ["zip", "tar.gz"])
@CHECKED
@given(data=st.data())
def test_loading_a_mutated_archive_raises_only_lepton_model_errors(
    kind: str, data: st.DataObject
) -> None:
    source = data.draw(mutated(kind))
    try:
        loaded = datasets.load_archive(source, limits=LIMITS)
    except LeptonModelError:
        return
    assert len(loaded) <= LIMITS.max_files
    assert loaded.images.nbytes <= LIMITS.max_decoded_bytes


def _png(shade: int) -> bytes:
    buffer = io.BytesIO()
    Image.new("L", (9, 7), shade).save(buffer, "PNG")
    return buffer.getvalue()


images = st.one_of(st.binary(max_size=200), st.sampled_from([_png(0), _png(200)]))


@CHECKED
@given(st.lists(st.tuples(names, images), max_size=24))
def test_from_files_raises_only_lepton_model_errors(files: list[tuple[str, bytes]]) -> None:
    try:
        loaded = datasets.from_files(files, limits=replace(LIMITS, min_per_class=1))
    except LeptonModelError:
        return
    assert len(loaded.class_names) >= 2 and len(loaded) <= LIMITS.max_files
    assert loaded.images.shape[1:] == (28, 28, 1)
