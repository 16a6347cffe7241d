"""The local stack's buckets kept on disk, so models, results and datasets outlive the stack.

moto keeps objects in memory only. While the stack runs, its buckets are mirrored to
`.lepton/buckets/<bucket>/` (every few seconds, and once more when it stops); a new stack
restores them before any notification is configured, so nothing restored starts new work.
Objects are stored under their own keys as plain files (a person can open a model's plots at
`.lepton/buckets/lepton-models/<model>/<version>/training_history.png`); a key that is not a safe
relative path is stored under `_keys/<sha256>`. `index.json` in each bucket's folder maps every
key to its file, ETag, content type and user metadata.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import shutil
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import Any

log = logging.getLogger("lepton.stack.persistence")

INDEX = "index.json"
_ENCODED = "_keys"


@dataclass(frozen=True)
class SyncReport:
    written: int
    removed: int
    kept: int


def key_path(key: str) -> str:
    """The relative file path an object is kept at: its key when that is a safe path."""
    parts = key.split("/")
    safe = (
        "\0" not in key
        and all(part not in ("", ".", "..") and len(part.encode()) <= 200 for part in parts)
        and parts[0] not in (INDEX, _ENCODED)
        and len(key.encode()) <= 1024
    )
    return key if safe else f"{_ENCODED}/{hashlib.sha256(key.encode()).hexdigest()}"


class BucketMirror:
    """Mirrors buckets of an S3 endpoint to folders, and restores them."""

    def __init__(self, s3: Any, root: Path, buckets: list[str]) -> None:
        self.s3 = s3
        self.root = Path(root)
        self.buckets = list(buckets)

    def _index(self, bucket: str) -> dict[str, dict[str, Any]]:
        try:
            data = json.loads((self.root / bucket / INDEX).read_text())
        except (FileNotFoundError, ValueError):
            return {}
        return data if isinstance(data, dict) else {}

    def _write_index(self, bucket: str, index: dict[str, dict[str, Any]]) -> None:
        folder = self.root / bucket
        folder.mkdir(parents=True, exist_ok=True)
        with tempfile.NamedTemporaryFile("w", dir=folder, delete=False, suffix=".tmp") as out:
            json.dump(index, out, sort_keys=True)
        os.replace(out.name, folder / INDEX)

    def save(self) -> SyncReport:
        """Bring the folders up to the buckets: new or changed objects written (by ETag),
        deleted ones removed. Each file is written whole before the index names it."""
        written = removed = kept = 0
        for bucket in self.buckets:
            index = self._index(bucket)
            seen: set[str] = set()
            paginator = self.s3.get_paginator("list_objects_v2")
            for page in paginator.paginate(Bucket=bucket):
                for item in page.get("Contents", []):
                    key, etag = item["Key"], item["ETag"].strip('"')
                    seen.add(key)
                    if index.get(key, {}).get("etag") == etag:
                        kept += 1
                        continue
                    index[key] = self._download(bucket, key)
                    written += 1
            for key in set(index) - seen:
                path = self.root / bucket / index.pop(key)["file"]
                path.unlink(missing_ok=True)
                removed += 1
            self._write_index(bucket, index)
        return SyncReport(written, removed, kept)

    def _download(self, bucket: str, key: str) -> dict[str, Any]:
        response = self.s3.get_object(Bucket=bucket, Key=key)
        relative = key_path(key)
        target = self.root / bucket / relative
        target.parent.mkdir(parents=True, exist_ok=True)
        with tempfile.NamedTemporaryFile(dir=target.parent, delete=False, suffix=".tmp") as out:
            shutil.copyfileobj(response["Body"], out)
        os.replace(out.name, target)
        return {
            "file": relative,
            "etag": response["ETag"].strip('"'),
            "content_type": response.get("ContentType") or "binary/octet-stream",
            "metadata": response.get("Metadata") or {},
        }

    def restore(self) -> int:
        """Put every kept object back into its (existing) bucket; how many were restored."""
        restored = 0
        for bucket in self.buckets:
            index = self._index(bucket)
            for key, entry in sorted(index.items()):
                path = self.root / bucket / entry["file"]
                if not path.is_file():
                    continue
                with path.open("rb") as body:
                    answer = self.s3.put_object(
                        Bucket=bucket,
                        Key=key,
                        Body=body,
                        ContentType=entry.get("content_type") or "binary/octet-stream",
                        Metadata=entry.get("metadata") or {},
                    )
                entry["etag"] = answer["ETag"].strip('"')  # the same bytes: the same ETag
                restored += 1
            self._write_index(bucket, index)
        return restored
