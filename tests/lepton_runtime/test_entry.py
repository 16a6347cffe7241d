"""`lepton-function`, what the function images run: it needs nothing of the development stack."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
# What only the CLI and the local stack use (the `stack` extra): never loaded by a function.
DEV_ONLY = ("lepton_stack", "yaml", "jsonpatch", "isodate", "tqdm", "moto", "jsonschema")


# What a request handed to main(context) (or an event) needs: never on the way to the inference
# function's first prediction, imported in the background once it serves.
LATER = ("flask", "werkzeug", "parliament", "jinja2", "jwt", "cloudevents")
_INFER = (
    "import lepton_runtime.entry, lepton_runtime.http.workers; "
    "import runpy; runpy.run_path('functions/infer/func.py')"
)


def _modules_after(code: str, **env: str) -> set[str]:
    probe = f"{code}\nimport json, sys\nprint(json.dumps(sorted(sys.modules)))"
    settings = {"LEPTON_EVENT_AUTH": "off", "AWS_REGION": "us-east-1", **env}
    env_code = f"import os; os.environ.update({settings!r}); " + probe.replace("\n", "; ")
    done = subprocess.run(
        [sys.executable, "-c", env_code], capture_output=True, text=True, timeout=120, cwd=ROOT
    )
    assert done.returncode == 0, done.stderr
    return {name.split(".")[0] for name in json.loads(done.stdout.splitlines()[-1])}


@pytest.mark.parametrize(
    "code",
    [
        "import runpy; runpy.run_path('functions/infer/func.py')",
        "import runpy; runpy.run_path('functions/train/func.py')",
        "import lepton_runtime.entry, lepton_runtime.http.workers, lepton_runtime.training.job",
        "import lepton_adapters.event_source, lepton_adapters.dead_letter_sink",
    ],
    ids=["infer", "train", "entry", "adapters"],
)
def test_what_ships_in_an_image_imports_nothing_of_the_dev_stack(code: str) -> None:
    loaded = _modules_after(code)
    assert not loaded & set(DEV_ONLY)


def test_the_inference_function_starts_without_what_only_main_or_events_need() -> None:
    assert not _modules_after(_INFER) & set(LATER)


def test_with_event_authentication_on_pyjwt_waits_for_the_first_event() -> None:
    loaded = _modules_after(
        _INFER,
        LEPTON_EVENT_AUTH="oidc",
        LEPTON_OIDC_ISSUER="https://issuer.example",
        LEPTON_OIDC_AUDIENCE="lepton-infer",
        LEPTON_OIDC_JWKS="https://issuer.example/keys",
    )
    assert "jwt" not in loaded


def test_the_warm_up_imports_what_main_needs_in_the_background() -> None:
    loaded = _modules_after(
        "from lepton_runtime.http.server import warm_up; warm_up(delay=0).join(60)"
    )
    assert {"flask", "werkzeug", "parliament", "cloudevents"} <= loaded


def test_the_entry_point_parses_what_the_images_and_jobsink_run() -> None:
    from lepton_runtime.entry import JOBSINK_EVENT_FILE, build_parser

    assert build_parser().parse_args(["serve", "infer"]).role == "infer"
    assert build_parser().parse_args(["train-job"]).event_file == JOBSINK_EVENT_FILE


def test_a_function_folder_without_func_py_exits_2(tmp_path: Path) -> None:
    done = subprocess.run(
        [sys.executable, "-m", "lepton_runtime.entry", "serve", "infer", "--function-dir", "."],
        capture_output=True,
        text=True,
        timeout=60,
        cwd=tmp_path,
        env={"PATH": "/usr/bin:/bin", "LEPTON_EVENT_AUTH": "off"},
    )
    assert done.returncode == 2
    assert "func.py not found" in done.stderr


def test_the_inference_functions_start_path_imports_no_boto3() -> None:
    """boto3 and botocore (~0.3 s with the client) load on the first S3 request, which a
    prefetched model puts after the first prediction (inference/prefetch.py)."""
    loaded = _modules_after(
        "import lepton_runtime.entry, lepton_runtime.http.workers, runpy; "
        "runpy.run_path('functions/infer/func.py')"
    )
    assert not loaded & {"boto3", "botocore", "s3transfer"}


@pytest.mark.parametrize(("role", "prefetches"), [("infer", True), ("train", False)])
def test_only_the_inference_role_prefetches_its_model(
    monkeypatch: pytest.MonkeyPatch, role: str, prefetches: bool
) -> None:
    from lepton_runtime import entry
    from lepton_runtime.http import processes, workers
    from lepton_runtime.inference.prefetch import Prefetch

    started: list[str] = []
    closed: list[str] = []
    handed: list[object] = []

    class FakePrefetch:
        def close(self) -> None:
            closed.append(role)

    monkeypatch.setattr(
        Prefetch, "start", classmethod(lambda cls, s: started.append(role) or FakePrefetch())
    )
    monkeypatch.setattr(
        workers, "serve", lambda folder, settings, prefetch=None: handed.append(prefetch)
    )
    monkeypatch.setattr(entry, "configure_logging", lambda settings: None)
    monkeypatch.setattr(processes, "quiet_collector", lambda: None)  # keep this process's gc
    monkeypatch.setenv("LEPTON_EVENT_AUTH", "off")

    assert entry.serve(role, str(ROOT / "functions" / role)) == 0

    assert started == ([role] if prefetches else [])
    assert closed == started  # the child is always reaped, whatever serve did
    assert (handed[0] is not None) is prefetches
