"""The model registry: loading, polling, pinning and the atomic swap under load."""

from __future__ import annotations

import json
import threading
import time

import pytest

from lepton_model.classifier import load_classifier
from lepton_model.errors import ArtifactError
from lepton_runtime.errors import ModelNotReadyError, StorageUnavailableError
from lepton_runtime.inference.registry import ModelRegistry
from lepton_runtime.models.store import ModelStore
from lepton_runtime.settings import Settings
from lepton_runtime.storage import Storage


def registry_for(tmp_path, **env: str) -> ModelRegistry:
    settings = Settings.from_env({"LEPTON_MODEL_CACHE_DIR": str(tmp_path / "cache"), **env})
    return ModelRegistry(settings, ModelStore(Storage.from_settings(settings), settings.models))


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
    with pytest.raises(ArtifactError):
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


def test_a_refresh_asked_for_during_a_load_is_done_after_it(s3, publish, tmp_path) -> None:
    publish("v1")
    settings = Settings.from_env(
        {"LEPTON_MODEL_CACHE_DIR": str(tmp_path / "cache"), "LEPTON_MODEL_POLL_SECONDS": "3600"}
    )
    loading, release = threading.Event(), threading.Event()

    def slow_loader(folder, runtime, top_k):  # type: ignore[no-untyped-def]
        loading.set()
        release.wait(10)
        return load_classifier(folder, runtime, top_k)

    store = ModelStore(Storage.from_settings(settings), settings.models)
    registry = ModelRegistry(settings, store, loader=slow_loader)
    registry.start()
    try:
        assert loading.wait(10)  # v1 is being loaded
        publish("v2")
        registry.request_refresh()  # the model-published event, mid-load
        release.set()
        deadline = time.monotonic() + 10
        while (registry.current is None or registry.current.version != "v2") and (
            time.monotonic() < deadline
        ):
            time.sleep(0.05)
        assert registry.require().version == "v2"
    finally:
        registry.stop()


def test_a_transient_fault_on_the_model_file_is_retried_not_cached(
    s3, publish, tmp_path, monkeypatch
) -> None:
    publish("v1")
    registry = registry_for(tmp_path)
    real_download = registry.store.download
    calls = []

    def flaky(*args, **kwargs):  # type: ignore[no-untyped-def]
        calls.append(args[2])
        if len(calls) == 1:
            raise StorageUnavailableError("connection reset")
        return real_download(*args, **kwargs)

    monkeypatch.setattr(registry.store, "download", flaky)
    with pytest.raises(StorageUnavailableError):
        registry.refresh()
    assert not (tmp_path / "cache" / "digits" / "v1" / "model.tflite").exists()
    assert "StorageUnavailableError" in registry.status()["reason"]
    assert registry.refresh() is True
    assert registry.require().predictor.runtime == "litert"
    assert calls == ["model.tflite", "model.tflite"]


def test_a_corrupt_download_is_refused_and_not_cached(s3, publish, tmp_path) -> None:
    publish("v1")
    s3.put_object(Bucket="lepton-models", Key="digits/v1/model.tflite", Body=b"not a model")
    registry = registry_for(tmp_path)
    with pytest.raises(ArtifactError, match=r"metadata\.json says"):
        registry.refresh()
    assert not (tmp_path / "cache" / "digits" / "v1" / "model.tflite").exists()


def test_runtimes_alternating_on_one_cache_each_fetch_their_file(s3, publish, tmp_path) -> None:
    publish("v1")
    litert = registry_for(tmp_path)
    assert litert.refresh()
    keras = registry_for(tmp_path, LEPTON_RUNTIME="tensorflow")
    assert keras.refresh()
    assert keras.require().predictor.runtime == "tensorflow"
    again = registry_for(tmp_path)
    assert again.refresh() and again.require().predictor.runtime == "litert"


def test_old_versions_are_evicted_from_the_cache(s3, publish, tmp_path) -> None:
    registry = registry_for(tmp_path)
    for version in ("v1", "v2", "v3", "v4", "v5"):
        publish(version)
        assert registry.refresh()
        time.sleep(0.01)  # distinct modification times
    cached = {p.name for p in (tmp_path / "cache" / "digits").iterdir() if p.is_dir()}
    assert cached == {"v5", "v4", "v3"}
