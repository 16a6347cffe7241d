"""Real clients of both protocols against a real `lepton serve infer`: Triton's HTTP client
(`tritonclient[http]`, a dev dependency) for the Open Inference Protocol (V2), and KServe's own
`InferenceRESTClient` for V1 and V2.

KServe's client comes with the whole `kserve` package (FastAPI, pandas, Kubernetes, a protobuf
older than TensorFlow's), so it is not a dependency of this project: its check runs in the
virtualenv of the bench's KServe peer, which `make test` installs first (bench/peers.py).
"""

from __future__ import annotations

import base64
import json
import subprocess
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import tritonclient.http as triton
from tritonclient.utils import InferenceServerException

from inference_server import ROOT, serve_inference

pytestmark = pytest.mark.slow

MODEL = "digits"
KSERVE_PYTHON = Path.home() / ".cache" / "lepton-bench" / "peers" / "kserve" / "bin" / "python"


@pytest.fixture(scope="module")
def served(moto_server: str, model_dir: Path, tmp_path_factory, oidc) -> Iterator[dict[str, Any]]:
    cache = tmp_path_factory.mktemp("cache")
    env = oidc.env("lepton-infer")  # served as deployed: events verified
    with serve_inference(moto_server, model_dir, cache, prefix="clients", env=env) as served:
        yield served


@pytest.fixture(scope="module")
def client(served) -> Iterator[triton.InferenceServerClient]:
    client = triton.InferenceServerClient(url=served["url"].removeprefix("http://"))
    yield client
    client.close()


def test_triton_client_sees_a_live_ready_server_and_model(client) -> None:
    assert client.is_server_live()
    assert client.is_server_ready()
    assert client.is_model_ready(MODEL)
    assert client.is_model_ready(MODEL, model_version="v1")
    assert not client.is_model_ready(MODEL, model_version="v9")
    assert client.get_server_metadata()["name"] == "lepton-infer"
    metadata = client.get_model_metadata(MODEL)
    assert metadata["inputs"][0]["datatype"] == "FP32"
    assert metadata["outputs"][0]["name"] == "probabilities"


@pytest.mark.parametrize("binary", [True, False], ids=["binary", "json"])
def test_triton_client_infers_encoded_images_as_bytes(client, digit_png, binary) -> None:
    images = [digit_png[d] for d in (0, 6, 9)]
    tensor = triton.InferInput("image", [len(images)], "BYTES")
    # JSON cannot carry raw bytes: there, each element is the image in base64.
    elements = images if binary else [base64.b64encode(i) for i in images]
    tensor.set_data_from_numpy(np.array(elements, dtype=np.object_), binary_data=binary)
    output = triton.InferRequestedOutput("probabilities", binary_data=binary)
    result = client.infer(MODEL, [tensor], outputs=[output], request_id="abc")
    probabilities = result.as_numpy("probabilities")
    assert probabilities.shape == (3, 10)
    assert list(probabilities.argmax(axis=1)) == [0, 6, 9]
    assert result.get_response()["id"] == "abc"


@pytest.mark.parametrize("binary", [True, False], ids=["binary", "json"])
def test_triton_client_infers_fp32_tensors(client, digit_png, model_dir, binary) -> None:
    from lepton_model.classifier import load_classifier

    classifier = load_classifier(model_dir, "litert")
    batch = np.stack([classifier.decode(digit_png[d]) for d in (2, 3)]).astype(np.float32)
    tensor = triton.InferInput("image", list(batch.shape), "FP32")
    tensor.set_data_from_numpy(batch, binary_data=binary)
    probabilities = client.infer(MODEL, [tensor]).as_numpy("probabilities")
    assert list(probabilities.argmax(axis=1)) == [2, 3]


def test_triton_client_gets_v2_errors(client) -> None:
    tensor = triton.InferInput("image", [1], "BYTES")
    tensor.set_data_from_numpy(np.array([b"not an image"], dtype=np.object_))
    with pytest.raises(InferenceServerException, match="not a recognised image"):
        client.infer(MODEL, [tensor])
    with pytest.raises(InferenceServerException, match="no model named 'cats' is published"):
        client.infer("cats", [tensor])


def test_kserve_client_v1_and_v2(served, digit_png, tmp_path) -> None:
    assert KSERVE_PYTHON.exists(), (
        f"no {KSERVE_PYTHON}: `make test` installs KServe's client there "
        "(`python bench/peers.py kserve`)"
    )
    image = tmp_path / "digit.png"
    image.write_bytes(digit_png[3])
    done = subprocess.run(
        [
            str(KSERVE_PYTHON),
            str(ROOT / "bench" / "kserve_client_check.py"),
            served["url"],
            MODEL,
            str(image),
        ],
        capture_output=True,
        text=True,
        timeout=120,
    )
    checks = json.loads(done.stdout)["checks"]
    failed = [check for check in checks if not check["ok"]]
    assert not failed, failed
    assert len(checks) >= 12
