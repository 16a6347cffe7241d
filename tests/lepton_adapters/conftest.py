"""Fixtures for the adapters: the dead-letter sink as its own process."""

from __future__ import annotations

import os
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from typing import Any

import boto3
import pytest
import requests


@pytest.fixture
def dead_letter_sink_process(moto_server: str) -> Iterator[dict[str, Any]]:
    """`python -m lepton_adapters.dead_letter_sink` on a free port, storing into a moto
    server's results bucket; yields {"process", "url"} once it answers; SIGTERM after."""
    results = f"dls-{os.getpid()}-{time.monotonic_ns()}"
    boto3.client("s3", endpoint_url=moto_server).create_bucket(Bucket=results)
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    env = {
        **os.environ,
        "AWS_ENDPOINT_URL": moto_server,
        "HOST": "127.0.0.1",
        "PORT": str(port),
        "LEPTON_RESULTS_BUCKET": results,
        "LEPTON_LOG_LEVEL": "WARNING",
    }
    process = subprocess.Popen(
        [sys.executable, "-m", "lepton_adapters.dead_letter_sink"],
        env=env,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    url = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + 30
        while True:
            try:
                if requests.get(f"{url}/health/readiness", timeout=1).ok:
                    break
            except requests.ConnectionError:
                pass
            assert time.monotonic() < deadline, "the dead-letter sink never answered"
            time.sleep(0.1)
        yield {"process": process, "url": url}
    finally:
        process.terminate()
        try:
            process.wait(10)
        except subprocess.TimeoutExpired:
            process.kill()
