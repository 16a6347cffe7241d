"""The model prefetch of `serve infer`: what the child fetches, the registry's first load from its
handoff (no S3 request), and every way it can fail leaving the start as without it."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import textwrap
import time
import uuid
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

from lepton_model.errors import ArtifactError
from lepton_runtime.inference import prefetch as prefetch_module
from lepton_runtime.inference.prefetch import Prefetch, Prefetched, prefetch
from lepton_runtime.inference.registry import ModelRegistry
from lepton_runtime.inference.service import InferenceService
from lepton_runtime.models.store import ModelCache, ModelStore
from lepton_runtime.settings import Settings
from lepton_runtime.storage import Storage


class CountingClient:
    """A boto3 client that records the name of every call made through it."""

    def __init__(self, client: Any) -> None:
        self._client = client
        self.calls: list[tuple[str, str]] = []

    def __getattr__(self, name: str) -> Any:
        attribute = getattr(self._client, name)
        if not callable(attribute):
            return attribute

        def call(*args: Any, **kwargs: Any) -> Any:
            self.calls.append((name, str(kwargs.get("Key", ""))))
            return attribute(*args, **kwargs)

        return call


def settings_for(tmp_path: Path, **env: str) -> Settings:
    return Settings.from_env({"LEPTON_MODEL_CACHE_DIR": str(tmp_path / "cache"), **env})


@pytest.fixture
def prefetched(s3, publish, tmp_path: Path) -> tuple[Settings, Prefetched]:
    """v1 published and prefetched into tmp_path's cache: the settings and the handoff."""
    publish("v1")
    settings = settings_for(tmp_path)
    found = prefetch(settings)
    assert found is not None
    return settings, found


def registry_with(settings: Settings, client: Any) -> ModelRegistry:
    return ModelRegistry(settings, ModelStore(Storage(client), settings.models))


def _reaped(pid: int) -> bool:
    """Our child `pid` was reaped already (no zombie left behind)."""
    try:
        os.waitpid(pid, os.WNOHANG)
    except ChildProcessError:
        return True
    return False


def _running(pid: int) -> bool:
    """A process that still runs (a zombie waiting for init to reap it does not)."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return False
    return stat.rsplit(")", 1)[1].split()[0] != "Z"


# --- what the prefetch fetches ----------------------------------------------------------------


def test_prefetch_puts_the_live_version_in_the_verified_cache(s3, publish, tmp_path) -> None:
    publish("v1")
    settings = settings_for(tmp_path)

    found = prefetch(settings)

    assert found is not None and (found.name, found.version) == ("digits", "v1")
    assert found.metadata["version"] == "v1"
    folder = tmp_path / "cache" / "digits" / "v1"
    assert sorted(p.name for p in folder.iterdir()) == ["metadata.json", "model.tflite"]
    assert json.loads((folder / "metadata.json").read_text()) == found.metadata
    expected = found.metadata["artifacts"]["model.tflite"]
    assert ModelCache(tmp_path / "cache").has("digits", "v1", "model.tflite", expected)


def test_prefetch_fetches_the_pinned_version(s3, publish, tmp_path) -> None:
    publish("v1")
    publish("v2")
    found = prefetch(settings_for(tmp_path, LEPTON_MODEL_VERSION="v1"))
    assert found is not None and found.version == "v1"


def test_prefetch_fetches_what_the_runtime_needs(s3, publish, tmp_path) -> None:
    publish("v1")
    prefetch(settings_for(tmp_path, LEPTON_RUNTIME="tensorflow"))
    cached = {p.name for p in (tmp_path / "cache" / "digits" / "v1").iterdir()}
    assert cached == {"metadata.json", "model.keras"}


def test_prefetch_finds_nothing_before_a_model_is_published(s3, tmp_path) -> None:
    assert prefetch(settings_for(tmp_path)) is None


def test_prefetch_reads_a_configured_endpoint_without_a_boto3_client(
    moto_endpoint: str, model_dir: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Against MinIO or the local stack the child signs its three GETs with botocore's signer
    (signed_gets.py): no boto3 client is made, and the cache is verified all the same."""
    import boto3

    bucket = f"prefetch-{uuid.uuid4().hex[:12]}"
    client = boto3.client("s3")
    client.create_bucket(Bucket=bucket)
    for path in model_dir.iterdir():
        client.put_object(Bucket=bucket, Key=f"digits/v1/{path.name}", Body=path.read_bytes())
    client.put_object(Bucket=bucket, Key="digits/latest.json", Body=b'{"version": "v1"}')

    def no_client(settings: Settings) -> Any:
        raise AssertionError("the prefetch made a boto3 client")

    monkeypatch.setattr("lepton_runtime.storage.make_s3_client", no_client)
    found = prefetch(settings_for(tmp_path, LEPTON_MODELS_BUCKET=bucket))

    assert found is not None and (found.name, found.version) == ("digits", "v1")
    expected = found.metadata["artifacts"]["model.tflite"]
    assert ModelCache(tmp_path / "cache").has("digits", "v1", "model.tflite", expected)


# --- the handoff --------------------------------------------------------------------------------


def test_the_first_load_from_a_handoff_makes_no_s3_request(prefetched, s3) -> None:
    settings, found = prefetched
    client = CountingClient(s3)
    registry = registry_with(settings, client)

    assert registry.adopt(found)
    assert registry.refresh() is True

    assert client.calls == []
    assert registry.require().version == "v1"
    assert registry.require().predictor.runtime == "litert"


def test_a_handoff_needs_no_boto3_client_at_all(prefetched) -> None:
    settings, found = prefetched
    service = InferenceService(settings, Storage.from_settings(settings))

    assert service.registry.adopt(found)
    service.registry.refresh()

    assert service.ready()
    assert not service.storage.client_made


def test_a_stale_handoff_serves_the_first_load_only(prefetched, s3, publish) -> None:
    settings, found = prefetched
    publish("v2")  # published between the prefetch and the load
    client = CountingClient(s3)
    registry = registry_with(settings, client)
    registry.adopt(found)

    registry.refresh()
    assert registry.require().version == "v1"
    assert registry.refresh() is True  # the next poll reads latest.json

    assert registry.require().version == "v2"
    assert ("get_object", "digits/latest.json") in client.calls


def test_a_handoff_artifact_is_verified_against_its_metadata(prefetched, s3, tmp_path) -> None:
    settings, found = prefetched
    cached = tmp_path / "cache" / "digits" / "v1" / "model.tflite"
    cached.write_bytes(cached.read_bytes()[:-1] + b"\0")  # corrupted on disk since
    client = CountingClient(s3)
    registry = registry_with(settings, client)
    registry.adopt(found)

    registry.refresh()

    assert client.calls == [("get_object", "digits/v1/model.tflite")]  # fetched again, only it
    assert registry.require().version == "v1"


def test_a_handoff_whose_load_fails_is_not_used_again(prefetched, s3) -> None:
    settings, found = prefetched
    registry = registry_with(settings, s3)
    registry.adopt(Prefetched("digits", "v1", {**found.metadata, "version": "v0"}))

    with pytest.raises(ArtifactError):
        registry.refresh()
    registry.refresh()

    assert registry.require().version == "v1"


@pytest.mark.parametrize(
    ("pin", "handoff"),
    [("", Prefetched("other", "v1", {})), ("v2", Prefetched("digits", "v1", {}))],
    ids=["another-model", "not-the-pin"],
)
def test_a_handoff_for_another_model_or_version_is_refused(
    tmp_path, pin: str, handoff: Prefetched
) -> None:
    settings = settings_for(tmp_path, LEPTON_MODEL_VERSION=pin)
    registry = ModelRegistry(settings, ModelStore(Storage.from_settings(settings), settings.models))
    assert registry.adopt(handoff) is False


def test_a_handoff_is_refused_once_a_model_is_live(s3, publish, tmp_path) -> None:
    publish("v1")
    settings = settings_for(tmp_path)
    registry = registry_with(settings, s3)
    registry.refresh()
    assert registry.adopt(Prefetched("digits", "v0", {})) is False


# --- the child process --------------------------------------------------------------------------


def test_the_child_hands_over_the_model_and_is_reaped(models_bucket: str, tmp_path) -> None:
    settings = settings_for(tmp_path, LEPTON_MODELS_BUCKET=models_bucket)
    started = Prefetch.start(settings)
    assert started is not None
    pid = started.pid

    found = started.collect(timeout=30)

    assert found is not None and found.version == "v1"
    assert _reaped(pid)
    service = InferenceService(settings, Storage.from_settings(settings))
    assert service.registry.adopt(found)
    service.registry.refresh()
    assert service.ready() and not service.storage.client_made


def test_a_failed_prefetch_leaves_the_worker_to_load_through_s3(
    models_bucket: str, tmp_path
) -> None:
    settings = settings_for(tmp_path, LEPTON_MODELS_BUCKET=models_bucket)
    missing = settings_for(tmp_path / "other", LEPTON_MODELS_BUCKET="no-such-bucket")
    started = Prefetch.start(missing)  # S3 fails in the child: nothing to hand over
    assert started is not None
    service = InferenceService(settings, Storage.from_settings(settings))

    assert started.hand_to(service, timeout=30) is False

    assert service.registry.refresh() is True  # as without a prefetch
    assert service.ready() and service.registry.require().version == "v1"


def _child_doing(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path, what: Callable[[Settings], Any]
) -> Prefetch:
    monkeypatch.setattr(prefetch_module, "prefetch", what)  # the forked child inherits it
    started = Prefetch.start(settings_for(tmp_path))
    assert started is not None
    return started


def test_a_hung_child_is_killed_and_reaped_after_the_wait(monkeypatch, tmp_path) -> None:
    started = _child_doing(monkeypatch, tmp_path, lambda settings: time.sleep(60))
    pid = started.pid
    began = time.monotonic()

    assert started.collect(timeout=0.5) is None

    assert time.monotonic() - began < 5
    assert _reaped(pid)


def test_a_child_that_dies_means_no_handoff(monkeypatch, tmp_path) -> None:
    started = _child_doing(monkeypatch, tmp_path, lambda settings: os._exit(3))
    pid = started.pid
    assert started.collect(timeout=10) is None
    assert _reaped(pid)


def test_a_child_that_raises_means_no_handoff(monkeypatch, tmp_path) -> None:
    def fails(settings: Settings) -> None:
        raise OSError("disk full")

    started = _child_doing(monkeypatch, tmp_path, fails)
    assert started.collect(timeout=10) is None


def test_the_child_dies_with_a_supervisor_killed_with_sigkill(tmp_path) -> None:
    marker = tmp_path / "fetching"
    script = textwrap.dedent(
        f"""
        import pathlib, time
        from lepton_runtime.inference import prefetch
        from lepton_runtime.settings import Settings
        def hang(settings):
            pathlib.Path({str(marker)!r}).touch()
            time.sleep(60)
        prefetch.prefetch = hang
        started = prefetch.Prefetch.start(Settings.from_env())
        print(started.pid, flush=True)
        time.sleep(60)
        """
    )
    parent = subprocess.Popen(
        [sys.executable, "-c", script],
        stdout=subprocess.PIPE,
        text=True,
        env={**os.environ, "LEPTON_MODEL_CACHE_DIR": str(tmp_path / "cache")},
    )
    try:
        assert parent.stdout is not None
        child = int(parent.stdout.readline())
        deadline = time.monotonic() + 10
        while not marker.exists() and time.monotonic() < deadline:  # the child is at work
            time.sleep(0.02)
        assert _running(child)
        parent.send_signal(signal.SIGKILL)
        parent.wait(10)
        deadline = time.monotonic() + 5
        while _running(child) and time.monotonic() < deadline:
            time.sleep(0.05)
        assert not _running(child)
    finally:
        if parent.poll() is None:
            parent.kill()


def test_a_dropped_handoff_is_not_used(prefetched, s3) -> None:
    settings, found = prefetched
    client = CountingClient(s3)
    registry = registry_with(settings, client)
    registry.adopt(found)

    registry.drop_handoff()  # the supervisor, once its first workers are forked
    registry.refresh()

    assert ("get_object", "digits/latest.json") in client.calls
