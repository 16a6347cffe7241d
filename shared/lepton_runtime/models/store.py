"""The models bucket: the one module that spells its layout.

    <models location>/<model>/<version>/model.keras, model.tflite, metadata.json, plots
    <models location>/<model>/latest.json        the pointer that makes a version live
    <models location>/_runs/<model>/<run>.json   training run records (claims, leases, results)
    <models location>/_status/<model>/<source>.json  the last training of a dataset source, as
                                                 it goes (stage, epoch, reply): what a person
                                                 or the CLI follows

A listing of `<model>/` holds only versions (and the pointer object); run records and
statuses live under `_runs/` and `_status/`, names no model can have (model names start with
a letter or digit). A version's files are uploaded before its metadata.json, which records
each file's size and sha256, and the pointer is written last, conditionally, and only forward
(a version trained earlier never replaces one trained later). Run records are created with
If-None-Match and renewed, finished or released with If-Match on their ETag, so exactly one
replica owns a training at a time.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import re
import shutil
import tempfile
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from lepton_model.artifacts import METADATA_FILE, TFLITE_FILE, ModelMetadata, runtime_file
from lepton_model.errors import ArtifactError
from lepton_runtime.errors import (
    DiskUnavailableError,
    ObjectNotFoundError,
    StorageUnavailableError,
)
from lepton_runtime.settings import Location
from lepton_runtime.storage import Storage, guess_type

POINTER_FILE = "latest.json"
RUNS_FOLDER = "_runs"
STATUS_FOLDER = "_status"
MAX_POINTER_BYTES = 64 * 1024
MAX_METADATA_BYTES = 4 * 1024 * 1024
MAX_RUN_RECORD_BYTES = 1024 * 1024
MAX_ARTIFACT_BYTES = 512 * 1024 * 1024
_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]{0,127}$")
_POINTER_ATTEMPTS = 8


def valid_name(name: str) -> bool:
    """A model or version name: letters, digits, '.', '_', '-', starting with a letter/digit."""
    return bool(_NAME.match(name))


@dataclass(frozen=True)
class Pointer:
    """What `<model>/latest.json` says, and its ETag (for a conditional replace)."""

    version: str
    body: dict[str, Any]
    etag: str | None

    @property
    def trained_at(self) -> float | None:
        value = self.body.get("trained_at")
        return float(value) if isinstance(value, int | float) else None


@dataclass(frozen=True)
class PointerMove:
    """The outcome of `advance_pointer`: whether it moved, and what is live afterwards."""

    moved: bool
    live: str


@dataclass(frozen=True)
class RunRecord:
    """A training run's record as stored, with its ETag."""

    body: dict[str, Any]
    etag: str | None

    @property
    def status(self) -> str:
        return str(self.body.get("status", ""))

    def expired(self, now: float | None = None) -> bool:
        """A running record whose owner stopped renewing it (crashed, evicted, OOM-killed)."""
        heartbeat = float(self.body.get("heartbeat", 0) or 0)
        lease = float(self.body.get("lease_seconds", 0) or 0)
        return (now if now is not None else time.time()) > heartbeat + lease


@dataclass
class Claim:
    """Ownership of a training run: held while renewed before its lease runs out."""

    name: str
    run_id: str
    owner: str
    etag: str
    body: dict[str, Any] = field(default_factory=dict)


class LeaseLostError(StorageUnavailableError):
    """Another replica took over this run (our lease ran out): do not publish; a redelivery
    will find the run in the other replica's hands."""

    code = "lease_lost"


class ModelStore:
    """Versions, artifacts, metadata, pointer and run records in the models location."""

    def __init__(self, storage: Storage, location: Location) -> None:
        self.storage = storage
        self.location = location

    @property
    def bucket(self) -> str:
        return self.location.bucket

    # --- keys (the layout) ----------------------------------------------------------------

    def model_prefix(self, name: str) -> str:
        return self.location.key(f"{name}/")

    def version_prefix(self, name: str, version: str) -> str:
        return self.location.key(f"{name}/{version}/")

    def artifact_key(self, name: str, version: str, filename: str) -> str:
        return self.location.key(f"{name}/{version}/{filename}")

    def pointer_key(self, name: str) -> str:
        return self.location.key(f"{name}/{POINTER_FILE}")

    def run_key(self, name: str, run_id: str) -> str:
        return self.location.key(f"{RUNS_FOLDER}/{name}/{run_id}.json")

    def status_key(self, name: str, source: str) -> str:
        digest = hashlib.sha256(source.encode()).hexdigest()[:32]
        return self.location.key(f"{STATUS_FOLDER}/{name}/{digest}.json")

    def uri(self, key: str) -> str:
        return f"s3://{self.bucket}/{key}"

    # --- reading ----------------------------------------------------------------------------

    def pointer(self, name: str) -> Pointer | None:
        """The live version of `name`, or None when nothing was published yet."""
        found = self.storage.read_json(self.bucket, self.pointer_key(name), MAX_POINTER_BYTES)
        if found is None:
            return None
        body, etag = found
        version = str(body.get("version", "")) if isinstance(body, dict) else ""
        if not valid_name(version):
            raise ArtifactError(f"{self.uri(self.pointer_key(name))} names no valid version")
        return Pointer(version, body, etag)

    def metadata(self, name: str, version: str) -> dict[str, Any]:
        """A version's metadata.json (ObjectNotFoundError while it is not published whole)."""
        data = self.storage.get_json(
            self.bucket, self.artifact_key(name, version, METADATA_FILE), MAX_METADATA_BYTES
        )
        if not isinstance(data, dict):
            raise ArtifactError(f"{name}/{version}/{METADATA_FILE} is not a JSON object")
        return data

    def models(self) -> list[str]:
        """Every model with a folder in the location (published or not), by name."""
        prefixes = self.storage.list_prefixes(self.bucket, self.location.prefix)
        names = (p[len(self.location.prefix) :].rstrip("/") for p in prefixes)
        return sorted(n for n in names if valid_name(n))

    def versions(self, name: str) -> list[str]:
        """Every version folder of `name`, oldest name first."""
        prefix = self.model_prefix(name)
        found = (
            p[len(prefix) :].rstrip("/") for p in self.storage.list_prefixes(self.bucket, prefix)
        )
        return sorted(v for v in found if valid_name(v))

    def download(
        self, name: str, version: str, filename: str, expected: dict[str, Any] | None, into: Path
    ) -> Path:
        """Fetch one artifact file to `into` (atomically, verified against `expected` size and
        sha256 when metadata recorded them); nothing is left behind if anything fails."""
        obj = self.storage.get_bytes(
            self.bucket, self.artifact_key(name, version, filename), MAX_ARTIFACT_BYTES
        )
        verify(obj.data, expected, f"{name}/{version}/{filename}")
        write_atomically(into, obj.data)
        return into

    # --- publishing -------------------------------------------------------------------------

    def upload_version(self, name: str, version: str, directory: Path) -> list[str]:
        """Upload an exported artifact folder, metadata.json last; returns the keys written."""
        paths = sorted(p for p in Path(directory).iterdir() if p.is_file())
        ordered = [p for p in paths if p.name != METADATA_FILE] + [
            p for p in paths if p.name == METADATA_FILE
        ]
        keys = []
        for path in ordered:
            key = self.artifact_key(name, version, path.name)
            self.storage.put_file(self.bucket, key, path, guess_type(path.name))
            keys.append(key)
        return keys

    def advance_pointer(self, name: str, version: str, body: dict[str, Any]) -> PointerMove:
        """Make `version` live unless the live one was trained later.

        `body["trained_at"]` (seconds since the epoch, when its training started) orders
        versions. The write is conditional on the pointer read (If-Match its ETag, or
        If-None-Match for the first version), so two trainings finishing at once cannot both
        move it, and the one that started later wins whichever finishes last.
        """
        trained_at = float(body["trained_at"])
        for _ in range(_POINTER_ATTEMPTS):
            current = self.pointer(name)
            if current is not None and current.version == version:
                return PointerMove(moved=False, live=version)
            if current is not None and (current.trained_at or 0.0) > trained_at:
                return PointerMove(moved=False, live=current.version)
            payload = {**body, "version": version}
            if current is None:
                etag = self.storage.put_json(
                    self.bucket, self.pointer_key(name), payload, if_absent=True
                )
            else:
                etag = self.storage.put_json(
                    self.bucket, self.pointer_key(name), payload, if_match=current.etag
                )
            if etag is not None:
                return PointerMove(moved=True, live=version)
        raise StorageUnavailableError(f"{self.uri(self.pointer_key(name))} kept changing")

    # --- training runs ----------------------------------------------------------------------

    def run_record(self, name: str, run_id: str) -> RunRecord | None:
        found = self.storage.read_json(
            self.bucket, self.run_key(name, run_id), MAX_RUN_RECORD_BYTES
        )
        if found is None:
            return None
        body, etag = found
        return RunRecord(body if isinstance(body, dict) else {}, etag)

    # --- training status (for people and the CLI; last writer wins) --------------------------

    def write_status(self, name: str, source: str, body: dict[str, Any]) -> None:
        """Record how the training of `source` (a dataset's s3:// URI) into `name` is going."""
        self.storage.put_json(self.bucket, self.status_key(name, source), body)

    def read_status(self, name: str, source: str) -> dict[str, Any] | None:
        found = self.storage.read_json(
            self.bucket, self.status_key(name, source), MAX_RUN_RECORD_BYTES
        )
        return found[0] if found and isinstance(found[0], dict) else None

    def runs(self, name: str) -> dict[str, RunRecord]:
        """Every run record of `name` (running, done), by run id."""
        prefix = self.run_key(name, "").removesuffix(".json")
        found: dict[str, RunRecord] = {}
        for info in self.storage.list_objects(self.bucket, prefix):
            run_id = info.key[len(prefix) :].removesuffix(".json")
            record = self.run_record(name, run_id)
            if record is not None:
                found[run_id] = record
        return found

    def claim_run(
        self, name: str, run_id: str, owner: str, lease_seconds: float, details: dict[str, Any]
    ) -> Claim | RunRecord:
        """Take the run: create its record (If-None-Match), or take over an expired one
        (If-Match its ETag). Returns the Claim, or the record someone else holds or finished."""
        body = {
            **details,
            "status": "running",
            "owner": owner,
            "heartbeat": time.time(),
            "lease_seconds": lease_seconds,
        }
        key = self.run_key(name, run_id)
        record = None
        for _ in range(3):  # a record released between our create and our read: create again
            etag = self.storage.put_json(self.bucket, key, body, if_absent=True)
            if etag is not None:
                return Claim(name, run_id, owner, etag, body)
            record = self.run_record(name, run_id)
            if record is not None:
                break
        if record is None:
            raise StorageUnavailableError(f"{self.uri(key)} kept appearing and disappearing")
        if record.status == "running" and record.expired():
            body["took_over_from"] = record.body.get("owner")
            etag = self.storage.put_json(self.bucket, key, body, if_match=record.etag)
            if etag is not None:
                return Claim(name, run_id, owner, etag, body)
            return self.run_record(name, run_id) or record
        return record

    def renew(self, claim: Claim) -> None:
        """Extend the lease (If-Match our last write); LeaseLostError if someone took over."""
        body = {**claim.body, "heartbeat": time.time()}
        etag = self.storage.put_json(
            self.bucket, self.run_key(claim.name, claim.run_id), body, if_match=claim.etag
        )
        if etag is None:
            raise LeaseLostError(f"run {claim.run_id} of {claim.name} was taken over")
        claim.etag, claim.body = etag, body

    def finish_run(self, claim: Claim, result: dict[str, Any]) -> None:
        """Record the run as done with its result (If-Match: only the owner finishes it)."""
        body = {**claim.body, "status": "done", "finished": time.time(), "reply": result}
        etag = self.storage.put_json(
            self.bucket, self.run_key(claim.name, claim.run_id), body, if_match=claim.etag
        )
        if etag is None:
            raise LeaseLostError(f"run {claim.run_id} of {claim.name} was taken over")
        claim.etag, claim.body = etag, body

    def release_run(self, claim: Claim) -> None:
        """Give the run up (it failed): the next delivery may try again at once."""
        with contextlib.suppress(ObjectNotFoundError):
            self.storage.delete(
                self.bucket, self.run_key(claim.name, claim.run_id), if_match=claim.etag
            )


def write_atomically(path: Path, data: bytes) -> None:
    """Write `path` whole or not at all (a temporary file beside it, then a rename).

    A disk that cannot take the file (full, read-only, the folder gone) is DiskUnavailableError:
    transient, so the request that needed the file is answered 503 and delivered again, not
    failed for good as a bug would be.
    """
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        handle, temporary = tempfile.mkstemp(prefix=f".{path.name}-", dir=path.parent)
    except OSError as exc:
        raise DiskUnavailableError(f"cannot write {path}: {exc}") from exc
    try:
        with os.fdopen(handle, "wb") as stream:
            stream.write(data)
        os.replace(temporary, path)
    except BaseException as exc:
        Path(temporary).unlink(missing_ok=True)
        if isinstance(exc, OSError):
            raise DiskUnavailableError(f"cannot write {path}: {exc}") from exc
        raise


def verify(data: bytes, expected: dict[str, Any] | None, what: str) -> None:
    """ArtifactError unless `data` has the size and sha256 metadata recorded (if it did)."""
    if not expected:
        return
    if len(data) != int(expected["size"]):
        raise ArtifactError(f"{what} is {len(data)} bytes; metadata.json says {expected['size']}")
    digest = hashlib.sha256(data).hexdigest()
    if digest != expected["sha256"]:
        raise ArtifactError(f"{what} does not match the sha256 metadata.json recorded")


class ModelCache:
    """Verified artifact files on local disk: `<root>/<model>/<version>/<file>`.

    Every file is written whole (temporary name, then rename) and only after its size and
    sha256 matched metadata.json, so a folder holds only files that are what they say, whatever
    runtime fetched them; a failed or partial download leaves nothing behind. Runtimes and
    processes share it safely.
    """

    def __init__(self, root: Path) -> None:
        self.root = Path(root)

    def folder(self, name: str, version: str) -> Path:
        return self.root / name / version

    def has(self, name: str, version: str, filename: str, expected: dict[str, Any] | None) -> bool:
        """True when the file is cached and still what metadata.json recorded."""
        path = self.folder(name, version) / filename
        if not path.is_file():
            return False
        try:
            verify(path.read_bytes(), expected, f"{name}/{version}/{filename}")
        except ArtifactError:
            path.unlink(missing_ok=True)  # corrupt on disk: fetch it again
            return False
        return True

    def fetch(self, store: ModelStore, metadata: ModelMetadata, filename: str) -> Path:
        """The cached, verified file of a version, downloaded first unless it is there."""
        expected = metadata.artifacts.get(filename)
        name, version = metadata.name, metadata.version
        target = self.folder(name, version) / filename
        if not self.has(name, version, filename, expected):
            store.download(name, version, filename, expected, target)
        return target

    def fetch_for_runtime(
        self, store: ModelStore, metadata: ModelMetadata, wanted: str
    ) -> tuple[str, str]:
        """Fetch what runtime `wanted` needs of a version; returns (runtime, file).

        When model.tflite is published but gone from the store, `auto` makes do with the Keras
        file if this image can run it; a transient fault is raised instead (and retried).
        """
        published = set(metadata.artifacts) or set(metadata.files)
        runtime, filename = runtime_file(wanted, metadata, published)
        try:
            self.fetch(store, metadata, filename)
        except ObjectNotFoundError:
            if runtime != "litert" or wanted != "auto":
                raise
            runtime, filename = runtime_file(wanted, metadata, published - {TFLITE_FILE})
            self.fetch(store, metadata, filename)
        return runtime, filename

    def fetch_version(
        self, store: ModelStore, name: str, version: str, raw: dict[str, Any], wanted: str
    ) -> str:
        """Bring `version` of `name` whole into the cache from its metadata.json (`raw`): the
        metadata checked, what runtime `wanted` needs fetched and verified, metadata.json
        written beside it; returns the runtime to load it with."""
        metadata = ModelMetadata.from_dict(raw)
        if metadata.version != version:
            raise ArtifactError(
                f"{name}/{version}/metadata.json names version {metadata.version!r}: the "
                "version was published incompletely or by hand"
            )
        runtime, _ = self.fetch_for_runtime(store, metadata, wanted)
        self.put_metadata(name, version, raw)
        return runtime

    def put_metadata(self, name: str, version: str, raw: dict[str, Any]) -> Path:
        """Write a version's metadata.json (as read from the store) beside its files."""
        path = self.folder(name, version) / METADATA_FILE
        write_atomically(path, json.dumps(raw).encode())
        return path

    def evict(self, name: str, keep: set[str], spare: int) -> list[str]:
        """Delete cached versions of `name` but those in `keep` and the `spare` most recently
        used others; returns the versions deleted."""
        folder = self.root / name
        if not folder.is_dir():
            return []
        cached = [p for p in folder.iterdir() if p.is_dir() and not p.name.startswith(".")]
        others = sorted(
            (p for p in cached if p.name not in keep), key=lambda p: p.stat().st_mtime, reverse=True
        )
        removed = []
        for path in others[spare:]:
            shutil.rmtree(path, ignore_errors=True)
            removed.append(path.name)
        return removed

    def entries(self) -> Iterator[Path]:
        yield from (p for p in self.root.glob("*/*") if p.is_dir())
