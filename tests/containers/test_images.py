"""The function images, built for real and run like their Knative Services.

Slow: the first build makes a debootstrap base image and resolves every wheel (minutes); later
builds reuse cached layers, and a code change rebuilds only the small project layer.
"""

from __future__ import annotations

import json
import subprocess
import time
from collections.abc import Callable
from typing import Any

import pytest
import requests
from images_support import Images, PublishedModel, RunningContainer

pytestmark = [pytest.mark.slow, pytest.mark.timeout(1800)]

STARTUP_TIMEOUT = 60.0
MAX_INFER_IMAGE_BYTES = 450 * 1024 * 1024

RunContainer = Callable[..., RunningContainer]
Report = Callable[[str], None]


def in_image(images: Images, image: str, code: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [images.engine, "run", "--rm", "--network=none", image, "python", "-c", code],
        capture_output=True,
        text=True,
        check=False,
        timeout=300,
    )


def inspect(images: Images, image: str) -> dict[str, Any]:
    result = subprocess.run(
        [images.engine, "image", "inspect", image],
        capture_output=True,
        text=True,
        check=True,
    )
    return json.loads(result.stdout)[0]


def image_bytes(images: Images, image: str) -> int:
    return int(inspect(images, image)["Size"])


def first_success(
    container: RunningContainer, attempt: Callable[[], requests.Response | None]
) -> tuple[requests.Response, float]:
    """Polls `attempt` until it answers 200; returns the answer and seconds since `run`."""
    deadline = time.monotonic() + STARTUP_TIMEOUT
    while time.monotonic() < deadline:
        try:
            response = attempt()
        except (requests.ConnectionError, requests.Timeout):
            response = None
        if response is not None and response.status_code == 200:
            return response, time.monotonic() - container.started
        time.sleep(0.05)
    pytest.fail(f"no success within {STARTUP_TIMEOUT} s; container log:\n{container.logs()}")


def test_inference_image_holds_lepton_model_and_no_tensorflow(images: Images) -> None:
    code = (
        "import importlib.util as u, lepton_model, lepton_runtime, ai_edge_litert;"
        "assert u.find_spec('tensorflow') is None, 'tensorflow found'"
    )
    result = in_image(images, images.infer, code)
    assert result.returncode == 0, result.stderr


def test_inference_image_is_small(images: Images, report: Report) -> None:
    size = image_bytes(images, images.infer)
    report(f"{images.infer}: {size / 1e6:.0f} MB")
    assert size < MAX_INFER_IMAGE_BYTES


def test_training_image_holds_tensorflow_and_the_job_command(
    images: Images, report: Report
) -> None:
    code = (
        "import tensorflow, matplotlib, lepton_model.training;"
        "from lepton_runtime.entry import build_parser;"
        "build_parser().parse_args(['train-job'])"
    )
    result = in_image(images, images.train, code)
    report(f"{images.train}: {image_bytes(images, images.train) / 1e6:.0f} MB")
    assert result.returncode == 0, result.stderr


@pytest.mark.parametrize("role", ["infer", "train"])
def test_images_run_as_a_numeric_non_root_user(images: Images, role: str) -> None:
    config = inspect(images, getattr(images, role))["Config"]
    assert config["User"] == "10001:10001"
    assert config["Cmd"] == ["lepton-function", "serve", role]


def test_inference_container_predicts_with_the_published_model(
    images: Images,
    run_container: RunContainer,
    function_env: dict[str, str],
    published_model: PublishedModel,
    report: Report,
) -> None:
    container = run_container(images.infer, function_env)

    def predict() -> requests.Response:
        return requests.post(
            container.url + "/",
            data=published_model.sample_png,
            headers={"Content-Type": "image/png"},
            timeout=5,
        )

    response, seconds = first_success(container, predict)
    size = image_bytes(images, images.infer)
    report(
        f"{images.infer} ({size / 1e6:.0f} MB): `{images.engine} run` -> first prediction "
        f"in {seconds:.2f} s\n  {container.command}"
    )
    body = response.json()
    assert body["model"] == {"name": published_model.name, "version": published_model.version}
    (prediction,) = body["predictions"]
    assert prediction["label"] in published_model.labels


def test_inference_container_is_unready_until_a_model_loads(
    images: Images, run_container: RunContainer, function_env: dict[str, str]
) -> None:
    env = {**function_env, "LEPTON_MODEL_NAME": "never-published"}
    container = run_container(images.infer, env)
    first_success(container, lambda: requests.get(container.url + "/health/liveness", timeout=2))
    readiness = requests.get(container.url + "/health/readiness", timeout=2)
    assert readiness.status_code == 503


def test_inference_container_stops_cleanly_on_sigterm(
    images: Images,
    run_container: RunContainer,
    function_env: dict[str, str],
) -> None:
    container = run_container(images.infer, function_env)
    first_success(container, lambda: requests.get(container.url + "/health/liveness", timeout=2))
    started = time.monotonic()
    subprocess.run(
        [images.engine, "stop", "--time=20", container.container_id], check=True, timeout=60
    )
    stopped_in = time.monotonic() - started
    state = inspect_container(images, container.container_id)["State"]
    assert state["ExitCode"] == 0, container.logs()
    assert stopped_in < 10, "SIGTERM was ignored until the engine killed the process"


def test_training_container_becomes_ready(
    images: Images, run_container: RunContainer, function_env: dict[str, str], report: Report
) -> None:
    container = run_container(images.train, function_env)
    _, seconds = first_success(
        container, lambda: requests.get(container.url + "/health/readiness", timeout=2)
    )
    report(f"{images.train}: `{images.engine} run` -> ready in {seconds:.2f} s")


def test_dead_letter_command_runs_in_the_inference_image(
    images: Images, run_container: RunContainer, function_env: dict[str, str]
) -> None:
    container = run_container(
        images.infer, function_env, command=["python", "-m", "lepton_adapters.dead_letter_sink"]
    )
    first_success(container, lambda: requests.get(container.url + "/health/readiness", timeout=2))
    response = requests.post(
        container.url + "/",
        data=json.dumps({"reason": "test"}),
        headers={
            "Content-Type": "application/json",
            "ce-specversion": "1.0",
            "ce-id": "dead-1",
            "ce-source": "/test",
            "ce-type": "ai.lepton.inference.failed",
            "ce-knativeerrorcode": "500",
        },
        timeout=10,
    )
    assert response.status_code == 202


def inspect_container(images: Images, container_id: str) -> dict[str, Any]:
    result = subprocess.run(
        [images.engine, "container", "inspect", container_id],
        capture_output=True,
        text=True,
        check=True,
    )
    return json.loads(result.stdout)[0]
