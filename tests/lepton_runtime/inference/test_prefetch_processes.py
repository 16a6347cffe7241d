"""`lepton-function serve infer` processes against a real moto server (through a proxy that
records every request): the prefetched model serves the first prediction with no S3 request
from the workers, and a prefetch that fails leaves the workers to load as without it."""

from __future__ import annotations

import time
from pathlib import Path

import pytest
import requests

from s3_fault_proxy import FaultyS3Proxy

pytestmark = pytest.mark.slow

FUNCTION_DIR = Path(__file__).parents[3] / "functions" / "infer"


def _env(bucket: str, cache: Path, endpoint: str) -> dict[str, str]:
    return {
        "LEPTON_EVENT_AUTH": "off",
        "AWS_ENDPOINT_URL": endpoint,
        "LEPTON_MODELS_BUCKET": bucket,
        "LEPTON_MODEL_CACHE_DIR": str(cache),
        "LEPTON_RUNTIME": "litert",
        "LEPTON_WORKERS": "2",
    }


def _first_prediction(url: str, png: bytes, seconds: float = 60) -> dict:
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        answer = requests.post(url, data=png, headers={"Content-Type": "image/png"}, timeout=10)
        if answer.status_code == 200:
            return answer.json()
        time.sleep(0.1)
    raise AssertionError(f"no prediction within {seconds} s: {answer.status_code} {answer.text}")


def _gets(proxy: FaultyS3Proxy) -> list[str]:
    return sorted(path.split("?")[0].rsplit("/", 1)[1] for m, path in proxy.requests if m == "GET")


def test_the_first_prediction_needs_no_s3_request_from_the_workers(
    serve_function, models_bucket: str, proxy: FaultyS3Proxy, tmp_path: Path, digit_png
) -> None:
    _, url = serve_function(
        FUNCTION_DIR,
        _env(models_bucket, tmp_path / "cache", proxy.url),
        module="lepton_runtime.entry",
    )

    answer = _first_prediction(url, digit_png[3])

    assert answer["predictions"][0]["label"] == "3"
    # The prefetch's three reads, once for both workers (each would read all three itself).
    assert _gets(proxy) == ["latest.json", "metadata.json", "model.tflite"]
    ready = requests.get(f"{url}/health/readiness", timeout=5).json()
    assert (ready["version"], ready["runtime"]) == ("v1", "litert")


def test_a_prefetch_that_fails_leaves_the_workers_to_load_through_s3(
    serve_function, models_bucket: str, proxy: FaultyS3Proxy, tmp_path: Path, digit_png
) -> None:
    proxy.fail_gets("/latest.json", 3)  # every attempt of the prefetch's pointer read

    _, url = serve_function(
        FUNCTION_DIR,
        _env(models_bucket, tmp_path / "cache", proxy.url),
        module="lepton_runtime.entry",
    )
    answer = _first_prediction(url, digit_png[7])

    assert answer["predictions"][0]["label"] == "7"
    assert proxy.failed == {"/latest.json": 3}
    assert _gets(proxy).count("latest.json") >= 3 + 2  # the workers each read it after
