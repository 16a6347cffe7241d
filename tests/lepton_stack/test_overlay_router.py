"""The development router built from each overlay `make deploy` applies: every subscriber kind
in it served (Services over HTTP, JobSinks as local Jobs), signed deliveries, and a loud failure
for a kind or filter it cannot honour."""

from __future__ import annotations

import json
import subprocess
import sys
import textwrap
import time
from pathlib import Path
from typing import Any

import jwt
import pytest
from cloudevents.http import CloudEvent, from_json
from stack_support import REPO, Subscriber, event, s3_event, wait_for

from lepton_runtime.events.outbound import MODEL_PUBLISHED
from lepton_runtime.training.job import EXIT_FAILED
from lepton_stack import jobs as jobs_module
from lepton_stack.jobs import JOBSINK_MOUNT_PATH, JobRunner, JobTemplate, job_templates
from lepton_stack.kustomize import render
from lepton_stack.oidc import LocalIssuer, TokenCache
from lepton_stack.router import Router
from lepton_stack.triggers import JOBSINK, SERVICE, TriggerConfigError, read_manifests, triggers_of

OVERLAYS = REPO / "knative" / "overlays"


def build(overlay: str) -> list[dict[str, Any]]:
    return read_manifests([OVERLAYS / overlay])


@pytest.mark.parametrize("overlay", ["minio", "aws"])
def test_the_router_is_built_from_each_overlay_with_every_trigger(overlay: str) -> None:
    docs = build(overlay)
    triggers = triggers_of(docs)
    names = {d["metadata"]["name"] for d in docs if d["kind"] == "Trigger"}
    assert {t.name for t in triggers} == names
    assert {t.kind for t in triggers} <= {SERVICE, JOBSINK}
    templates = job_templates(docs)
    router = Router(
        triggers, {}, jobs=JobRunner(templates, Path(), Path(), {}) if templates else None
    )
    router.stop()
    # Every Service subscriber is named with its OIDC audience, which is its own name.
    for trigger in triggers:
        if trigger.kind == SERVICE:
            assert trigger.audience == trigger.subscriber


def test_the_minio_overlay_sends_large_datasets_to_the_jobsink_only() -> None:
    triggers = triggers_of(build("minio"))
    large = s3_event("datasets/large/digits.zip").get_attributes()
    small = s3_event("datasets/digits.tar").get_attributes()
    assert [(t.subscriber, t.kind) for t in triggers if t.matches(large)] == [
        ("lepton-train-job", JOBSINK)
    ]
    assert [t.subscriber for t in triggers if t.matches(small)] == ["lepton-train"]


def test_the_aws_overlay_routes_queue_events_by_role() -> None:
    triggers = triggers_of(build("aws"))
    sqs = event("dev.knative.eventing.aws-sqs", leptonrole="datasets").get_attributes()
    assert [t.subscriber for t in triggers if t.matches(sqs)] == ["lepton-train"]


def test_a_subscriber_kind_the_router_cannot_serve_fails_the_build(tmp_path: Path) -> None:
    (tmp_path / "trigger.yaml").write_text(
        textwrap.dedent(
            """\
            apiVersion: eventing.knative.dev/v1
            kind: Trigger
            metadata: {name: to-a-channel}
            spec:
              broker: lepton
              subscriber:
                ref: {apiVersion: messaging.knative.dev/v1, kind: InMemoryChannel, name: c}
            """
        )
    )
    with pytest.raises(TriggerConfigError, match=r"cannot deliver to .*InMemoryChannel"):
        triggers_of(read_manifests([tmp_path]))


@pytest.mark.parametrize("overlay", ["minio", "aws"])
def test_every_service_an_overlay_routes_to_is_one_the_stack_runs(overlay: str) -> None:
    docs = build(overlay)
    templates = job_templates(docs)
    runner = JobRunner(templates, Path(), Path(), {}) if templates else None
    served = {"lepton-infer": "http://127.0.0.1:1", "lepton-train": "http://127.0.0.1:2"}
    router = Router(triggers_of(docs), {**served, "lepton-dead-letters": "dir:/tmp"}, jobs=runner)
    router.check_addresses()
    del router.subscribers["lepton-train"]
    with pytest.raises(
        TriggerConfigError, match="has no local address for subscriber 'lepton-train'"
    ):
        router.check_addresses()
    router.stop()


def test_a_jobsink_trigger_without_its_jobsink_fails_the_router() -> None:
    docs = [d for d in build("minio") if d["kind"] != "JobSink"]
    with pytest.raises(TriggerConfigError, match="no Job template"):
        Router(triggers_of(docs), {}, jobs=None)


def test_a_jobsink_running_a_command_the_stack_does_not_know_fails() -> None:
    docs = build("minio")
    (jobsink,) = [d for d in docs if d["kind"] == "JobSink"]
    jobsink["spec"]["job"]["spec"]["template"]["spec"]["containers"][0]["command"] = ["sh"]
    with pytest.raises(TriggerConfigError, match="unknown container command"):
        job_templates(docs)


def test_the_jobsink_template_is_read_from_the_overlay() -> None:
    docs = build("minio")
    (template,) = job_templates(docs).values()
    assert template.jobsink == "lepton-train-job"
    assert template.command == ("lepton-function", "train-job")
    assert template.backoff_limit == 1
    assert template.active_deadline_seconds == 14400
    assert template.fail_job_exit_codes == {EXIT_FAILED}
    assert template.bound_to_sink  # the component's SinkBinding selects its Jobs


# -- the JobSink hand-over, with the pod process recorded -------------------------------------


class RecordedPod:
    """A stand-in for the pod's process: records what it was started with, exits with `code`."""

    started: list[dict[str, Any]] = []
    codes: list[int] = []

    def __init__(self, command: list[str], env: dict[str, str], cwd: Path, **_: Any) -> None:
        event_file = Path(command[command.index("--event-file") + 1])
        RecordedPod.started.append(
            {"command": command, "env": env, "cwd": cwd, "event": event_file.read_bytes()}
        )
        self.code = RecordedPod.codes.pop(0) if RecordedPod.codes else 0

    def wait(self, timeout: float | None = None) -> int:
        return self.code

    def terminate(self) -> None:
        pass


@pytest.fixture
def recorded(monkeypatch: pytest.MonkeyPatch) -> type[RecordedPod]:
    RecordedPod.started, RecordedPod.codes = [], []
    monkeypatch.setattr(jobs_module.subprocess, "Popen", RecordedPod)
    return RecordedPod


def jobsink_router(tmp_path: Path, backoff: float = 0.01) -> tuple[Router, JobRunner]:
    docs = build("minio")
    runner = JobRunner(
        job_templates(docs),
        tmp_path / "jobs",
        tmp_path / "logs",
        {"LEPTON_UPLOADS_BUCKET": "lepton-uploads"},
        sink="http://127.0.0.1:1/",
        backoff_base=backoff,
    )
    return Router(triggers_of(docs), {}, jobs=runner), runner


def test_a_large_dataset_event_becomes_one_job_as_jobsink_runs_it(
    tmp_path: Path, recorded: type[RecordedPod]
) -> None:
    router, runner = jobsink_router(tmp_path)
    sent = s3_event("datasets/large/digits.zip")
    (result,) = router.route(sent)
    (again,) = router.route(sent)  # a redelivery of the same event: no second Job
    assert runner.join(10)
    assert (result.status, again.status) == (202, 202)
    (pod,) = recorded.started
    assert pod["command"][-4:] == [
        "lepton_runtime.entry",
        "train-job",
        "--event-file",
        pod["command"][-1],
    ]
    assert pod["command"][-1].endswith(JOBSINK_MOUNT_PATH)  # the mount path, re-rooted
    received = from_json(pod["event"])
    assert (received["id"], received["subject"]) == (sent["id"], "datasets/large/digits.zip")
    assert pod["env"]["K_EXECUTION_MODE"] == "batch"
    assert pod["env"]["K_SINK"] == "http://127.0.0.1:1/"
    assert pod["env"]["LEPTON_UPLOADS_BUCKET"] == "lepton-uploads"
    assert runner.status()["succeeded"] == {"lepton-train-job": 1}
    log = (tmp_path / "logs" / "lepton-train-job.log").read_text()
    assert '"job succeeded"' in log
    router.stop()


def test_a_failed_pod_is_retried_up_to_the_backoff_limit(
    tmp_path: Path, recorded: type[RecordedPod]
) -> None:
    recorded.codes = [1, 1, 1]  # transient, every time
    router, runner = jobsink_router(tmp_path)
    router.route(s3_event("datasets/large/a.zip"))
    assert runner.join(10)
    assert len(recorded.started) == 2  # backoffLimit 1: one retry
    assert runner.status()["failed"] == {"lepton-train-job": 1}
    assert runner.status()["retries"] == {"lepton-train-job": 1}
    router.stop()


def test_a_permanent_exit_code_fails_the_job_at_once(
    tmp_path: Path, recorded: type[RecordedPod]
) -> None:
    recorded.codes = [EXIT_FAILED]
    router, runner = jobsink_router(tmp_path)
    router.route(s3_event("datasets/large/a.zip"))
    assert runner.join(10)
    assert len(recorded.started) == 1  # podFailurePolicy FailJob on exit 2
    assert runner.status()["failed"] == {"lepton-train-job": 1}
    router.stop()


def test_retries_wait_the_job_controllers_backoff(
    tmp_path: Path, recorded: type[RecordedPod]
) -> None:
    recorded.codes = [1, 0]
    router, runner = jobsink_router(tmp_path, backoff=0.3)
    started = time.monotonic()
    router.route(s3_event("datasets/large/a.zip"))
    assert runner.join(10)
    assert time.monotonic() - started >= 0.3
    assert runner.status()["succeeded"] == {"lepton-train-job": 1}
    router.stop()


def test_the_jobs_deadline_ends_a_pod_that_runs_too_long(tmp_path: Path) -> None:
    template = JobTemplate(
        jobsink="slow",
        command=("lepton-function", "train-job"),
        env={},
        labels={},
        backoff_limit=3,
        active_deadline_seconds=1,
    )
    runner = JobRunner({"slow": template}, tmp_path / "jobs", tmp_path / "logs", {})
    sleeper = [sys.executable, "-c", "import time; time.sleep(30)"]
    original = jobs_module._COMMANDS[("lepton-function", "train-job")]
    jobs_module._COMMANDS[("lepton-function", "train-job")] = lambda _file: sleeper
    try:
        started = time.monotonic()
        runner.submit("slow", s3_event("datasets/large/a.zip"))
        assert runner.join(15)
    finally:
        jobs_module._COMMANDS[("lepton-function", "train-job")] = original
    assert time.monotonic() - started < 10
    assert runner.status()["failed"] == {"slow": 1} and runner.status()["retries"] == {}
    assert "job deadline exceeded" in (tmp_path / "logs" / "slow.log").read_text()


# -- signed deliveries ---------------------------------------------------------------------------


def test_deliveries_carry_a_token_for_the_subscribers_audience(
    tmp_path: Path, subscriber: Subscriber
) -> None:
    issuer = LocalIssuer.create(tmp_path / "oidc", "http://127.0.0.1:8090")
    docs = render(REPO / "knative" / "base")
    router = Router(
        triggers_of(docs),
        {"lepton-infer": subscriber.url, "lepton-train": subscriber.url},
        sign=TokenCache(issuer),
    )
    router.route(s3_event("images/a.png"))
    router.route(event(MODEL_PUBLISHED, {"name": "digits"}))
    router.stop()
    jwks = jwt.PyJWKSet.from_json((tmp_path / "oidc" / "jwks.json").read_text())
    for received in subscriber.received:
        scheme, token = received.headers["Authorization"].split(" ", 1)
        claims = jwt.decode(
            token,
            jwks[issuer.kid],
            algorithms=["RS256"],
            audience="lepton-infer",
            issuer="http://127.0.0.1:8090",
        )
        assert scheme == "Bearer" and claims["exp"] > time.time()
    assert len(subscriber.received) == 2


def test_a_stack_issuer_key_is_private_and_its_jwks_public(tmp_path: Path) -> None:
    issuer = LocalIssuer.create(tmp_path / "oidc", "http://127.0.0.1:8090")
    assert (tmp_path / "oidc" / "key.pem").stat().st_mode & 0o077 == 0
    jwks = json.loads((tmp_path / "oidc" / "jwks.json").read_text())
    assert [k["kid"] for k in jwks["keys"]] == [issuer.kid]
    assert "d" not in jwks["keys"][0]  # no private part
    assert LocalIssuer.load(tmp_path / "oidc").kid == issuer.kid


def test_router_main_serves_a_kustomize_target(tmp_path: Path, subscriber: Subscriber) -> None:

    from stack_support import free_port

    port = free_port()
    issuer_dir = tmp_path / "oidc"
    LocalIssuer.create(issuer_dir, f"http://127.0.0.1:{port}")
    process = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "lepton_stack.router_main",
            "--port",
            str(port),
            "--manifests",
            str(OVERLAYS / "minio"),
            "--subscriber",
            f"lepton-infer={subscriber.url}",
            "--subscriber",
            f"lepton-train={subscriber.url}",
            "--subscriber",
            f"lepton-dead-letters=dir:{tmp_path / 'dead'}",
            "--jobs-dir",
            str(tmp_path / "jobs"),
            "--logs-dir",
            str(tmp_path / "logs"),
            "--issuer-dir",
            str(issuer_dir),
            "--ingress-audience",
            "eventing.knative.dev/broker/local/lepton",
        ],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    try:
        import requests

        url = f"http://127.0.0.1:{port}"
        status = wait_for(lambda: _status(url), timeout=30)
        kinds = {t["name"]: t["kind"] for t in status["triggers"]}
        assert kinds["lepton-train-large-datasets"] == JOBSINK
        assert requests.get(f"{url}/openid/v1/jwks", timeout=5).json()["keys"]
        from lepton_runtime.events.outbound import binary_http

        headers, body = binary_http(CloudEvent(s3_event("images/x.png").get_attributes(), {}))
        # As a Broker's ingress with OIDC: an anonymous sender is refused, nothing delivered.
        assert requests.post(url + "/", data=body, headers=headers, timeout=10).status_code == 401
        for_the_functions = LocalIssuer.load(issuer_dir).token("lepton-infer")
        wrong = {**headers, "Authorization": f"Bearer {for_the_functions}"}
        assert requests.post(url + "/", data=body, headers=wrong, timeout=10).status_code == 401
        assert subscriber.received == []
        token = LocalIssuer.load(issuer_dir).token("eventing.knative.dev/broker/local/lepton")
        signed = {**headers, "Authorization": f"Bearer {token}"}
        assert requests.post(url + "/", data=body, headers=signed, timeout=10).status_code == 202
        delivered = subscriber.received[0].headers["Authorization"]
        assert delivered.startswith("Bearer ") and delivered != f"Bearer {token}"
    finally:
        process.terminate()
        process.wait(15)


def _status(url: str) -> dict[str, Any] | None:
    import requests

    try:
        return requests.get(f"{url}/status", timeout=1).json()
    except requests.RequestException:
        return None
