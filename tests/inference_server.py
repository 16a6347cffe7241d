"""A real `lepton serve infer` (2 workers) on a free port, serving a model published in a moto
server: what the end-to-end inference tests run against."""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import boto3
import requests

ROOT = Path(__file__).resolve().parents[1]


@contextmanager
def serve_inference(
    moto_server: str,
    model_dir: Path,
    cache_dir: Path,
    prefix: str = "served",
    env: Mapping[str, str] | None = None,
) -> Iterator[dict[str, Any]]:
    """Publish `model_dir` as digits v1 in buckets named `<prefix>-*`, start the function (with
    `env` added to its environment) and yield {"process", "url", "port", "moto"} once both
    workers hold the model; SIGTERM after."""
    credentials = {
        "AWS_ACCESS_KEY_ID": "testing",
        "AWS_SECRET_ACCESS_KEY": "testing",
        "AWS_REGION": "us-east-1",
    }
    s3 = boto3.client(
        "s3",
        endpoint_url=moto_server,
        region_name="us-east-1",
        aws_access_key_id="testing",
        aws_secret_access_key="testing",
    )
    bucket = f"{prefix}-models"
    for name in (bucket, f"{prefix}-uploads", f"{prefix}-results"):
        s3.create_bucket(Bucket=name)
    for path in model_dir.iterdir():
        s3.put_object(Bucket=bucket, Key=f"digits/v1/{path.name}", Body=path.read_bytes())
    s3.put_object(Bucket=bucket, Key="digits/latest.json", Body=b'{"version": "v1"}')
    port = _free_port()
    env = {
        **os.environ,
        **credentials,
        **(env or {}),
        "PORT": str(port),
        "AWS_ENDPOINT_URL": moto_server,
        "LEPTON_MODELS_BUCKET": bucket,
        "LEPTON_UPLOADS_BUCKET": f"{prefix}-uploads",
        "LEPTON_RESULTS_BUCKET": f"{prefix}-results",
        "LEPTON_MODEL_CACHE_DIR": str(cache_dir),
        "LEPTON_WORKERS": "2",
        "LEPTON_LOG_LEVEL": "WARNING",
    }
    env.pop("PROMETHEUS_MULTIPROC_DIR", None)
    command = [sys.executable, "-m", "lepton_stack.cli", "serve", "infer"]
    process = subprocess.Popen(
        [*command, "--function-dir", str(ROOT / "functions" / "infer")],
        env=env,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    url = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + 60
        while not _ready(url):
            assert time.monotonic() < deadline, "the function never became ready"
            time.sleep(0.2)
        time.sleep(1.0)  # both workers load their model
        yield {"process": process, "url": url, "port": port, "moto": moto_server}
    finally:
        process.send_signal(signal.SIGTERM)
        try:
            process.wait(15)
        except subprocess.TimeoutExpired:
            process.kill()


def _free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


def _ready(url: str) -> bool:
    try:
        return requests.get(f"{url}/health/readiness", timeout=2).status_code == 200
    except requests.ConnectionError:
        return False
