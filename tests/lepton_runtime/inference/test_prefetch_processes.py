"""`lepton-function serve infer` processes against a real moto server (through a proxy that
records every request): the prefetched model serves the first prediction with no S3 request
from the workers, a prefetch that fails leaves the workers to load as without it, and a worker
started later never loads the prefetched version again."""

from __future__ import annotations

import json
import os
import signal
import time
from pathlib import Path
from typing import Any

import boto3
import pytest
import requests

from lepton_runtime.models.store import ModelStore
from lepton_runtime.settings import Location
from lepton_runtime.storage import Storage
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


def _serve(
    serve_function, bucket: str, proxy: FaultyS3Proxy, tmp_path: Path, **options: Any
) -> tuple[Any, str]:
    """`lepton-function serve infer` (2 workers) reading the models bucket through `proxy`."""
    return serve_function(
        FUNCTION_DIR,
        _env(bucket, tmp_path / "cache", proxy.url),
        module="lepton_runtime.entry",
        **options,
    )


def _first_prediction(url: str, png: bytes, seconds: float = 60) -> dict:
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        answer = requests.post(url, data=png, headers={"Content-Type": "image/png"}, timeout=10)
        if answer.status_code == 200:
            return answer.json()
        time.sleep(0.1)
    raise AssertionError(f"no prediction within {seconds} s: {answer.status_code} {answer.text}")


def _live_version(url: str) -> str | None:
    """The version readiness reports (None while a connection meets the killed worker)."""
    try:
        return requests.get(f"{url}/health/readiness", timeout=5).json()["version"]
    except requests.ConnectionError:
        return None


def _json_lines(log: Path) -> list[str]:
    """The server's log lines (LiteRT prints a few plain ones of its own)."""
    return [line for line in log.read_text().splitlines() if line.startswith("{")]


def _loads(log: Path) -> list[str]:
    """The versions the server's "model live" lines name, in order."""
    lines = map(json.loads, _json_lines(log))
    return [line["version"] for line in lines if line.get("message") == "model live"]


def _gets(proxy: FaultyS3Proxy) -> list[str]:
    return sorted(path.split("?")[0].rsplit("/", 1)[1] for m, path in proxy.requests if m == "GET")


def test_the_first_prediction_needs_no_s3_request_from_the_workers(
    serve_function, models_bucket: str, proxy: FaultyS3Proxy, tmp_path: Path, digit_png
) -> None:
    _, url = _serve(serve_function, models_bucket, proxy, tmp_path)

    answer = _first_prediction(url, digit_png[3])

    assert answer["predictions"][0]["label"] == "3"
    # The prefetch's three reads, once for both workers (each would read all three itself).
    assert _gets(proxy) == ["latest.json", "metadata.json", "model.tflite"]
    ready = requests.get(f"{url}/health/readiness", timeout=5).json()
    assert (ready["version"], ready["runtime"]) == ("v1", "litert")


def test_a_prefetch_that_fails_leaves_the_workers_to_load_through_s3(
    serve_function, models_bucket: str, proxy: FaultyS3Proxy, tmp_path: Path, digit_png
) -> None:
    # The prefetch's pointer read (one attempt: its signed reads do not retry, see
    # signed_gets.py); the workers, forked after it, read through boto3's client.
    proxy.fail_gets("/latest.json", 1)

    _, url = _serve(serve_function, models_bucket, proxy, tmp_path)
    answer = _first_prediction(url, digit_png[7])

    assert answer["predictions"][0]["label"] == "7"
    assert proxy.failed == {"/latest.json": 1}
    assert _gets(proxy).count("latest.json") >= 1 + 2  # the workers each read it after


def test_a_replacement_worker_reads_latest_json_not_the_old_handoff(
    serve_function,
    models_bucket: str,
    proxy: FaultyS3Proxy,
    tmp_path: Path,
    digit_png,
    model_dir: Path,
) -> None:
    log = tmp_path / "server.log"
    with log.open("w") as output:
        process, url = _serve(serve_function, models_bucket, proxy, tmp_path, output=output)
    _first_prediction(url, digit_png[3])
    deadline = time.monotonic() + 30
    while len(_loads(log)) < 2 and time.monotonic() < deadline:  # both workers are serving
        time.sleep(0.1)
    store = ModelStore(Storage(boto3.client("s3")), Location(models_bucket))
    store.upload_version("digits", "v2", model_dir)
    body = json.loads((model_dir / "metadata.json").read_text())
    store.storage.put_json(models_bucket, "digits/v2/metadata.json", {**body, "version": "v2"})
    assert store.advance_pointer("digits", "v2", {"trained_at": time.time() + 60}).moved
    reads = _gets(proxy).count("latest.json")

    workers = Path(f"/proc/{process.pid}/task/{process.pid}/children").read_text().split()
    os.kill(int(workers[0]), signal.SIGKILL)  # the supervisor forks a replacement

    # The replacement's own first load: the pointer's v2, not the v1 the supervisor's handoff
    # named. (Its sibling keeps v1 until its next poll or a model-published event: readiness
    # answers from either worker, the kernel choosing per connection.)
    deadline = time.monotonic() + 30
    while len(loads := _loads(log)) < 3 and time.monotonic() < deadline:
        time.sleep(0.1)
    assert loads[:3] == ["v1", "v1", "v2"]
    assert _gets(proxy).count("latest.json") > reads
    seen: set[str | None] = set()
    while "v2" not in seen and time.monotonic() < deadline:  # the replacement serves it
        seen.add(_live_version(url))
        time.sleep(0.05)
    assert "v2" in seen
