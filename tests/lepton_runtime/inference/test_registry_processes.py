"""The model registry in real `lepton serve infer` processes against a real moto server: the
LiteRT and TensorFlow runtimes taking turns on one model cache, and a transient storage fault
on model.tflite (injected by a proxy) that must be retried, never cached or worked around."""

from __future__ import annotations

import signal
import subprocess
import time
from pathlib import Path
from typing import Any

import pytest
import requests

from s3_fault_proxy import FaultyS3Proxy

pytestmark = pytest.mark.slow

FUNCTION_DIR = Path(__file__).parents[3] / "functions" / "infer"
MODEL, VERSION = "digits", "v1"


def _env(bucket: str, cache: Path, runtime: str, endpoint: str) -> dict[str, str]:
    return {
        # No event is sent here: the registry's loads are the subject, not event ingress.
        "LEPTON_EVENT_AUTH": "off",
        "AWS_ENDPOINT_URL": endpoint,
        "LEPTON_MODELS_BUCKET": bucket,
        "LEPTON_MODEL_CACHE_DIR": str(cache),
        "LEPTON_RUNTIME": runtime,
        "LEPTON_WORKERS": "1",
    }


def _readiness(url: str) -> tuple[int, dict[str, Any]]:
    response = requests.get(f"{url}/health/readiness", timeout=5)
    return response.status_code, response.json()


def _wait_ready(url: str, seconds: float) -> tuple[dict[str, Any], list[dict[str, Any]]]:
    """Readiness once it is 200, and every 503 answer seen on the way."""
    deadline = time.monotonic() + seconds
    seen: list[dict[str, Any]] = []
    while time.monotonic() < deadline:
        status, body = _readiness(url)
        if status == 200:
            return body, seen
        seen.append(body)
        time.sleep(0.1)
    raise AssertionError(f"not ready within {seconds} s: {seen[-1:]}")


def _stop(process: subprocess.Popen) -> None:
    process.send_signal(signal.SIGTERM)
    process.wait(30)


def test_runtimes_taking_turns_on_one_cache_each_become_ready(
    serve_function, models_bucket: str, moto_endpoint: str, tmp_path: Path, digit_png
) -> None:
    """The issue's trap: after LiteRT cached the version, TensorFlow found a folder without
    model.keras and stayed unready for ever."""
    cache = tmp_path / "cache"
    for runtime in ("litert", "tensorflow", "litert", "tensorflow"):
        process, url = serve_function(
            FUNCTION_DIR, _env(models_bucket, cache, runtime, moto_endpoint)
        )
        ready, _ = _wait_ready(url, 90)
        assert (ready["runtime"], ready["version"]) == (runtime, VERSION)
        answer = requests.post(
            url, data=digit_png[3], headers={"Content-Type": "image/png"}, timeout=10
        )
        assert answer.status_code == 200
        assert answer.json()["predictions"][0]["label"] == "3"
        _stop(process)
    cached = {path.name for path in (cache / MODEL / VERSION).iterdir()}
    assert {"model.tflite", "model.keras", "metadata.json"} <= cached


def test_a_transient_fault_on_model_tflite_is_retried_not_worked_around(
    serve_function, models_bucket: str, proxy: FaultyS3Proxy, tmp_path: Path
) -> None:
    """Every attempt of one load (boto3's three) fails with 503 SlowDown: the next load must
    fetch model.tflite again and serve LiteRT, not fall back to Keras and cache that."""
    proxy.fail_gets("/model.tflite", 3)
    cache = tmp_path / "cache"
    _, url = serve_function(FUNCTION_DIR, _env(models_bucket, cache, "auto", proxy.url))

    ready, _ = _wait_ready(url, 60)

    assert proxy.failed == {"/model.tflite": 3}
    assert ready["runtime"] == "litert"
    assert "model.keras" not in {path.name for path in (cache / MODEL / VERSION).iterdir()}


def test_a_replica_that_cannot_load_says_why_and_recovers_once_the_fault_passes(
    serve_function, models_bucket: str, proxy: FaultyS3Proxy, tmp_path: Path
) -> None:
    proxy.fail_gets("/model.tflite", 9)  # three whole loads
    _, url = serve_function(FUNCTION_DIR, _env(models_bucket, tmp_path / "c", "litert", proxy.url))

    ready, unready = _wait_ready(url, 90)

    reasons = [body.get("reason") or "" for body in unready]
    assert any(
        "unavailable" in reason.lower() or "slowdown" in reason.lower() for reason in reasons
    )
    assert max(body.get("failed_attempts", 0) for body in unready) >= 2
    assert ready["runtime"] == "litert" and ready["failed_attempts"] == 0
