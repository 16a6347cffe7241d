"""The model store: the models bucket's layout, forward-only pointer, run claims and leases."""

from __future__ import annotations

import json
import time
from pathlib import Path
from typing import Any

import boto3
import pytest

from lepton_model.errors import ArtifactError
from lepton_runtime.models.store import Claim, LeaseLostError, ModelCache, ModelStore, RunRecord
from lepton_runtime.settings import Location
from lepton_runtime.storage import Storage

BUCKET = "lepton-models"


@pytest.fixture
def store(mock_aws: None) -> ModelStore:
    client = boto3.client("s3")
    client.create_bucket(Bucket=BUCKET)
    return ModelStore(Storage(client), Location(BUCKET))


def _version(store: ModelStore, tmp_path: Path, name: str, version: str) -> None:
    folder = tmp_path / version
    folder.mkdir()
    (folder / "model.tflite").write_bytes(b"weights " + version.encode())
    digest = {"size": 8 + len(version), "sha256": _sha(b"weights " + version.encode())}
    (folder / "metadata.json").write_text(
        json.dumps({"version": version, "artifacts": {"model.tflite": digest}})
    )
    store.upload_version(name, version, folder)


def _sha(data: bytes) -> str:
    import hashlib

    return hashlib.sha256(data).hexdigest()


def test_a_listing_of_a_model_holds_only_its_versions(store: ModelStore, tmp_path: Path) -> None:
    _version(store, tmp_path, "digits", "v1")
    store.advance_pointer("digits", "v1", {"trained_at": 1.0})
    store.claim_run("digits", "run1", "me", 60, {})
    assert store.versions("digits") == ["v1"]
    assert store.models() == ["digits"]


def test_metadata_is_uploaded_after_the_files(store: ModelStore, tmp_path: Path) -> None:
    order: list[str] = []
    store.storage.client.meta.events.register(
        "before-parameter-build.s3.PutObject", lambda params, **_: order.append(params["Key"])
    )
    _version(store, tmp_path, "digits", "v1")
    assert order == ["digits/v1/model.tflite", "digits/v1/metadata.json"]


def test_the_first_version_creates_the_pointer(store: ModelStore) -> None:
    move = store.advance_pointer("digits", "v1", {"trained_at": 10.0})
    assert move.moved and move.live == "v1"
    assert store.pointer("digits").version == "v1"


def test_a_version_trained_earlier_never_replaces_a_later_one(store: ModelStore) -> None:
    store.advance_pointer("digits", "later", {"trained_at": 20.0})
    move = store.advance_pointer("digits", "earlier", {"trained_at": 10.0})
    assert not move.moved and move.live == "later"
    assert store.pointer("digits").version == "later"


def test_a_pointer_changed_between_read_and_write_is_read_again(store: ModelStore) -> None:
    store.advance_pointer("digits", "v1", {"trained_at": 10.0})
    real_put = store.storage.put_json
    raced: list[bool] = []

    def put_after_a_rival(bucket: str, key: str, value: Any, **kwargs: Any) -> str | None:
        if key.endswith("latest.json") and not raced:
            raced.append(True)  # a rival trained later moves the pointer just before us
            real_put(bucket, key, {"version": "rival", "trained_at": 30.0})
        return real_put(bucket, key, value, **kwargs)

    store.storage.put_json = put_after_a_rival  # type: ignore[method-assign]
    move = store.advance_pointer("digits", "v2", {"trained_at": 20.0})
    assert not move.moved and move.live == "rival"


def test_a_second_claim_gets_the_record_the_first_holds(store: ModelStore) -> None:
    first = store.claim_run("digits", "r", "replica-a", 60, {"version": "x"})
    second = store.claim_run("digits", "r", "replica-b", 60, {"version": "y"})
    assert isinstance(first, Claim)
    assert isinstance(second, RunRecord) and second.body["owner"] == "replica-a"


def test_an_expired_lease_is_taken_over_once(store: ModelStore) -> None:
    first = store.claim_run("digits", "r", "crashed", 0.2, {})
    assert isinstance(first, Claim)
    time.sleep(0.3)
    second = store.claim_run("digits", "r", "next", 60, {})
    third = store.claim_run("digits", "r", "late", 60, {})
    assert isinstance(second, Claim) and second.body["took_over_from"] == "crashed"
    assert isinstance(third, RunRecord) and third.body["owner"] == "next"


def test_the_old_owner_cannot_renew_or_finish_after_a_takeover(store: ModelStore) -> None:
    old = store.claim_run("digits", "r", "slow", 0.2, {})
    assert isinstance(old, Claim)
    time.sleep(0.3)
    assert isinstance(store.claim_run("digits", "r", "new", 60, {}), Claim)
    with pytest.raises(LeaseLostError):
        store.renew(old)
    with pytest.raises(LeaseLostError):
        store.finish_run(old, {"version": "stale"})


def test_a_finished_run_answers_its_result(store: ModelStore) -> None:
    claim = store.claim_run("digits", "r", "a", 60, {})
    assert isinstance(claim, Claim)
    store.finish_run(claim, {"version": "v9"})
    record = store.claim_run("digits", "r", "b", 60, {})
    assert isinstance(record, RunRecord) and record.status == "done"
    assert record.body["reply"] == {"version": "v9"}


def test_a_released_run_can_be_claimed_again_at_once(store: ModelStore) -> None:
    claim = store.claim_run("digits", "r", "a", 60, {})
    assert isinstance(claim, Claim)
    store.release_run(claim)
    assert isinstance(store.claim_run("digits", "r", "b", 60, {}), Claim)


def test_a_download_is_verified_and_leaves_nothing_when_it_does_not_match(
    store: ModelStore, tmp_path: Path
) -> None:
    _version(store, tmp_path, "digits", "v1")
    target = tmp_path / "cache" / "model.tflite"
    with pytest.raises(ArtifactError):
        store.download("digits", "v1", "model.tflite", {"size": 1, "sha256": "0" * 64}, target)
    assert not target.exists()
    assert not target.parent.exists() or not list(target.parent.iterdir())


def test_a_cached_file_that_was_corrupted_on_disk_is_not_used(tmp_path: Path) -> None:
    cache = ModelCache(tmp_path)
    (tmp_path / "digits" / "v1").mkdir(parents=True)
    (tmp_path / "digits" / "v1" / "model.tflite").write_bytes(b"garbage")
    assert not cache.has("digits", "v1", "model.tflite", {"size": 7, "sha256": "0" * 64})
    assert not (tmp_path / "digits" / "v1" / "model.tflite").exists()


def test_runs_lists_every_record_of_a_model_by_run_id(store: ModelStore) -> None:
    first = store.claim_run("m", "run-a", "owner-1", 60, {"version": "v1"})
    store.claim_run("m", "run-b", "owner-2", 60, {"version": "v2"})
    store.claim_run("other", "run-c", "owner-3", 60, {"version": "v3"})
    assert isinstance(first, Claim)
    store.finish_run(first, {"version": "v1"})

    runs = store.runs("m")

    assert sorted(runs) == ["run-a", "run-b"]
    assert (runs["run-a"].status, runs["run-b"].status) == ("done", "running")
