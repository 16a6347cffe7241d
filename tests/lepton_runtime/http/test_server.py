"""The function server: parliament's app with honest readiness, metrics, V1 routes, $PORT and
a SIGTERM drain."""

from __future__ import annotations

import io
import json
import logging
import signal
import socket
import subprocess
import textwrap
import threading
import time
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import pytest
import requests
from cloudevents.http import CloudEvent

from asgi_client import ASGITestClient
from lepton_runtime.events.outbound import binary_http
from lepton_runtime.http.server import _OneWrite, build_app
from lepton_runtime.logs import RequestLog
from lepton_runtime.metrics import FunctionMetrics
from lepton_runtime.settings import Settings


class FakeService:
    def __init__(self) -> None:
        self.is_ready = False
        self.metrics = FunctionMetrics("test")
        self.contexts: list[Any] = []

    def ready(self) -> bool:
        return self.is_ready

    def start(self) -> None: ...

    def stop(self) -> None: ...


@pytest.fixture
def fake() -> FakeService:
    return FakeService()


@pytest.fixture
def client(fake: FakeService):
    def main(context: Any) -> Any:
        fake.contexts.append(context)
        return {"path": context.request.path}

    func = SimpleNamespace(main=main, service=fake)
    return ASGITestClient(build_app(func, Settings.from_env({})))


def test_readiness_is_503_until_the_function_is_ready(client, fake) -> None:
    assert client.get("/health/readiness").status_code == 503
    fake.is_ready = True
    assert client.get("/health/readiness").status_code == 200


def test_liveness_is_ok_before_readiness(client) -> None:
    assert client.get("/health/liveness").status_code == 200


def test_metrics_are_served_in_prometheus_text_format(client, fake) -> None:
    fake.metrics.request("image", 200, 0.01)
    response = client.get("/metrics")
    assert response.status_code == 200
    assert response.content_type.startswith("text/plain")
    assert b"lepton_requests_total" in response.data


def test_v1_model_routes_reach_main(client, fake) -> None:
    assert client.post("/v1/models/digits:predict", json={}).get_json() == {
        "path": "/v1/models/digits:predict"
    }
    assert client.get("/v1/models/digits").status_code == 200


def test_plain_post_reaches_main_without_event_or_warning(client, fake, caplog) -> None:
    with caplog.at_level(logging.WARNING):
        client.post("/", data=b"\x89PNG", headers={"Content-Type": "image/png"})
    assert fake.contexts[-1].cloud_event is None
    assert "No CloudEvent available" not in caplog.text


def test_binary_cloudevent_reaches_main_with_decoded_attributes(client, fake) -> None:
    event = CloudEvent({"type": "t", "source": "s", "subject": "images/cat 1.png"}, {"a": 1})
    headers, body = binary_http(event)
    client.post("/", data=body, headers=headers)
    assert fake.contexts[-1].cloud_event["subject"] == "images/cat 1.png"
    assert fake.contexts[-1].cloud_event.get_data() == {"a": 1}


def test_unknown_path_is_a_json_404(client) -> None:
    response = client.post("/nothing/here", data=b"x")
    assert response.status_code == 404
    assert response.get_json()["error"]["code"] == "not_found"


def test_wrong_method_is_a_json_405(client) -> None:
    response = client.put("/", data=b"x")
    assert response.status_code == 405
    assert response.get_json()["error"]["code"] == "method_not_allowed"


def test_body_over_the_limit_never_reaches_main_as_a_crash(fake) -> None:
    func = SimpleNamespace(main=lambda context: context.request.get_data(), service=fake)
    app = build_app(func, Settings.from_env({"LEPTON_MAX_BODY_BYTES": "10"}))
    response = ASGITestClient(app).post("/", data=b"x" * 100)
    assert response.status_code == 413


@pytest.fixture
def slow_function(tmp_path: Path) -> Path:
    folder = tmp_path / "slow"
    folder.mkdir()
    (folder / "func.py").write_text(
        textwrap.dedent("""
        import time

        def main(context):
            time.sleep(float(context.request.args.get("sleep", "0")))
            return "done"
    """)
    )
    return folder


@pytest.mark.slow
def test_sigterm_finishes_the_request_in_flight_then_exits(
    slow_function: Path, serve_function
) -> None:
    process, url = serve_function(slow_function, output=subprocess.PIPE)
    answers: list[requests.Response] = []
    request = threading.Thread(
        target=lambda: answers.append(requests.post(f"{url}/?sleep=1.5", timeout=10))
    )
    request.start()
    time.sleep(0.5)
    process.send_signal(signal.SIGTERM)
    request.join()
    code = process.wait(timeout=10)
    assert answers and answers[0].status_code == 200
    assert answers[0].text == "done"
    assert code == 0


class _Cycle:
    """What _OneWrite sees of uvicorn's RequestResponseCycle."""

    def __init__(self) -> None:
        raw = SimpleNamespace(writes=[], closed=False)
        raw.write = raw.writes.append
        raw.close = lambda: setattr(raw, "closed", True)
        self.transport = raw
        self.response_started = False
        self.completed = 0
        self.on_response = lambda: setattr(self, "completed", self.completed + 1)


def test_a_response_head_goes_out_with_its_body_in_one_write() -> None:
    cycle = _Cycle()
    sent = cycle.transport.writes
    _OneWrite(cycle)
    cycle.transport.write(b"HTTP/1.1 100 Continue\r\n\r\n")  # before the response: at once
    assert sent == [b"HTTP/1.1 100 Continue\r\n\r\n"]
    cycle.response_started = True
    cycle.transport.write(b"HTTP/1.1 200 OK\r\n\r\n")
    assert len(sent) == 1
    cycle.transport.write(b"body")
    cycle.transport.write(b"more")
    assert sent[1:] == [b"HTTP/1.1 200 OK\r\n\r\nbody", b"more"]
    cycle.on_response()
    assert cycle.completed == 1


def test_a_head_without_body_is_sent_when_the_response_completes_or_closes() -> None:
    for finish in ("on_response", "close"):
        cycle = _Cycle()
        sent, raw = cycle.transport.writes, cycle.transport
        _OneWrite(cycle)
        cycle.response_started = True
        cycle.transport.write(b"HTTP/1.1 204 No Content\r\n\r\n")
        assert sent == []
        getattr(cycle, finish)() if finish == "on_response" else cycle.transport.close()
        assert sent == [b"HTTP/1.1 204 No Content\r\n\r\n"]
        assert raw.closed == (finish == "close")


@pytest.fixture
def echo_function(tmp_path: Path) -> Path:
    folder = tmp_path / "echo"
    folder.mkdir()
    (folder / "func.py").write_text("def main(context):\n    return context.request.get_data()\n")
    return folder


def _http(sock: socket.socket, until: bytes, count: int = 1) -> bytes:
    data = b""
    while data.count(until) < count:
        chunk = sock.recv(65536)
        if not chunk:
            break
        data += chunk
    return data


@pytest.mark.slow
def test_real_server_answers_head_pipelined_and_100_continue_requests(
    echo_function: Path, serve_function
) -> None:
    _, url = serve_function(echo_function, env={"LEPTON_WORKERS": "1"})
    port = int(url.rsplit(":", 1)[1])
    with socket.create_connection(("127.0.0.1", port), timeout=10) as sock:
        sock.sendall(b"HEAD / HTTP/1.1\r\nHost: x\r\n\r\n")
        head = _http(sock, b"\r\n\r\n")
        assert head.startswith(b"HTTP/1.1 200") and head.endswith(b"\r\n\r\n")
        # Two requests in one segment: two answers, in order.
        sock.sendall(
            b"POST / HTTP/1.1\r\nHost: x\r\nContent-Length: 3\r\n\r\none"
            b"POST / HTTP/1.1\r\nHost: x\r\nContent-Length: 3\r\n\r\ntwo"
        )
        both = _http(sock, b"HTTP/1.1 200", 2)
        while not both.endswith(b"two"):
            both += sock.recv(65536)
        assert both.index(b"one") < both.index(b"two")
        # A client waiting for 100 Continue gets it before it sends the body.
        sock.sendall(
            b"POST / HTTP/1.1\r\nHost: x\r\nContent-Length: 5\r\nExpect: 100-continue\r\n\r\n"
        )
        assert _http(sock, b"\r\n\r\n").startswith(b"HTTP/1.1 100 Continue")
        sock.sendall(b"hello")
        answer = _http(sock, b"hello")
        assert answer.startswith(b"HTTP/1.1 200") and answer.endswith(b"hello")


@pytest.mark.slow
def test_a_stopping_server_writes_the_request_lines_it_still_holds(
    echo_function: Path, serve_function
) -> None:
    process, url = serve_function(
        echo_function,
        env={"LEPTON_WORKERS": "1", "LEPTON_ACCESS_LOG_FLUSH_SECONDS": "30"},
        output=subprocess.PIPE,
    )
    for index in range(5):
        assert requests.post(f"{url}/v1/models/m{index}", data=b"x", timeout=10).ok
    process.send_signal(signal.SIGTERM)  # the lines are held for 30 s: the stop writes them
    assert process.wait(timeout=15) == 0
    lines = [json.loads(line) for line in process.stdout.read().splitlines() if line[:1] == b"{"]
    paths = [line["path"] for line in lines if line.get("message") == "request"]
    assert paths == [f"/v1/models/m{index}" for index in range(5)]


# --- request log --------------------------------------------------------------------------------


@pytest.fixture
def request_lines(caplog: pytest.LogCaptureFixture) -> io.StringIO:
    caplog.set_level(logging.INFO, logger="lepton.access")
    return io.StringIO()


def _lines(stream: io.StringIO) -> list[dict[str, Any]]:
    return [json.loads(line) for line in stream.getvalue().splitlines()]


def _logged_client(main: Any, stream: io.StringIO, env: dict[str, str] | None = None):
    func = SimpleNamespace(main=main, service=None)
    return ASGITestClient(build_app(func, Settings.from_env(env or {}), RequestLog(stream)))


def test_every_request_to_main_logs_one_json_line_with_status_and_latency(request_lines) -> None:
    client = _logged_client(lambda context: {"ok": True}, request_lines)

    client.post("/", data=b"x")
    client.get("/v1/models/digits")

    lines = _lines(request_lines)
    assert [(x["method"], x["path"], x["status"]) for x in lines] == [
        ("POST", "/", 200),
        ("GET", "/v1/models/digits", 200),
    ]
    assert all(isinstance(x["ms"], float) and x["ms"] >= 0 for x in lines)
    assert {(x["logger"], x["level"], x["message"]) for x in lines} == {
        ("lepton.access", "info", "request")
    }
    assert all(x["time"].endswith("Z") and len(x["time"]) == 24 for x in lines)


def test_a_refused_body_is_logged_with_its_status(request_lines) -> None:
    client = _logged_client(lambda context: {}, request_lines, {"LEPTON_MAX_BODY_BYTES": "10"})

    assert client.post("/", data=b"x" * 100).status_code == 413
    assert [x["status"] for x in _lines(request_lines)] == [413]


def test_health_probes_are_not_logged(request_lines) -> None:
    client = _logged_client(lambda context: {}, request_lines)
    client.get("/health/readiness")
    client.get("/health/liveness")
    assert _lines(request_lines) == []


def test_the_request_log_follows_the_log_level(caplog) -> None:
    caplog.set_level(logging.WARNING, logger="lepton.access")
    stream = io.StringIO()
    _logged_client(lambda context: {}, stream).post("/", data=b"x")
    assert stream.getvalue() == ""


def test_the_request_log_can_be_switched_off(request_lines) -> None:
    func = SimpleNamespace(main=lambda context: {}, service=None)
    app = build_app(func, Settings.from_env({"LEPTON_ACCESS_LOG": "off"}))
    ASGITestClient(app).post("/", data=b"x")
    assert app.request_log is None
