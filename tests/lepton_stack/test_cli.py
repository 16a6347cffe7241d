"""The `lepton` command against no stack, a fake running stack (stack.json with this process
as the supervisor), fake function servers and a real moto server."""

from __future__ import annotations

import argparse
import io
import json
import os
import re
import subprocess
import sys
import threading
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import pytest
from stack_support import Answer, Subscriber, free_port

from lepton_stack.cli import main
from lepton_stack.stack import aws_client, provision
from lepton_stack.state import Ports, StackLayout, pid_alive, write_state

Run = Callable[..., tuple[int, str, str]]
NOT_RUNNING = "no local stack found"


@pytest.fixture
def lepton(layout: StackLayout, capsys: pytest.CaptureFixture[str]) -> Run:
    """Runs `lepton --state-dir <layout.root> ARGS...` in this process: (code, stdout, stderr)."""

    def run(*args: str) -> tuple[int, str, str]:
        capsys.readouterr()
        try:
            code = main(["--state-dir", str(layout.root), *args])
        except SystemExit as exc:
            code = exc.code if isinstance(exc.code, int) else 1
        out, err = capsys.readouterr()
        return code, out, err

    return run


def fake_state(layout: StackLayout, **overrides: Any) -> dict[str, Any]:
    """The stack.json a running stack writes, with this test process as its supervisor."""
    ports = layout.ports
    state: dict[str, Any] = {
        "status": "ready",
        "pid": os.getpid(),
        "s3_endpoint": layout.s3_endpoint,
        "region": "us-east-1",
        "access_key": "test",
        "secret_key": "test",
        "model": layout.model,
        "model_version": "20240101-000000-abcdef12",
        "buckets": {"uploads": layout.uploads, "results": layout.results, "models": layout.models},
        "functions": {"infer": layout.url(ports.infer), "train": layout.url(ports.train)},
        "router": f"http://127.0.0.1:{free_port()}",
        "queues": {},
        "dead_letters": str(layout.dead_letters),
        "logs": str(layout.logs),
        "parts": {},
    }
    state.update(overrides)
    write_state(layout, state)
    return state


@pytest.fixture
def image(tmp_path: Path) -> Path:
    path = tmp_path / "digit-3.png"
    path.write_bytes(b"\x89PNG\r\n\x1a\nnot really")
    return path


# -- no stack ------------------------------------------------------------------------------------


@pytest.mark.parametrize("command", [["env"], ["status"]])
def test_commands_need_a_running_stack(lepton: Run, command: list[str]) -> None:
    code, out, err = lepton(*command)
    assert code == 1
    assert out == ""
    assert err.startswith(f"lepton: {NOT_RUNNING}")
    assert "make run" in err and "lepton up --detach" in err


@pytest.mark.parametrize("command", ["predict", "put"])
def test_file_commands_need_a_running_stack(lepton: Run, image: Path, command: str) -> None:
    code, _, err = lepton(command, str(image))
    assert code == 1
    assert NOT_RUNNING in err and "lepton up --detach" in err


def test_train_needs_a_running_stack(lepton: Run, tmp_path: Path) -> None:
    code, _, err = lepton("train", str(tmp_path))
    assert code == 1
    assert NOT_RUNNING in err


def test_a_stack_whose_supervisor_is_gone_is_reported_as_not_running(
    lepton: Run, layout: StackLayout
) -> None:
    fake_state(layout, pid=None, status="stopped")
    code, _, err = lepton("env")
    assert code == 1
    assert "not running (its supervisor is gone)" in err


def test_down_without_a_stack_says_so_and_succeeds(lepton: Run) -> None:
    assert lepton("down")[:2] == (0, "No local stack is running.\n")


def test_down_after_the_stack_stopped_leaves_recorded_pids_alone(
    lepton: Run, layout: StackLayout
) -> None:
    # After a stop the pids in stack.json are stale: they may belong to other processes now.
    bystander = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(60)"])
    try:
        fake_state(layout, pid=None, parts={"infer": {"pid": bystander.pid, "restarts": 0}})
        assert lepton("down")[:2] == (0, "No local stack is running.\n")
        assert bystander.poll() is None
    finally:
        bystander.kill()
        bystander.wait(5)


def test_down_stops_a_running_supervisor(lepton: Run, layout: StackLayout) -> None:
    supervisor = subprocess.Popen(
        [sys.executable, "-c", "import time; print('up', flush=True); time.sleep(60)"],
        stdout=subprocess.PIPE,
    )
    try:
        assert supervisor.stdout is not None and supervisor.stdout.readline() == b"up\n"
        fake_state(layout, pid=supervisor.pid)
        code, out, _ = lepton("down")
        assert (code, out) == (0, "Stopped the local stack.\n")
        assert not pid_alive(supervisor.pid)
    finally:
        supervisor.kill()
        supervisor.wait(5)


def test_up_detach_passes_the_chosen_ports_to_the_background_stack(
    lepton: Run, layout: StackLayout, monkeypatch: pytest.MonkeyPatch
) -> None:
    started: list[list[str]] = []

    class Exited:
        pid = 1

        def __init__(self, command: list[str], **_: Any) -> None:
            started.append(command)

        def poll(self) -> int:
            return 1

    monkeypatch.setattr(subprocess, "Popen", Exited)
    code, _, err = lepton("up", "--detach", "--s3-port=14566", "--infer-port=18081")
    assert code == 1 and "the stack failed to start" in err
    (command,) = started
    assert command[command.index("up") :] == [
        "up",
        "--quiet",
        "--overlay=minio",
        "--s3-port=14566",
        "--router-port=8090",
        "--infer-port=18081",
        "--train-port=8082",
        "--webhook-port=8091",
    ]


def test_up_detach_that_fails_says_why_not_only_where_the_log_is(
    lepton: Run, layout: StackLayout, monkeypatch: pytest.MonkeyPatch
) -> None:
    layout.logs.mkdir(parents=True)
    (layout.logs / "stack.log").write_text("lepton: what went wrong the time before\n")

    class PortTaken:
        pid = 1

        def __init__(self, command: list[str], stdout: Any, **_: Any) -> None:
            stdout.write(b"Starting the Lepton functions stack ...\n")
            stdout.write(b"lepton: port 4566 (s3) is in use on 127.0.0.1\nStopping ...\n")
            stdout.flush()

        def poll(self) -> int:
            return 1

    monkeypatch.setattr(subprocess, "Popen", PortTaken)
    code, _, err = lepton("up", "--detach")

    assert code == 1
    assert "port 4566 (s3) is in use on 127.0.0.1" in err
    assert "the time before" not in err
    assert str(layout.logs / "stack.log") in err


def test_up_detach_when_ready_says_to_stop_it_with_down_not_ctrl_c(
    lepton: Run, layout: StackLayout, monkeypatch: pytest.MonkeyPatch
) -> None:
    class Ready:
        pid = os.getpid()

        def __init__(self, command: list[str], **_: Any) -> None:
            fake_state(layout, pid=self.pid)

        def poll(self) -> None:
            return None

    monkeypatch.setattr(subprocess, "Popen", Ready)
    code, out, _ = lepton("up", "--detach")

    assert code == 0 and "is live" in out
    (stop,) = [line for line in out.splitlines() if line.startswith("Stop:")]
    assert "lepton down" in stop and "Ctrl-C" not in stop


# -- env -----------------------------------------------------------------------------------------


def exports(out: str) -> dict[str, str]:
    lines = out.splitlines()
    assert lines and all(re.fullmatch(r"export [A-Z][A-Z0-9_]*=\S+", line) for line in lines)
    return dict(line.removeprefix("export ").split("=", 1) for line in lines)


def test_env_prints_export_lines_for_the_running_stack(lepton: Run, layout: StackLayout) -> None:
    fake_state(layout)
    code, out, _ = lepton("env")
    assert code == 0
    env = exports(out)
    assert env["AWS_ENDPOINT_URL_S3"] == env["AWS_ENDPOINT_URL"] == "http://127.0.0.1:4566"
    assert env["LEPTON_UPLOADS_BUCKET"] == "lepton-uploads"
    assert env["LEPTON_RESULTS_BUCKET"] == "lepton-results"
    assert env["LEPTON_MODELS_BUCKET"] == "lepton-models"
    assert env["LEPTON_MODEL_NAME"] == "digits"
    assert (env["AWS_ACCESS_KEY_ID"], env["AWS_REGION"]) == ("test", "us-east-1")


def test_env_follows_a_stack_started_on_other_ports_and_buckets(
    lepton: Run, layout: StackLayout
) -> None:
    fake_state(
        layout,
        s3_endpoint="http://127.0.0.1:14566",
        buckets={"uploads": "in", "results": "out", "models": "registry"},
        functions={"infer": "http://127.0.0.1:18081", "train": "http://127.0.0.1:18082"},
    )
    env = exports(lepton("env")[1])
    assert env["AWS_ENDPOINT_URL_S3"] == env["AWS_ENDPOINT_URL"] == "http://127.0.0.1:14566"
    assert (env["LEPTON_UPLOADS_BUCKET"], env["LEPTON_RESULTS_BUCKET"]) == ("in", "out")
    assert env["LEPTON_MODELS_BUCKET"] == "registry"


def test_env_uses_the_model_the_running_stack_serves(lepton: Run, layout: StackLayout) -> None:
    fake_state(layout, model="letters")
    assert exports(lepton("env")[1])["LEPTON_MODEL_NAME"] == "letters"


@pytest.mark.parametrize("role", ["infer", "train", "shell"])
def test_env_sets_no_port_so_a_function_served_by_hand_does_not_collide(
    lepton: Run, layout: StackLayout, role: str
) -> None:
    """`eval "$(lepton env)"; lepton serve infer` must not try to bind the stack's port."""
    fake_state(layout)
    assert "PORT" not in exports(lepton("env", role)[1])


def test_env_output_can_be_evaluated_by_a_shell(lepton: Run, layout: StackLayout) -> None:
    fake_state(layout, model="my model's")
    out = lepton("env", "shell")[1]
    shell = subprocess.run(
        ["bash", "-c", out + '\nprintf "%s|%s" "$LEPTON_MODEL_NAME" "$AWS_ENDPOINT_URL_S3"'],
        capture_output=True,
        text=True,
        check=True,
        env={"PATH": os.environ["PATH"]},
    )
    assert shell.stdout == "my model's|http://127.0.0.1:4566"


# -- logs ----------------------------------------------------------------------------------------


def write_logs(layout: StackLayout, **logs: str) -> None:
    layout.logs.mkdir(parents=True)
    for name, text in logs.items():
        (layout.logs / f"{name}.log").write_text(text)


def test_logs_prints_a_parts_log(lepton: Run, layout: StackLayout) -> None:
    write_logs(layout, router="line 1\nline 2\n", infer="other\n")
    assert lepton("logs", "router")[:2] == (0, "line 1\nline 2\n")


def test_logs_prints_the_last_lines_only(lepton: Run, layout: StackLayout) -> None:
    write_logs(layout, router="".join(f"line {i}\n" for i in range(100)))
    assert lepton("logs", "router", "-n", "2")[1] == "line 98\nline 99\n"


def test_logs_without_a_part_prints_every_log_with_a_header(
    lepton: Run, layout: StackLayout
) -> None:
    write_logs(layout, router="routed\n", infer="inferred\n")
    out = lepton("logs")[1]
    assert out == (
        f"==> {layout.logs / 'infer.log'} <==\ninferred\n"
        f"==> {layout.logs / 'router.log'} <==\nrouted\n"
    )


def test_logs_of_an_unknown_part_lists_the_parts(lepton: Run, layout: StackLayout) -> None:
    write_logs(layout, router="x\n", infer="y\n")
    code, _, err = lepton("logs", "nope")
    assert code == 1
    assert "no log nope.log; parts: infer, router" in err


def test_logs_before_any_stack_ran_says_so(lepton: Run) -> None:
    code, _, err = lepton("logs")
    assert code == 1
    assert "start the stack first" in err


# -- predict -------------------------------------------------------------------------------------

PREDICTION = {
    "predictions": [{"label": "3", "confidence": 0.973}, {"label": "8", "confidence": 0.02}],
    "model": {"name": "digits", "version": "v7"},
}


def json_answer(status: int, body: Any) -> Answer:
    return Answer(status, {"Content-Type": "application/json"}, json.dumps(body).encode())


def test_predict_posts_the_file_and_prints_the_best_label(
    lepton: Run, subscriber: Subscriber, image: Path
) -> None:
    subscriber.default = json_answer(200, PREDICTION)
    code, out, _ = lepton("predict", "--url", subscriber.url, str(image))
    assert (code, out) == (0, f"{image}: 3 (97.3%)  model digits@v7\n")
    (request,) = subscriber.received
    assert request.body == image.read_bytes()
    assert request.headers["Content-Type"] == "image/png"


def test_predict_model_names_the_model_in_the_request(
    lepton: Run, subscriber: Subscriber, image: Path
) -> None:
    subscriber.default = json_answer(200, PREDICTION)
    assert lepton("predict", "--model", "colours", "--url", subscriber.url, str(image))[0] == 0
    (request,) = subscriber.received
    assert request.path == "/?model=colours"


def test_predict_uses_the_running_stacks_inference_function(
    lepton: Run, layout: StackLayout, subscriber: Subscriber, image: Path
) -> None:
    fake_state(layout, functions={"infer": subscriber.url, "train": subscriber.url})
    subscriber.default = json_answer(200, PREDICTION)
    assert lepton("predict", str(image))[0] == 0
    assert len(subscriber.received) == 1


def test_predict_json_prints_one_object_per_file(
    lepton: Run, subscriber: Subscriber, image: Path
) -> None:
    subscriber.default = json_answer(200, PREDICTION)
    out = lepton("predict", "--json", "--url", subscriber.url, str(image), str(image))[1]
    lines = [json.loads(line) for line in out.splitlines()]
    assert [(line["file"], line["status"]) for line in lines] == [(str(image), 200)] * 2


def test_predict_reports_a_function_error_and_exits_1(
    lepton: Run, subscriber: Subscriber, image: Path
) -> None:
    subscriber.default = json_answer(
        422, {"error": {"code": "invalid_image", "message": "cannot decode"}}
    )
    code, out, _ = lepton("predict", "--url", subscriber.url, str(image))
    assert (code, out) == (1, f"{image}: error 422 invalid_image: cannot decode\n")


def test_predict_reports_a_missing_file_and_goes_on(
    lepton: Run, subscriber: Subscriber, image: Path, tmp_path: Path
) -> None:
    subscriber.default = json_answer(200, PREDICTION)
    code, out, err = lepton(
        "predict", "--url", subscriber.url, str(tmp_path / "no.png"), str(image)
    )
    assert code == 1
    assert "no.png: no such file" in err
    assert out.startswith(f"{image}: 3")


def test_predict_says_when_the_function_cannot_be_reached(lepton: Run, image: Path) -> None:
    url = f"http://127.0.0.1:{free_port()}"
    code, _, err = lepton("predict", "--url", url, str(image))
    assert code == 1
    assert f"cannot reach the inference function at {url}" in err


# -- against a real S3 + SQS endpoint (moto server) ----------------------------------------------


@pytest.fixture
def moto_layout(moto_server: str, tmp_path: Path) -> StackLayout:
    tag = uuid.uuid4().hex[:8]
    return StackLayout(
        root=tmp_path / ".lepton",
        ports=Ports(s3=int(urlsplit(moto_server).port or 0)),
        uploads=f"up-{tag}",
        results=f"res-{tag}",
        models=f"mod-{tag}",
        queue=f"events-{tag}",
    )


@pytest.fixture
def moto_stack(moto_layout: StackLayout) -> dict[str, Any]:
    """A provisioned stack on the moto server and a fake running state for it."""
    queues = provision(moto_layout)
    return fake_state(moto_layout, queues=queues)


@pytest.fixture
def moto_lepton(moto_layout: StackLayout, capsys: pytest.CaptureFixture[str]) -> Run:
    def run(*args: str) -> tuple[int, str, str]:
        capsys.readouterr()
        try:
            code = main(["--state-dir", str(moto_layout.root), *args])
        except SystemExit as exc:
            code = exc.code if isinstance(exc.code, int) else 1
        out, err = capsys.readouterr()
        return code, out, err

    return run


@pytest.fixture
def results_writer(moto_layout: StackLayout) -> Iterator[Callable[[dict[str, Any]], None]]:
    """Plays the inference function: writes `result` (plus the upload's etag) for every upload
    under images/ that has none yet."""
    stop = threading.Event()
    threads: list[threading.Thread] = []

    def start(result: dict[str, Any]) -> None:
        s3 = aws_client(moto_layout, "s3")

        def loop() -> None:
            done: set[str] = set()
            while not stop.wait(0.05):
                listing = s3.list_objects_v2(Bucket=moto_layout.uploads, Prefix="images/")
                for item in listing.get("Contents", []):
                    if item["Key"] in done:
                        continue
                    done.add(item["Key"])
                    body = {**result, "source": {"etag": item["ETag"].strip('"')}}
                    s3.put_object(
                        Bucket=moto_layout.results,
                        Key=f"{item['Key']}.json",
                        Body=json.dumps(body).encode(),
                    )

        thread = threading.Thread(target=loop, daemon=True)
        thread.start()
        threads.append(thread)

    yield start
    stop.set()
    for thread in threads:
        thread.join(5)


def test_put_uploads_the_files_under_images(
    moto_lepton: Run, moto_stack: dict[str, Any], moto_layout: StackLayout, image: Path
) -> None:
    code, out, _ = moto_lepton("put", str(image))
    assert (code, out) == (0, f"uploaded s3://{moto_layout.uploads}/images/{image.name}\n")
    head = aws_client(moto_layout, "s3").head_object(
        Bucket=moto_layout.uploads, Key=f"images/{image.name}"
    )
    assert head["ContentType"] == "image/png"


def test_put_refuses_two_files_that_would_be_one_upload_and_uploads_nothing(
    moto_lepton: Run, moto_stack: dict[str, Any], moto_layout: StackLayout, tmp_path: Path
) -> None:
    """A <label>/<image> folder often repeats names (circle/1.png, square/1.png): each file is
    uploaded as images/<its name>, so the second would replace the first, unreported."""
    for label in ("circle", "square"):
        (tmp_path / "fresh" / label).mkdir(parents=True)
        (tmp_path / "fresh" / label / "1.png").write_bytes(b"\x89PNG\r\n\x1a\n" + label.encode())

    code, out, err = moto_lepton("put", "--wait", "--timeout", "5", str(tmp_path / "fresh"))

    assert code == 1 and out == ""
    assert f"{tmp_path}/fresh/circle/1.png and {tmp_path}/fresh/square/1.png" in err
    assert "images/1.png" in err
    listing = aws_client(moto_layout, "s3").list_objects_v2(Bucket=moto_layout.uploads)
    assert listing.get("KeyCount") == 0


def test_put_wait_shows_each_result_as_it_lands(
    moto_lepton: Run,
    moto_stack: dict[str, Any],
    moto_layout: StackLayout,
    image: Path,
    results_writer: Callable[[dict[str, Any]], None],
) -> None:
    results_writer({"predictions": [{"label": "3", "confidence": 0.5}]})
    code, out, _ = moto_lepton("put", "--wait", "--timeout", "20", str(image))
    assert code == 0
    key = f"images/{image.name}"
    assert f"{key}: 3 (50.0%)  -> s3://{moto_layout.results}/{key}.json" in out


def test_put_wait_names_the_model_that_answered(
    moto_lepton: Run,
    moto_stack: dict[str, Any],
    moto_layout: StackLayout,
    image: Path,
    results_writer: Callable[[dict[str, Any]], None],
) -> None:
    """`--prefix images/shapes/` with no model of that name published is answered by the
    default model: the line says so."""
    results_writer(
        {
            "model": {"name": "digits", "version": "v3"},
            "predictions": [{"label": "3", "confidence": 0.5}],
        }
    )
    code, out, _ = moto_lepton(
        "put", "--wait", "--timeout", "20", "--prefix", "images/shapes/", str(image)
    )
    assert code == 0
    assert f"images/shapes/{image.name}: 3 (50.0%) [digits v3]  -> " in out


def test_put_wait_shows_a_failed_result_and_exits_1(
    moto_lepton: Run,
    moto_stack: dict[str, Any],
    image: Path,
    results_writer: Callable[[dict[str, Any]], None],
) -> None:
    results_writer({"error": {"code": "invalid_image", "message": "cannot decode"}})
    code, out, err = moto_lepton("put", "--wait", "--timeout", "20", str(image))
    assert code == 1
    assert f"images/{image.name}: failed: cannot decode" in out
    assert "1 of 1 image(s) could not be classified" in err


def test_put_wait_ignores_the_result_of_an_earlier_upload_and_times_out(
    moto_lepton: Run, moto_stack: dict[str, Any], moto_layout: StackLayout, image: Path
) -> None:
    aws_client(moto_layout, "s3").put_object(
        Bucket=moto_layout.results,
        Key=f"images/{image.name}.json",
        Body=json.dumps({"predictions": [], "source": {"etag": "old"}}).encode(),
    )
    code, _, err = moto_lepton("put", "--wait", "--timeout", "0.5", str(image))
    assert code == 1
    assert "1 result(s) did not land" in err


def test_status_shows_parts_models_queues_dead_letters_and_the_router(
    moto_lepton: Run, moto_stack: dict[str, Any], moto_layout: StackLayout
) -> None:
    dead = subprocess.Popen([sys.executable, "-c", "pass"])
    dead.wait(10)
    write_state(
        moto_layout,
        {
            **moto_stack,
            "parts": {
                "infer": {"pid": os.getpid(), "restarts": 2},
                "train": {"pid": dead.pid, "restarts": 0},
            },
        },
    )
    s3 = aws_client(moto_layout, "s3")
    model = moto_layout.model
    for version, accuracy in (("v1", 0.9), ("v2", 0.955)):
        s3.put_object(
            Bucket=moto_layout.models,
            Key=f"{model}/{version}/metadata.json",
            Body=json.dumps({"metrics": {"val_accuracy": accuracy}}).encode(),
        )
    s3.put_object(Bucket=moto_layout.models, Key=f"{model}/v3/model.tflite", Body=b"half-written")
    s3.put_object(
        Bucket=moto_layout.models,
        Key=f"{model}/latest.json",
        Body=json.dumps({"version": "v2"}).encode(),
    )
    s3.put_object(Bucket=moto_layout.models, Key="colours/latest.json", Body=b'{"version": "c4"}')
    moto_layout.dead_letters.mkdir(parents=True)
    (moto_layout.dead_letters / "20240101T000000-images-abc.json").write_text("{}")

    code, out, _ = moto_lepton("status")
    assert code == 0
    lines = out.splitlines()
    assert lines[0] == f"stack: ready (supervisor pid {os.getpid()})"
    assert re.search(rf"infer\s+up\s+pid {os.getpid()}\s+restarts 2", out)
    assert re.search(rf"train\s+DOWN\s+pid {dead.pid}\s+restarts 0", out)
    assert "  v1  val_accuracy 90.00%" in lines
    assert "  v2  val_accuracy 95.50%  <- live" in lines
    assert "  v3  (incomplete)" in lines
    assert (
        "model colours: live c4; uploads under images/colours/, `lepton predict --model colours`"
    ) in lines
    assert re.search(r"queue queue\s+waiting \d+\s+in flight 0", out)  # moto queues a TestEvent
    assert re.search(r"queue dlq\s+waiting 0\s+in flight 0", out)
    assert f"dead letters: 1 in {moto_layout.dead_letters}" in lines
    assert "  20240101T000000-images-abc.json" in lines
    assert lines[-1] == "router: not answering"


def test_status_shows_the_router_counters(
    moto_lepton: Run,
    moto_stack: dict[str, Any],
    moto_layout: StackLayout,
) -> None:
    from werkzeug.serving import make_server

    from lepton_stack.router import Router

    server = make_server("127.0.0.1", 0, Router([], {}))
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        write_state(moto_layout, {**moto_stack, "router": f"http://127.0.0.1:{server.port}"})
        out = moto_lepton("status")[1]
    finally:
        server.shutdown()
    assert out.splitlines()[-1] == "router: received 0, delivered {}, retries {}, dead-lettered {}"


# -- train ---------------------------------------------------------------------------------------


def test_train_refuses_something_that_is_not_a_folder(
    lepton: Run, layout: StackLayout, image: Path
) -> None:
    fake_state(layout)
    code, _, err = lepton("train", str(image))
    assert code == 2
    assert "is not a folder of <label>/<image> files" in err


@pytest.mark.parametrize(
    ("variable", "value", "limit"),
    [
        ("LEPTON_MAX_DATASET_ENTRIES", "3", "the entry count limit is 3 entries"),
        ("LEPTON_MAX_IMAGE_BYTES", "4", "the per-member unpacked size limit is 4 bytes"),
        ("LEPTON_MAX_DATASET_BYTES", "100", "the archive size limit is 100 bytes"),
    ],
)
def test_train_refuses_a_folder_beyond_the_dataset_limits_before_uploading(
    lepton: Run,
    layout: StackLayout,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    variable: str,
    value: str,
    limit: str,
) -> None:
    fake_state(layout)
    monkeypatch.setenv(variable, value)
    monkeypatch.setattr("lepton_stack.cli._s3", lambda state: pytest.fail("uploaded"))
    for label in ("0", "1"):
        (tmp_path / "set" / label).mkdir(parents=True)
        for index in range(5):  # the per-class minimum
            (tmp_path / "set" / label / f"{index}.png").write_bytes(b"12345")
    code, _, err = lepton("train", str(tmp_path / "set"))
    assert code == 2
    assert "is beyond the training function's dataset limits" in err
    assert limit in err


@pytest.mark.parametrize(
    ("option", "refusal"),
    [
        ("--epochs=0", "epochs must be between 1 and 1000"),
        ("--batch-size=0", "batch_size must be between 1 and 4096"),
        ("--learning-rate=-1", "learning_rate must be in (0, 1)"),
        ("--image-size=4000", "height and width must be between 4 and 1024 pixels"),
    ],
)
def test_train_refuses_options_the_training_function_would_refuse_before_uploading(
    lepton: Run,
    layout: StackLayout,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    option: str,
    refusal: str,
) -> None:
    """Exit 2, "the folder or options are wrong", and the dataset of that name left as it was."""
    fake_state(layout)
    monkeypatch.setattr("lepton_stack.cli._s3", lambda state: pytest.fail("uploaded"))
    for label in ("0", "1"):
        (tmp_path / "set" / label).mkdir(parents=True)
        (tmp_path / "set" / label / "a.png").write_bytes(b"12345")
    code, _, err = lepton("train", str(tmp_path / "set"), option)
    assert code == 2
    assert refusal in err


def test_predict_classifies_the_images_in_a_folder(
    lepton: Run, subscriber: Subscriber, tmp_path: Path
) -> None:
    folder = tmp_path / "pictures"
    (folder / "more").mkdir(parents=True)
    for name in ("b.png", "a.jpg", "more/c.png", ".hidden.png", "notes.txt"):
        (folder / name).write_bytes(name.encode())
    subscriber.default = json_answer(200, PREDICTION)

    code, out, _ = lepton("predict", "--url", subscriber.url, str(folder))

    assert code == 0
    assert [line.split(":")[0] for line in out.splitlines()] == [
        str(folder / "a.jpg"),
        str(folder / "b.png"),
        str(folder / "more" / "c.png"),
    ]
    assert [r.body for r in subscriber.received] == [b"a.jpg", b"b.png", b"more/c.png"]


def test_a_stopped_stack_is_named_as_such_not_a_connection_trace(
    lepton: Run, layout: StackLayout, tmp_path: Path
) -> None:
    image = tmp_path / "x.png"
    image.write_bytes(b"x")
    fake_state(layout, s3_endpoint="http://127.0.0.1:9")

    code, _, err = lepton("put", str(image))

    assert code == 1
    assert "cannot reach the local stack at http://127.0.0.1:9" in err
    assert "Max retries" not in err


def test_every_subcommand_has_a_description_and_every_option_a_help() -> None:
    from lepton_stack.cli import build_parser

    parser = build_parser()
    (sub,) = [a for a in parser._actions if isinstance(a, argparse._SubParsersAction)]
    for name, command in sub.choices.items():
        assert command.description, f"{name} has no description"
        for action in command._actions:
            if action.help == argparse.SUPPRESS or isinstance(action, argparse._HelpAction):
                continue
            assert action.help, f"{name} {action.option_strings or action.dest} has no help"
            if action.option_strings and action.default not in (None, False):
                assert str(action.default).rstrip("/") in action.help or "default" in action.help


def test_models_lists_every_model_its_live_version_accuracy_and_plots(
    moto_lepton: Run, moto_stack: dict[str, Any], moto_layout: StackLayout
) -> None:
    s3 = aws_client(moto_layout, "s3")

    def publish(model: str, version: str, accuracy: float, shape: list[int], live: bool) -> None:
        meta = {"metrics": {"test_accuracy": accuracy}, "input_shape": shape, "labels": ["a", "b"]}
        s3.put_object(
            Bucket=moto_layout.models,
            Key=f"{model}/{version}/metadata.json",
            Body=json.dumps(meta).encode(),
        )
        if live:
            s3.put_object(
                Bucket=moto_layout.models,
                Key=f"{model}/latest.json",
                Body=json.dumps({"version": version}).encode(),
            )

    publish("digits", "v1", 0.9, [28, 28, 1], live=False)
    publish("digits", "v2", 0.985, [28, 28, 1], live=True)
    publish("colours", "v1", 1.0, [40, 40, 3], live=True)

    code, out, _ = moto_lepton("models")

    assert code == 0
    lines = out.splitlines()
    assert "colours  (1 version(s); live: v1)" in lines
    assert "digits  (2 version(s); live: v2)" in lines
    assert "  v2  test accuracy 98.50%  input 28x28x1  2 labels  <- live" in lines
    assert "  v1  test accuracy 100.00%  input 40x40x3  2 labels  <- live" in lines
    assert f"  plot: s3://{moto_layout.models}/digits/v2/training_curves.png" in lines
    assert (
        "  served: POST /?model=colours, POST /v1/models/colours:predict, "
        "uploads under images/colours/"
    ) in lines


def test_a_second_up_reports_the_running_stack_and_writes_nothing(
    lepton: Run, layout: StackLayout
) -> None:
    """The first stack holds the state dir's lock; a second `up` (make run again) must not
    rewrite stack.json to stopped, as it once did."""
    from lepton_stack.state import StackLock

    fake_state(layout)
    holder = StackLock(layout)
    holder.acquire()
    try:
        before = layout.state_file.read_bytes()
        for args in (("up",), ("up", "--detach")):
            code, out, _ = lepton(*args)
            assert code == 0
            assert "already running here" in out and "left alone" in out
            assert layout.state_file.read_bytes() == before
    finally:
        holder.release()


def test_the_state_dir_lock_dies_with_its_holder(layout: StackLayout, tmp_path: Path) -> None:
    from lepton_stack.state import StackLock, StackRunningError

    script = (
        "import sys, time; from pathlib import Path; from lepton_stack.state import StackLayout,"
        " StackLock; lock = StackLock(StackLayout(root=Path(sys.argv[1]))); lock.acquire();"
        " print('held', flush=True); time.sleep(60)"
    )
    holder = subprocess.Popen(
        [sys.executable, "-c", script, str(layout.root)], stdout=subprocess.PIPE, text=True
    )
    try:
        assert holder.stdout is not None and holder.stdout.readline().strip() == "held"
        with pytest.raises(StackRunningError):
            StackLock(layout).acquire()
    finally:
        holder.kill()  # kill -9: no clean-up runs
        holder.wait()
    lock = StackLock(layout)
    lock.acquire()
    lock.release()


def test_reset_forgets_what_a_stopped_stack_kept_and_refuses_while_it_runs(
    lepton: Run, layout: StackLayout
) -> None:
    from lepton_stack.state import StackLock

    (layout.buckets / "lepton-models" / "digits").mkdir(parents=True)
    holder = StackLock(layout)
    holder.acquire()
    try:
        code, _, err = lepton("reset")
        assert code == 1 and "stop it first" in err
        assert layout.buckets.exists()
    finally:
        holder.release()

    code, out, _ = lepton("reset")
    assert code == 0 and "starts clean" in out
    assert not layout.buckets.exists()


class _ClosedTerminal(io.TextIOBase):
    """stdout once the terminal is gone: a `| tee` that the same Ctrl-C ended, a closed window."""

    def write(self, text: str) -> int:
        raise BrokenPipeError(32, "Broken pipe")


class _StackInterruptedWithItsTerminal:
    """Plays LocalStack for `lepton up`: ready at once, then Ctrl-C takes the terminal with it."""

    shut_down = False

    def __init__(self, layout: StackLayout) -> None:
        from lepton_stack.state import StackLock

        self.lock = StackLock(layout)
        self.model_version, self.model_accuracy = "20240101-000000-abcdef12", None

    def start(self, progress: Callable[[str], None]) -> None:
        progress("every part is up")

    def run(self) -> None:
        sys.stdout = _ClosedTerminal()
        raise KeyboardInterrupt

    def shutdown(self) -> None:
        type(self).shut_down = True
        self.lock.release()


def test_up_still_stops_its_stack_when_ctrl_c_closed_its_output(
    lepton: Run, monkeypatch: pytest.MonkeyPatch
) -> None:
    """`make run | tee run.log`, then Ctrl-C: the stop (the buckets kept once more, stack.json
    written) is not skipped for the "Stopping ..." line that can no longer be printed."""
    monkeypatch.setattr("lepton_runtime.logs.configure", lambda *_: None)
    monkeypatch.setattr("lepton_stack.stack.write_samples", lambda layout: [])
    monkeypatch.setattr("lepton_stack.stack.LocalStack", _StackInterruptedWithItsTerminal)
    monkeypatch.setattr(sys, "stdout", sys.stdout)  # put back after the test

    lepton("up")

    assert _StackInterruptedWithItsTerminal.shut_down
