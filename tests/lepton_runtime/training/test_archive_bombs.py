"""Archive bombs against a real `lepton serve train` process and a real moto server: each is
answered cleanly and quickly, the server's peak resident memory stays under 1.2 GiB, and a
normal training still works afterwards.

The bombs are uploaded under datasets/ and sent both ways a training starts: an HTTP request
naming the archive (answered 422 with a JSON error naming the limit) and the S3 event form
(answered 200 with an `ai.lepton.training.failed` reply event). The function's memory is
VmHWM from /proc of the server process and every process below it; it starts at about
550 MiB (TensorFlow is imported at start-up).
"""

from __future__ import annotations

import io
import json
import tarfile
import time
import zipfile
from collections.abc import Callable
from pathlib import Path
from typing import Any
from urllib.parse import quote_plus

import boto3
import numpy as np
import pytest
import requests
from PIL import Image

from archive_bombs import (
    GiB,
    MiB,
    deflated,
    raw_zip,
    tar_header,
    tar_of_entries,
    targz_of_zeros,
    zeros_member,
    zip_directory_bomb,
    zip_of_zeros,
)
from lepton_model import digits

pytestmark = pytest.mark.slow

FUNCTION_DIR = Path(__file__).parents[3] / "functions" / "train"
MEMORY_LIMIT = int(1.2 * GiB)
SECONDS = 20.0  # per request, on 2 shared cores; most bombs take well under 2 s


def _nested() -> bytes:
    """A 3 GiB zip bomb stored as an image of the dataset."""
    return raw_zip([deflated("1/inner.png", zip_of_zeros("0/zeros.png", 3 * GiB))])


def _many_images() -> bytes:
    """12 000 copies of a 1x1 PNG (70 bytes each) that decode to 28x28x1 float32 (3 KiB)."""
    buffer = io.BytesIO()
    Image.new("L", (1, 1), 255).save(buffer, "PNG")
    pixel = buffer.getvalue()
    return raw_zip([deflated(f"{i % 2}/{i}.png", pixel) for i in range(12_000)])


# name: (builder, text the answer holds: the limit it names, or the reason)
BOMBS: dict[str, tuple[Callable[[], bytes], str]] = {
    "zeros.zip": (lambda: zip_of_zeros("0/zeros.png", 3 * GiB), "(max_member_bytes)"),
    "zeros.tar.gz": (lambda: targz_of_zeros("0/zeros.png", 3 * GiB), "(max_member_bytes)"),
    "understated.zip": (
        lambda: zip_of_zeros("0/zeros.png", 1 * GiB, declared=1000),
        "could not be decoded",
    ),
    "hidden.zip": (
        lambda: raw_zip([zeros_member("__MACOSX/0/._zeros.png", 3 * GiB)]),
        "(max_member_bytes)",
    ),
    "million.zip": (
        lambda: raw_zip([deflated("0/a.png", b"x")], zip64_entries=1_000_000),
        "(max_entries)",
    ),
    "directory.zip": (lambda: zip_directory_bomb(16 * MiB // 47), "(max_entries)"),
    "entries.tar.gz": (lambda: tar_of_entries(tar_header("0/._x.png"), 300_000), "(max_entries)"),
    "pax.tar.gz": (
        lambda: targz_of_zeros("././@PaxHeader", 3 * GiB, kind=tarfile.XHDTYPE),
        "(max_header_bytes)",
    ),
    "members.zip": (
        lambda: raw_zip([zeros_member(f"0/z{i}.png", 19 * MiB) for i in range(60)]),
        "(max_total_bytes)",
    ),
    "nested.zip": (_nested, "nested archives are not unpacked"),
    "big.zip": (lambda: bytes(40 * MiB), "(max_archive_bytes)"),
    "decoded.zip": (_many_images, "(max_decoded_bytes)"),
}


def vmhwm(pid: int) -> dict[int, int]:
    """VmHWM (bytes) of `pid` and every process below it."""
    peaks: dict[int, int] = {}
    pending = [pid]
    while pending:
        current = pending.pop()
        try:
            with open(f"/proc/{current}/status") as status:
                line = next(line for line in status if line.startswith("VmHWM:"))
            peaks[current] = int(line.split()[1]) * 1024
            for task in Path(f"/proc/{current}/task").iterdir():
                pending.extend(int(child) for child in (task / "children").read_text().split())
        except (FileNotFoundError, ProcessLookupError):
            continue
    return peaks


def small_dataset() -> bytes:
    """30 digit images, 3 classes: trains in seconds."""
    _, labels = digits.load_digits()
    chosen = np.concatenate([np.flatnonzero(labels == d)[:10] for d in range(3)])
    buffer = io.BytesIO()
    with zipfile.ZipFile(buffer, "w") as archive:
        for name, data in digits.digit_files(indices=chosen):
            archive.writestr(name, data)
    return buffer.getvalue()


def s3_event(bucket: str, key: str) -> dict[str, Any]:
    return {
        "Records": [
            {
                "eventSource": "aws:s3",
                "awsRegion": "us-east-1",
                "eventTime": "2026-11-26T10:00:00.000Z",
                "eventName": "ObjectCreated:Put",
                "s3": {"bucket": {"name": bucket}, "object": {"key": quote_plus(key, safe="/")}},
            }
        ]
    }


@pytest.fixture
def train_server(
    buckets: dict[str, str], moto_endpoint: str, serve_function, oidc
) -> tuple[int, str]:
    process, url = serve_function(
        FUNCTION_DIR,
        {
            **oidc.env("lepton-train"),
            "LEPTON_UPLOADS_BUCKET": buckets["uploads"],
            "LEPTON_RESULTS_BUCKET": buckets["results"],
            "LEPTON_MODELS_BUCKET": buckets["models"],
            "LEPTON_MIN_ACCURACY": "0",
            "LEPTON_TRAIN_EPOCHS": "1",
            # Smaller than the defaults only so that big.zip need not be 512 MiB, nor decoded.zip
            # 85 000 images (the default 256 MiB of decoded images takes 15 s to decode).
            "LEPTON_MAX_DATASET_BYTES": str(32 * MiB),
            "LEPTON_MAX_DATASET_DECODED_BYTES": str(32 * MiB),
            "LEPTON_WORKERS": "1",
        },
        role="train",
    )
    assert requests.get(f"{url}/health/liveness", timeout=5).ok
    return process.pid, url


def test_archive_bombs_are_answered_cleanly_in_bounded_time_and_memory(
    train_server: tuple[int, str], buckets: dict[str, str], oidc
) -> None:
    pid, url = train_server
    auth = oidc.headers("lepton-train")
    uploads = buckets["uploads"]
    client = boto3.client("s3")
    normal = small_dataset()
    for name, (build, _) in BOMBS.items():
        client.put_object(Bucket=uploads, Key=f"datasets/{name}", Body=build())
    client.put_object(Bucket=uploads, Key="datasets/normal.zip", Body=normal)
    started_at = max(vmhwm(pid).values())

    timings: dict[str, float] = {}
    for name, (_, expected) in BOMBS.items():
        key = f"datasets/{name}"
        started = time.monotonic()
        answer = requests.post(
            url, json={"dataset": f"s3://{uploads}/{key}"}, headers=auth, timeout=120
        )
        timings[f"http {name}"] = time.monotonic() - started
        assert answer.status_code == 422, (name, answer.text)
        assert answer.headers["Content-Type"] == "application/json"
        assert expected in json.dumps(answer.json()), (name, answer.text)

        started = time.monotonic()
        answer = requests.post(url, json=s3_event(uploads, key), headers=auth, timeout=120)
        timings[f"event {name}"] = time.monotonic() - started
        assert answer.status_code == 200, (name, answer.text)
        assert answer.headers["ce-type"] == "ai.lepton.training.failed"
        assert expected in answer.text, (name, answer.text)

    peaks = vmhwm(pid)
    print(f"\nVmHWM at start {started_at / MiB:.0f} MiB, after the bombs:", end=" ")
    print({p: f"{peak / MiB:.0f} MiB" for p, peak in peaks.items()})
    print({what: round(seconds, 2) for what, seconds in timings.items()})
    assert max(peaks.values()) < MEMORY_LIMIT
    slow = {what: seconds for what, seconds in timings.items() if seconds > SECONDS}
    assert not slow

    assert requests.get(f"{url}/health/readiness", timeout=5).ok
    trained = requests.post(
        url,
        json={"dataset": f"s3://{uploads}/datasets/normal.zip", "epochs": 1},
        headers=auth,
        timeout=300,
    )
    assert trained.status_code == 200, trained.text
    assert trained.json()["dataset"]["images"] == 30
    print(f"VmHWM after a normal training: {max(vmhwm(pid).values()) / MiB:.0f} MiB")
