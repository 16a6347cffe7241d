"""The stack's layout, state file and liveness checks."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest
from stack_support import wait_for

from lepton_stack.state import (
    Ports,
    StackLayout,
    StackNotRunningError,
    pid_alive,
    read_state,
    running_state,
    write_state,
)


def proc_state(pid: int) -> str:
    return Path(f"/proc/{pid}/stat").read_text().split(")")[-1].split()[0]


def test_state_round_trips_and_leaves_no_temporary_file(layout: StackLayout) -> None:
    write_state(layout, {"pid": 12, "buckets": {"uploads": "u"}})
    assert read_state(layout) == {"pid": 12, "buckets": {"uploads": "u"}}
    assert sorted(p.name for p in layout.root.iterdir()) == ["stack.json"]


def test_reading_a_missing_state_says_how_to_start_a_stack(layout: StackLayout) -> None:
    with pytest.raises(StackNotRunningError, match="lepton up --detach") as raised:
        read_state(layout)
    assert str(layout.state_file) in str(raised.value)


def test_running_state_of_a_live_supervisor(layout: StackLayout) -> None:
    write_state(layout, {"pid": os.getpid(), "status": "ready"})
    assert running_state(layout)["status"] == "ready"


@pytest.mark.parametrize("pid", [None, 0])
def test_a_stopped_stack_is_not_running(layout: StackLayout, pid: int | None) -> None:
    write_state(layout, {"pid": pid})
    with pytest.raises(StackNotRunningError, match="supervisor is gone"):
        running_state(layout)


def test_a_stack_whose_supervisor_died_is_not_running(layout: StackLayout) -> None:
    child = subprocess.Popen([sys.executable, "-c", "pass"])
    child.wait(10)
    write_state(layout, {"pid": child.pid})
    with pytest.raises(StackNotRunningError, match="supervisor is gone"):
        running_state(layout)


def test_pid_alive_for_this_process() -> None:
    assert pid_alive(os.getpid()) is True


@pytest.mark.parametrize("pid", [None, 0])
def test_pid_alive_without_a_pid(pid: int | None) -> None:
    assert pid_alive(pid) is False


def test_pid_alive_is_false_for_a_zombie() -> None:
    child = subprocess.Popen([sys.executable, "-c", "pass"])
    try:
        wait_for(lambda: proc_state(child.pid) == "Z")  # exited, not reaped yet
        assert pid_alive(child.pid) is False
    finally:
        child.wait(10)


def test_pid_alive_is_false_for_a_reaped_process() -> None:
    child = subprocess.Popen([sys.executable, "-c", "pass"])
    child.wait(10)
    assert pid_alive(child.pid) is False


def test_layout_paths_live_under_the_root(tmp_path: Path) -> None:
    layout = StackLayout(root=tmp_path, ports=Ports(s3=1234))
    assert layout.state_file == tmp_path / "stack.json"
    assert (layout.logs, layout.dead_letters) == (tmp_path / "logs", tmp_path / "dead-letters")
    assert layout.s3_endpoint == "http://127.0.0.1:1234"


def test_function_env_points_a_function_at_the_stack(layout: StackLayout) -> None:
    env = layout.function_env("infer")
    assert env["AWS_ENDPOINT_URL_S3"] == env["AWS_ENDPOINT_URL"] == "http://127.0.0.1:4566"
    assert (env["LEPTON_UPLOADS_BUCKET"], env["LEPTON_RESULTS_BUCKET"]) == (
        "lepton-uploads",
        "lepton-results",
    )
    assert (env["LEPTON_MODELS_BUCKET"], env["LEPTON_MODEL_NAME"]) == ("lepton-models", "digits")
    assert env["PORT"] == "8081"
    assert env["LEPTON_MODEL_CACHE_DIR"] == str(layout.root / "cache" / "infer")
    assert layout.function_env("train")["PORT"] == "8082"


def test_the_event_source_sends_to_the_router_and_reads_the_queue(layout: StackLayout) -> None:
    env = layout.function_env("source", "http://127.0.0.1:4566/000000000000/q")
    assert env["K_SINK"] == "http://127.0.0.1:8090/"
    assert env["LEPTON_SQS_QUEUE_URL"] == "http://127.0.0.1:4566/000000000000/q"
    assert env["LEPTON_WEBHOOK_PORT"] == "8091"
    assert "PORT" not in env
