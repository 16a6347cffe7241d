"""Fixtures of the image tests: a container engine, both images built once, a published model.

The images are built with `containers/build.sh` (what `make images` runs), by default with
OFFLINE=1: a debootstrap base image (cached under ~/.cache/lepton) and wheels resolved on this
machine, so the build needs no registry. LEPTON_TEST_OFFLINE=0 builds from the default base
image and package index instead. Without podman, or docker with a reachable daemon, every test
here is skipped, with the reason.
"""

from __future__ import annotations

import json
import os
import shlex
import shutil
import socket
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import boto3
import numpy as np
import pytest

# The suite runs with --import-mode=importlib, which puts no test folder on sys.path: make the
# helper module importable (here and in the test module) under its unique name.
sys.path.insert(0, str(Path(__file__).parent))

from images_support import Images, PublishedModel, RunningContainer

REPO = Path(__file__).resolve().parents[2]
IMAGE_REPO = "localhost/lepton-test"
IMAGE_TAG = "test"
MODEL_NAME = "digits"
MODEL_VERSION = "20250101-000000-c0ffee00"
MODELS_BUCKET = "lepton-test-models"
TINY_CLASSES = (0, 1, 2)
BUILD_TIMEOUT = 1800


def _engine() -> str | None:
    for engine in ("podman", "docker"):
        if shutil.which(engine) is None:
            continue
        probe = subprocess.run([engine, "info"], capture_output=True, check=False, timeout=60)
        if probe.returncode == 0:
            return engine
    return None


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


@pytest.fixture(scope="session")
def container_engine() -> str:
    engine = _engine()
    if engine is None:
        hint = (
            " (a docker client is installed, but no daemon answers)"
            if shutil.which("docker")
            else ""
        )
        pytest.skip(
            "no container engine to build and run the images: podman, or docker with a "
            f"reachable daemon, is needed{hint}; .ci/install-container-tools.sh installs podman"
        )
    return engine


@pytest.fixture(scope="session")
def report(request: pytest.FixtureRequest) -> Callable[[str], None]:
    """Writes a measurement to the terminal even while output is captured (CI logs)."""
    plugins = request.config.pluginmanager
    reporter = plugins.get_plugin("terminalreporter")
    capture = plugins.get_plugin("capturemanager")

    def write(line: str) -> None:
        if reporter is None or capture is None:
            print(line)
            return
        with capture.global_and_fixture_disabled():
            reporter.write_line(f"[images] {line}")

    return write


class _Build:
    """containers/build.sh (what `make images` runs), started as soon as the session has
    collected an image test: the build (minutes, mostly waiting on I/O) overlaps the tests that
    run before these, instead of adding to the suite's time."""

    process: subprocess.Popen | None = None
    output: Any = None
    started = 0.0

    @classmethod
    def start(cls, engine: str) -> None:
        env = {
            **os.environ,
            "CONTAINER_ENGINE": engine,
            "IMAGE_REPO": IMAGE_REPO,
            "IMAGE_TAG": IMAGE_TAG,
            "OFFLINE": os.environ.get("LEPTON_TEST_OFFLINE", "1"),
        }
        cls.output = tempfile.TemporaryFile(mode="w+")  # noqa: SIM115 - read in wait()
        cls.started = time.monotonic()
        cls.process = subprocess.Popen(
            # At the lowest CPU priority: the build only has to finish before the image tests
            # (last), while the tests running meanwhile include latency bounds.
            ["nice", "-n", "19", str(REPO / "containers" / "build.sh"), "all"],
            cwd=REPO,
            env=env,
            stdout=cls.output,
            stderr=subprocess.STDOUT,
            text=True,
        )

    @classmethod
    def wait(cls, engine: str) -> tuple[int, str, float]:
        """(exit code, output, seconds since the build started)."""
        if cls.process is None:
            cls.start(engine)
        assert cls.process is not None and cls.output is not None
        code = cls.process.wait(BUILD_TIMEOUT)
        cls.output.seek(0)
        return code, cls.output.read(), time.monotonic() - cls.started


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    """The image tests last: their build then overlaps every other test."""
    here = Path(__file__).parent
    items.sort(key=lambda item: here in Path(item.path).parents)


def pytest_collection_finish(session: pytest.Session) -> None:
    here = Path(__file__).parent
    if session.config.option.collectonly:
        return
    if any(here in Path(item.path).parents for item in session.items):
        engine = _engine()
        if engine is not None:
            _Build.start(engine)


def pytest_sessionfinish(session: pytest.Session) -> None:
    """A session that ends before the image tests (-x, Ctrl-C) leaves no build behind."""
    if _Build.process is not None and _Build.process.poll() is None:
        _Build.process.terminate()
        try:
            _Build.process.wait(30)
        except subprocess.TimeoutExpired:
            _Build.process.kill()


@pytest.fixture(scope="session")
def images(container_engine: str, report: Callable[[str], None]) -> Images:
    """Both function images, built once per session through containers/build.sh."""
    code, output, elapsed = _Build.wait(container_engine)
    assert code == 0, f"image build failed:\n{output[-6000:]}"
    report(f"built both images with {container_engine} in {elapsed:.0f} s (started at collection)")
    return Images(
        container_engine,
        f"{IMAGE_REPO}/infer:{IMAGE_TAG}",
        f"{IMAGE_REPO}/train:{IMAGE_TAG}",
        elapsed,
    )


@pytest.fixture(scope="session")
def published_model(moto_server: str, tmp_path_factory: pytest.TempPathFactory) -> PublishedModel:
    """A tiny CNN trained here, exported, and published in the moto server as the live
    version: model.tflite and metadata.json under <model>/<version>/, then latest.json."""
    from lepton_model import datasets, digits, training
    from lepton_model.artifacts import export_artifact
    from lepton_model.spec import ModelSpec
    from lepton_model.training import TrainingConfig

    _, all_labels = digits.load_digits()
    indices = np.concatenate([np.flatnonzero(all_labels == label)[:12] for label in TINY_CLASSES])
    files = digits.digit_files(indices=indices)
    dataset = datasets.from_files(files)
    spec = ModelSpec(num_classes=len(TINY_CLASSES), filters=(4, 8), dense_units=16)
    trained = training.train(dataset, spec, TrainingConfig(epochs=3, batch_size=8))
    directory = tmp_path_factory.mktemp("published-model")
    metadata = export_artifact(
        trained, directory, MODEL_NAME, MODEL_VERSION, dataset.digest, plots=False
    )

    s3 = boto3.client(
        "s3",
        endpoint_url=moto_server,
        region_name="us-east-1",
        aws_access_key_id="testing",
        aws_secret_access_key="testing",
    )
    s3.create_bucket(Bucket=MODELS_BUCKET)
    for filename in ("model.tflite", "metadata.json"):
        s3.put_object(
            Bucket=MODELS_BUCKET,
            Key=f"{MODEL_NAME}/{MODEL_VERSION}/{filename}",
            Body=(directory / filename).read_bytes(),
        )
    s3.put_object(
        Bucket=MODELS_BUCKET,
        Key=f"{MODEL_NAME}/latest.json",
        Body=json.dumps({"version": MODEL_VERSION}).encode(),
        ContentType="application/json",
    )
    sample_name, sample_png = files[0]
    return PublishedModel(
        endpoint=moto_server,
        bucket=MODELS_BUCKET,
        name=MODEL_NAME,
        version=MODEL_VERSION,
        labels=tuple(metadata.labels),
        sample_png=sample_png,
        sample_label=sample_name.split("/")[0],
    )


@pytest.fixture
def run_container(images: Images) -> Iterator:
    """Starts an image like its Knative Service: non-root, read-only root filesystem with a
    /tmp, no capabilities, no privilege escalation; on the host network so it reaches the moto
    server on 127.0.0.1. Containers are removed after the test."""
    started_ids: list[str] = []

    def run(image: str, env: dict[str, str], command: list[str] | None = None) -> RunningContainer:
        port = free_port()
        args = [
            images.engine,
            "run",
            "--detach",
            "--network=host",
            "--read-only",
            "--tmpfs=/tmp:rw,size=256m",
            "--cap-drop=ALL",
            "--security-opt=no-new-privileges",
            "--env",
            f"PORT={port}",
        ]
        for name, value in env.items():
            args += ["--env", f"{name}={value}"]
        args.append(image)
        args += command or []
        started = time.monotonic()
        result = subprocess.run(args, capture_output=True, text=True, check=False, timeout=120)
        assert result.returncode == 0, result.stderr
        container_id = result.stdout.strip()
        started_ids.append(container_id)
        return RunningContainer(
            images.engine, container_id, f"http://127.0.0.1:{port}", started, shlex.join(args)
        )

    yield run
    for container_id in started_ids:
        subprocess.run(
            [images.engine, "rm", "--force", container_id],
            capture_output=True,
            check=False,
        )


@pytest.fixture
def function_env(published_model: PublishedModel) -> dict[str, str]:
    """What the ConfigMap and the Secret give a function, pointed at the moto server."""
    return {
        "AWS_ENDPOINT_URL": published_model.endpoint,
        "AWS_REGION": "us-east-1",
        "AWS_ACCESS_KEY_ID": "testing",
        "AWS_SECRET_ACCESS_KEY": "testing",
        "LEPTON_MODELS_BUCKET": published_model.bucket,
        "LEPTON_MODEL_NAME": published_model.name,
        "LEPTON_LOG_LEVEL": "INFO",
        # These tests send images and training JSON from outside any cluster, with no issuer
        # to sign for them; verification is tested in tests/lepton_runtime/test_auth.py.
        "LEPTON_EVENT_AUTH": "off",
    }
