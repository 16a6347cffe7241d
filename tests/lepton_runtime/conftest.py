"""Fixtures for the function runtime tests."""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest
import requests

from s3_fault_proxy import FaultyS3Proxy

ServeFunction = Callable[..., tuple[subprocess.Popen, str]]


def _free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


@pytest.fixture
def serve_function() -> Iterator[ServeFunction]:
    """Start `lepton serve <role>` on a function folder and a free port, as its container does
    (`module="lepton_runtime.entry"`: `lepton-function serve`, what the image runs); returns
    (process, base URL) once /health/liveness answers. Stopped with SIGTERM afterwards."""
    started: list[subprocess.Popen] = []

    def start(
        function_dir: Path,
        env: dict[str, str] | None = None,
        output: int | None = None,
        role: str = "infer",
        module: str = "lepton_stack.cli",
    ) -> tuple[subprocess.Popen, str]:
        port = _free_port()
        environment = {**os.environ, **(env or {}), "PORT": str(port)}
        environment.pop("PROMETHEUS_MULTIPROC_DIR", None)
        process = subprocess.Popen(
            [
                sys.executable,
                "-m",
                module,
                "serve",
                role,
                "--function-dir",
                str(function_dir),
            ],
            env=environment,
            stdout=subprocess.DEVNULL if output is None else output,
            stderr=subprocess.STDOUT if output is not None else subprocess.DEVNULL,
        )
        started.append(process)
        url = f"http://127.0.0.1:{port}"
        deadline = time.monotonic() + 30
        while time.monotonic() < deadline:
            try:
                if requests.get(f"{url}/health/liveness", timeout=1).ok:
                    break
            except requests.ConnectionError:
                time.sleep(0.1)
        return process, url

    yield start
    for process in started:
        if process.poll() is None:
            process.send_signal(signal.SIGTERM)
            try:
                process.wait(15)
            except subprocess.TimeoutExpired:
                process.kill()


@pytest.fixture
def proxy(moto_server: str) -> Iterator[FaultyS3Proxy]:
    """A proxy in front of the moto server that records requests and fails or holds chosen
    ones (a process started with its URL as endpoint meets the faults)."""
    server = FaultyS3Proxy(moto_server)
    yield server
    server.close()
