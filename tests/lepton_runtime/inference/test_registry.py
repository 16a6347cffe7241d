"""The model registry: loading, polling, pinning and the atomic swap under load."""

from __future__ import annotations

import json
import threading
import time

import pytest

from lepton_model.errors import ArtifactError
from lepton_runtime.errors import ModelNotReadyError
from lepton_runtime.inference.registry import ModelRegistry
from lepton_runtime.settings import Settings
from lepton_runtime.storage import Storage


def registry_for(tmp_path, **env: str) -> ModelRegistry:
    settings = Settings.from_env({"LEPTON_MODEL_CACHE_DIR": str(tmp_path / "cache"), **env})
    return ModelRegistry(settings, Storage.from_settings(settings))


def test_nothing_published_means_not_ready(s3, tmp_path) -> None:
    registry = registry_for(tmp_path)
    assert registry.refresh() is False
    with pytest.raises(ModelNotReadyError):
        registry.require()


def test_refresh_loads_the_version_latest_json_names(s3, publish, tmp_path) -> None:
    publish("v1")
    registry = registry_for(tmp_path)
    assert registry.refresh() is True
    assert registry.require().version == "v1"
    assert registry.require().predictor.runtime == "litert"


def test_refresh_is_a_no_op_when_the_live_version_is_loaded(s3, publish, tmp_path) -> None:
    publish("v1")
    registry = registry_for(tmp_path)
    registry.refresh()
    assert registry.refresh() is False


def test_files_are_cached_on_local_disk(s3, publish, tmp_path) -> None:
    publish("v1")
    registry_for(tmp_path).refresh()
    cached = sorted(p.name for p in (tmp_path / "cache" / "digits" / "v1").iterdir())
    assert cached == ["metadata.json", "model.tflite"]


def test_tensorflow_runtime_loads_the_keras_file(s3, publish, tmp_path) -> None:
    publish("v1")
    registry = registry_for(tmp_path, LEPTON_RUNTIME="tensorflow")
    registry.refresh()
    assert registry.require().predictor.runtime == "tensorflow"


def test_missing_tflite_falls_back_to_keras(s3, publish, tmp_path) -> None:
    publish("v1")
    s3.delete_object(Bucket="lepton-models", Key="digits/v1/model.tflite")
    registry = registry_for(tmp_path)
    registry.refresh()
    assert registry.require().predictor.runtime == "tensorflow"


def test_metadata_naming_another_version_is_refused(s3, publish, tmp_path) -> None:
    publish("v1")
    s3.put_object(
        Bucket="lepton-models",
        Key="digits/latest.json",
        Body=json.dumps({"version": "v1"}).encode(),
    )
    body = json.loads(
        s3.get_object(Bucket="lepton-models", Key="digits/v1/metadata.json")["Body"].read()
    )
    s3.put_object(
        Bucket="lepton-models",
        Key="digits/v1/metadata.json",
        Body=json.dumps({**body, "version": "v0"}).encode(),
    )
    registry = registry_for(tmp_path)
    with pytest.raises(ArtifactError):
        registry.refresh()
    assert registry.current is None


def test_invalid_version_in_latest_json_is_refused(s3, tmp_path) -> None:
    s3.put_object(
        Bucket="lepton-models",
        Key="digits/latest.json",
        Body=json.dumps({"version": "../../etc"}).encode(),
    )
    with pytest.raises(ModelNotReadyError):
        registry_for(tmp_path).refresh()


def test_polling_converges_on_a_new_version(s3, publish, tmp_path) -> None:
    publish("v1")
    registry = registry_for(tmp_path, LEPTON_MODEL_POLL_SECONDS="0.2")
    registry.start()
    try:
        assert registry.wait_loaded(10)
        publish("v2")
        deadline = time.monotonic() + 10
        while registry.require().version != "v2" and time.monotonic() < deadline:
            time.sleep(0.05)
        assert registry.require().version == "v2"
    finally:
        registry.stop()


def test_swapping_versions_under_concurrent_load_fails_no_request(
    service, client, publish, digit_png
) -> None:
    publish("v2")
    stop = threading.Event()
    answers: list[tuple[int, str]] = []
    lock = threading.Lock()

    def load() -> None:
        while not stop.is_set():
            response = client.post("/", data=digit_png[4], headers={"Content-Type": "image/png"})
            body = response.get_json()
            with lock:
                answers.append((response.status_code, body.get("model", {}).get("version")))

    workers = [threading.Thread(target=load) for _ in range(4)]
    for worker in workers:
        worker.start()
    registry = service.registry
    for i in range(6):  # flip between versions while requests run
        target = "v2" if i % 2 == 0 else "v1"
        s3_pointer(service, target)
        assert registry.refresh() is True
    stop.set()
    for worker in workers:
        worker.join()
    assert answers
    assert {status for status, _ in answers} == {200}
    assert {version for _, version in answers} <= {"v1", "v2"}


def s3_pointer(service, version: str) -> None:
    service.storage.put_json("lepton-models", "digits/latest.json", {"version": version})
