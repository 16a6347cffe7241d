"""A newcomer's first hour, walked as one: a fresh state dir, the README's commands in order, then
the obvious next steps, asserting what they would see.

`lepton up --detach` (what `make run` does in the foreground), a second `up` while it runs, their
own colour dataset trained from a folder with no flags, the new model used by name beside the
untouched digits, a stop and a start that keep both, and exit codes that say what happened.
Every command is the real `lepton` in a subprocess, as a person types it.
"""

from __future__ import annotations

import base64
import json
import os
import socket
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import requests

from colour_shapes import HUES, colour_files, colour_image

pytestmark = pytest.mark.slow


def _free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


def _without_plots(listing: str) -> list[str]:
    """`lepton models` without its plot lines (an S3 URI until the bucket is kept on disk)."""
    return [line for line in listing.splitlines() if "plot: " not in line]


class Newcomer:
    """Runs `lepton` commands in a fresh state dir on free ports, as a person would."""

    def __init__(self, root: Path) -> None:
        self.root = root
        self.ports = {name: _free_port() for name in ("s3", "router", "infer", "train", "webhook")}
        self.env = {**os.environ, "LEPTON_STATE_DIR": str(root / ".lepton")}
        self.env.pop("PROMETHEUS_MULTIPROC_DIR", None)

    def lepton(self, *args: str, timeout: float = 900) -> subprocess.CompletedProcess:
        return subprocess.run(
            [sys.executable, "-m", "lepton_stack.cli", *args],
            cwd=self.root,
            env=self.env,
            capture_output=True,
            text=True,
            timeout=timeout,
        )

    def up(self) -> subprocess.CompletedProcess:
        ports = [f"--{name}-port={port}" for name, port in self.ports.items()]
        return self.lepton("up", "--detach", *ports)

    def state(self) -> dict[str, Any]:
        return json.loads((self.root / ".lepton" / "stack.json").read_text())

    def predict(self, model: str, images: list[bytes]) -> list[str]:
        """Best labels from the public route, the model chosen by name (a form of images)."""
        url = f"http://127.0.0.1:{self.ports['infer']}/?model={model}"
        files = [("image", (f"{i}.png", data, "image/png")) for i, data in enumerate(images)]
        answer = requests.post(url, files=files, timeout=60)
        assert answer.status_code == 200, answer.text
        assert answer.json()["model"]["name"] == model
        return [prediction["label"] for prediction in answer.json()["predictions"]]

    def predict_v1(self, model: str, image: bytes) -> list[float]:
        """Class probabilities from the model's KServe V1 route, as KServe's client asks."""
        return self.predict_v1_batch(model, [image])[0]

    def predict_v1_batch(self, model: str, images: list[bytes]) -> list[list[float]]:
        url = f"http://127.0.0.1:{self.ports['infer']}/v1/models/{model}:predict"
        body = {"instances": [{"b64": base64.b64encode(image).decode()} for image in images]}
        answer = requests.post(url, json=body, timeout=60)
        assert answer.status_code == 200, answer.text
        return answer.json()["predictions"]

    def labels_of(self, model: str) -> list[str]:
        url = f"http://127.0.0.1:{self.ports['infer']}/v1/models/{model}"
        return requests.get(url, timeout=60).json()["labels"]


@pytest.fixture(scope="module")
def newcomer(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Newcomer]:
    person = Newcomer(tmp_path_factory.mktemp("newcomer"))
    started = person.up()
    assert started.returncode == 0, started.stdout + started.stderr
    assert "is live" in started.stdout
    yield person
    person.lepton("down", timeout=120)


@pytest.fixture(scope="module")
def colours_folder(newcomer: Newcomer) -> Path:
    folder = newcomer.root / "colours"
    for name, data in colour_files(per_class=40, seed=1):
        path = folder / name
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(data)
    return folder


def test_the_ready_banner_names_the_live_model_and_its_accuracy(newcomer: Newcomer) -> None:
    status = newcomer.lepton("models")
    assert status.returncode == 0
    assert "digits" in status.stdout and "<- live" in status.stdout
    assert "test accuracy" in status.stdout


def test_a_second_up_reports_the_running_stack_and_leaves_it_alone(newcomer: Newcomer) -> None:
    before = newcomer.state()

    again = newcomer.up()

    assert again.returncode == 0
    assert f"already running here (pid {before['pid']}," in again.stdout
    assert newcomer.state() == before
    assert newcomer.lepton("status").returncode == 0
    assert requests.get(before["functions"]["infer"] + "/health/readiness", timeout=5).ok


def test_a_colour_folder_trains_in_colour_with_no_flags(
    newcomer: Newcomer, colours_folder: Path
) -> None:
    trained = newcomer.lepton("train", str(colours_folder))

    assert trained.returncode == 0, trained.stdout + trained.stderr
    assert "model 'colours'" in trained.stdout
    assert "RGB" in trained.stdout and "now live" in trained.stdout


def test_the_colour_model_is_served_by_name_on_fresh_images(
    newcomer: Newcomer, colours_folder: Path
) -> None:
    rng = np.random.default_rng(12345)  # images the training never saw
    names = list(HUES)
    truth = [names[i % len(names)] for i in range(80)]
    images = [colour_image(HUES[name], rng) for name in truth]

    labels = newcomer.labels_of("colours")
    rows = [
        row
        for start in range(0, 80, 20)
        for row in newcomer.predict_v1_batch("colours", images[start : start + 20])
    ]
    predicted = [labels[int(np.argmax(row))] for row in rows]

    accuracy = float(np.mean([p == t for p, t in zip(predicted, truth, strict=True)]))
    print(f"\ncolours on 80 fresh images through /v1/models/colours:predict: {accuracy:.1%}")
    assert accuracy >= 0.95, accuracy
    assert newcomer.predict("colours", images[:8]) == predicted[:8]  # POST /?model= agrees


def test_the_digits_are_untouched_by_the_new_model(newcomer: Newcomer) -> None:
    sample = newcomer.root / ".lepton" / "samples" / "digit-3.png"
    assert newcomer.predict("digits", [sample.read_bytes()]) == ["3"]
    assert int(np.argmax(newcomer.predict_v1("digits", sample.read_bytes()))) == 3
    assert len(newcomer.predict_v1("colours", sample.read_bytes())) == len(HUES)
    plain = newcomer.lepton("predict", str(sample))
    assert plain.returncode == 0 and ": 3 (" in plain.stdout


def test_exit_codes_say_what_happened(newcomer: Newcomer) -> None:
    one_label = newcomer.root / "one-label" / "red"
    one_label.mkdir(parents=True)
    (one_label / "a.png").write_bytes(colour_files(per_class=1)[0][1])

    assert newcomer.lepton("train", str(one_label.parent)).returncode == 2
    assert newcomer.lepton("predict", str(newcomer.root / "missing.png")).returncode == 1
    assert newcomer.lepton("train", "--help").returncode == 0


def test_models_and_results_survive_down_and_up_without_retraining(newcomer: Newcomer) -> None:
    before = newcomer.lepton("models").stdout
    digits_version = newcomer.state()["model_version"]

    assert newcomer.lepton("down", timeout=120).returncode == 0
    assert newcomer.lepton("status").returncode != 0
    again = newcomer.up()

    assert again.returncode == 0, again.stdout + again.stderr
    assert "training the first model" not in again.stdout
    assert newcomer.state()["model_version"] == digits_version
    after = newcomer.lepton("models").stdout
    assert _without_plots(after) == _without_plots(before)
    plots = [line.split("plot: ", 1)[1] for line in after.splitlines() if "plot: " in line]
    assert plots and all(Path(plot).is_file() for plot in plots)  # kept under .lepton/
    rng = np.random.default_rng(7)
    assert newcomer.predict("colours", [colour_image(HUES["blue"], rng)]) == ["blue"]
