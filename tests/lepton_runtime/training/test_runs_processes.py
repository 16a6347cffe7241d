"""Training runs in real `lepton serve train` processes against a real moto server: two
replicas given the same delivery at once, a replica killed with SIGKILL in the middle of a run
(or once its version is stored, before the pointer) and the delivery redelivered to another, the
store failing the run's last write, and two trainings racing for the pointer.

What must hold: one version per run whatever happens, a crashed run taken over within its lease,
and the pointer only ever moving to a later training.
"""

from __future__ import annotations

import contextlib
import io
import os
import signal
import threading
import time
import zipfile
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import boto3
import numpy as np
import pytest
import requests

from lepton_model import digits
from lepton_runtime.models.store import ModelStore
from lepton_runtime.settings import Location
from lepton_runtime.storage import Storage
from s3_fault_proxy import FaultyS3Proxy

pytestmark = pytest.mark.slow

FUNCTION_DIR = Path(__file__).parents[3] / "functions" / "train"
LEASE_SECONDS = 6.0
AUDIENCE = "lepton-train"


def _dataset(per_class: int, classes: int = 3) -> bytes:
    _, labels = digits.load_digits()
    chosen = np.concatenate([np.flatnonzero(labels == d)[:per_class] for d in range(classes)])
    buffer = io.BytesIO()
    with zipfile.ZipFile(buffer, "w") as archive:
        for name, data in digits.digit_files(indices=chosen):
            archive.writestr(name, data)
    return buffer.getvalue()


@pytest.fixture
def store(buckets: dict[str, str]) -> ModelStore:
    return ModelStore(Storage(boto3.client("s3")), Location(buckets["models"]))


@pytest.fixture
def start_replicas(
    serve_function, buckets: dict[str, str], oidc
) -> Callable[..., list[tuple[Any, str]]]:
    """Start `count` more training replicas on the shared buckets, side by side (each start is
    mostly TensorFlow's import in its own process), and wait until every one is ready; with
    `endpoint`, they reach S3 there (a fault proxy); `lease`: their training lease, seconds."""

    def start(endpoint: str | None = None, lease: float = LEASE_SECONDS) -> tuple[Any, str]:
        process, url = serve_function(
            FUNCTION_DIR,
            {
                **oidc.env(AUDIENCE),
                **({"AWS_ENDPOINT_URL": endpoint} if endpoint else {}),
                "LEPTON_UPLOADS_BUCKET": buckets["uploads"],
                "LEPTON_RESULTS_BUCKET": buckets["results"],
                "LEPTON_MODELS_BUCKET": buckets["models"],
                "LEPTON_MIN_ACCURACY": "0",
                "LEPTON_TRAINING_LEASE_SECONDS": str(lease),
                "LEPTON_WORKERS": "1",
            },
            role="train",
        )
        deadline = time.monotonic() + 120  # TensorFlow's import, on 2 busy cores
        while not _ready(url):
            assert process.poll() is None, "the training function exited"
            assert time.monotonic() < deadline, "the training function never became ready"
            time.sleep(0.2)
        return process, url

    def start_many(
        count: int, endpoint: str | None = None, lease: float = LEASE_SECONDS
    ) -> list[tuple[Any, str]]:
        with ThreadPoolExecutor(count) as pool:
            return list(pool.map(lambda _: start(endpoint, lease), range(count)))

    return start_many


def _ready(url: str) -> bool:
    try:
        return requests.get(f"{url}/health/readiness", timeout=5).status_code == 200
    except requests.ConnectionError:
        return False


def _upload(buckets: dict[str, str], key: str, body: bytes) -> str:
    boto3.client("s3").put_object(Bucket=buckets["uploads"], Key=key, Body=body)
    return f"s3://{buckets['uploads']}/{key}"


@pytest.fixture(autouse=True)
def _token(oidc) -> None:
    """Every request here carries a token of the test issuer for the training function."""
    _HEADERS.update(oidc.headers(AUDIENCE, exp=int(time.time()) + 3600))


_HEADERS: dict[str, str] = {}


def _train(url: str, body: dict[str, Any]) -> dict[str, Any]:
    answer = requests.post(url, json=body, headers=_HEADERS, timeout=600)
    assert answer.status_code == 200, answer.text
    return answer.json()


def _running_run(store: ModelStore, name: str, seconds: float) -> dict[str, Any]:
    """The body of `name`'s run record once one is running."""
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        for record in store.runs(name).values():
            if record.status == "running":
                return record.body
        time.sleep(0.1)
    raise AssertionError(f"no running run of {name} within {seconds} s")


def _post_until_killed(url: str, body: dict[str, Any]) -> None:
    with contextlib.suppress(requests.ConnectionError):
        requests.post(url, json=body, headers=_HEADERS, timeout=600)


def _kill_tree(pid: int) -> None:
    """SIGKILL a process and every process below it at once: a crash, not a shutdown."""
    pending, found = [pid], []
    while pending:
        current = pending.pop()
        found.append(current)
        for task in Path(f"/proc/{current}/task").glob("*"):
            pending.extend(int(c) for c in (task / "children").read_text().split())
    for each in found:
        os.kill(each, signal.SIGKILL)


def test_two_replicas_given_the_same_delivery_at_once_train_one_version(
    start_replicas, buckets: dict[str, str], store: ModelStore
) -> None:
    dataset = _upload(buckets, "datasets/same.zip", _dataset(10))
    replicas = start_replicas(2)
    request = {"dataset": dataset, "model": "same", "epochs": 3}

    with ThreadPoolExecutor(2) as pool:
        replies = list(pool.map(lambda replica: _train(replica[1], request), replicas))

    assert replies[0]["version"] == replies[1]["version"]
    assert sorted(bool(reply.get("duplicate")) for reply in replies) == [False, True]
    assert store.versions("same") == [replies[0]["version"]]
    assert store.pointer("same").version == replies[0]["version"]


def test_a_run_whose_replica_was_killed_is_taken_over_by_the_redelivery(
    start_replicas, buckets: dict[str, str], store: ModelStore
) -> None:
    dataset = _upload(buckets, "datasets/crash.zip", _dataset(60))
    request = {"dataset": dataset, "model": "crash", "epochs": 40, "patience": 40}
    (first, first_url), (_, second_url) = start_replicas(2)
    threading.Thread(target=_post_until_killed, args=(first_url, request), daemon=True).start()
    crashed = _running_run(store, "crash", 60)
    time.sleep(1.0)  # well into its epochs
    _kill_tree(first.pid)

    started = time.monotonic()
    reply = _train(second_url, request)
    took = time.monotonic() - started

    assert reply["promoted"] is True and not reply.get("duplicate")
    assert store.versions("crash") == [reply["version"]]
    assert store.pointer("crash").version == reply["version"]
    (record,) = store.runs("crash").values()
    assert record.status == "done"
    assert record.body["took_over_from"] == crashed["owner"]
    # It waited for the dead owner's lease to run out (not for the 30 min wait limit), then
    # trained: the training itself takes some seconds on top.
    assert took < LEASE_SECONDS + 120


def test_a_training_that_started_earlier_and_finished_later_does_not_win_the_pointer(
    start_replicas, buckets: dict[str, str], store: ModelStore
) -> None:
    slow_set = _upload(buckets, "datasets/slow.zip", _dataset(60))
    fast_set = _upload(buckets, "datasets/fast.zip", _dataset(10))
    (_, slow_url), (_, fast_url) = start_replicas(2)
    slow_request = {"dataset": slow_set, "model": "race", "epochs": 30, "patience": 30}
    with ThreadPoolExecutor(1) as pool:
        slow = pool.submit(_train, slow_url, slow_request)
        _running_run(store, "race", 60)  # the slow one has claimed its run: it started first
        fast = _train(fast_url, {"dataset": fast_set, "model": "race", "epochs": 1})
        assert not slow.done(), "the slow training finished first: the race was not played"
        late = slow.result()

    assert fast["promoted"] is True
    assert late["promoted"] is False
    assert "trained later" in late["gate"]
    assert store.pointer("race").version == fast["version"]
    assert sorted(store.versions("race")) == sorted([fast["version"], late["version"]])


def test_a_run_whose_record_the_store_failed_to_finish_is_not_trained_again(
    start_replicas, buckets: dict[str, str], store: ModelStore, proxy: FaultyS3Proxy
) -> None:
    # The version is stored and live; then S3 fails the run record's last write through
    # botocore's retries: the delivery is answered 503 and comes again.
    dataset = _upload(buckets, "datasets/blip.zip", _dataset(10))
    proxy.fail_puts("/_runs/", times=3, after="/latest.json")
    # A lease no renewal falls within: the 3 failures are all the run record's last write's.
    ((_, url),) = start_replicas(1, proxy.url, lease=600)
    request = {"dataset": dataset, "model": "blip", "epochs": 3}
    failed = requests.post(url, json=request, headers=_HEADERS, timeout=600)
    (first,) = store.versions("blip")

    reply = _train(url, request)

    assert failed.status_code == 503 and proxy.failed["/_runs/"] == 3
    assert reply["version"] == first and reply["promoted"] is True
    assert store.versions("blip") == [first]
    assert store.pointer("blip").version == first
    (record,) = store.runs("blip").values()
    assert record.status == "done" and record.body["version"] == first


def test_a_run_killed_once_its_version_is_stored_is_adopted_by_the_redelivery(
    start_replicas, buckets: dict[str, str], store: ModelStore, proxy: FaultyS3Proxy
) -> None:
    dataset = _upload(buckets, "datasets/held.zip", _dataset(10))
    proxy.hold_puts("/held/latest.json")  # the version is whole; the pointer never moves
    request = {"dataset": dataset, "model": "held", "epochs": 3}
    ((first, first_url),) = start_replicas(1, proxy.url)
    ((_, second_url),) = start_replicas(1)
    threading.Thread(target=_post_until_killed, args=(first_url, request), daemon=True).start()
    deadline = time.monotonic() + 120
    while not proxy.saw("PUT", "/held/latest.json"):
        assert time.monotonic() < deadline, "the first replica never reached the pointer"
        time.sleep(0.05)
    _kill_tree(first.pid)
    (stored,) = store.versions("held")

    reply = _train(second_url, request)

    assert reply["version"] == stored and reply["promoted"] is True
    assert store.versions("held") == [stored]
    assert store.pointer("held").version == stored
    (record,) = store.runs("held").values()
    assert record.status == "done" and record.body["took_over_from"]
