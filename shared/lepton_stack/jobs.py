"""JobSink, played on one machine: one Job per event, run as a local process.

What Knative's JobSink and Kubernetes' Job controller do, and this does too:
- The delivery is answered 202 once the Job exists; the Job's name comes from the event's
  source and id, so a redelivered event does not start a second Job.
- The event is written as a structured CloudEvent (JSON) at the JobSink's mount path,
  `/etc/jobsink-event/event`. A process here cannot mount that path, so it is re-rooted under
  the Job's folder (`.lepton/jobs/<job>/etc/jobsink-event/event`) and handed to the command
  with the one option the training job has for it (`--event-file`).
- The container runs with `K_EXECUTION_MODE=batch`, its literal `env`, K_SINK when a
  SinkBinding selects the Job's labels, and the local stack's function environment in place of
  `envFrom` (the cluster's ConfigMap names cluster endpoints).
- A failed pod is retried up to `backoffLimit` times, after Kubernetes' back-off (10 s
  doubling, at most 6 min); an exit code a `podFailurePolicy` rule says `FailJob` for fails the
  Job at once; `activeDeadlineSeconds` bounds the whole Job.
- Every attempt's output goes to `.lepton/logs/<jobsink>.log` (`lepton logs lepton-train-job`).

Only the containers the stack knows how to run are accepted (`lepton train-job`); any other
JobSink makes the router refuse the manifests, as a kind it cannot honour.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import subprocess
import sys
import threading
import time
from collections import Counter
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from cloudevents.abstract import CloudEvent
from cloudevents.conversion import to_json

from lepton_runtime.http.processes import die_with_parent
from lepton_stack.triggers import TriggerConfigError

log = logging.getLogger("lepton.jobs")

JOBSINK_MOUNT_PATH = "/etc/jobsink-event/event"
EXECUTION_MODE = {"K_EXECUTION_MODE": "batch"}
DEFAULT_BACKOFF_LIMIT = 6  # Kubernetes' default for a Job
BACKOFF_BASE_SECONDS = 10.0  # the Job controller's pod failure back-off: 10 s, doubling ...
BACKOFF_CAP_SECONDS = 360.0  # ... up to six minutes

# The container commands the local stack can run, and how: the image's entry points as
# processes of this Python, with the event file passed where the container reads it.
_COMMANDS: dict[tuple[str, ...], Callable[[str], list[str]]] = {
    ("lepton-function", "train-job"): lambda event_file: [
        sys.executable,
        "-m",
        "lepton_runtime.entry",
        "train-job",
        "--event-file",
        event_file,
    ],
}


@dataclass(frozen=True)
class JobTemplate:
    """What a JobSink's Job runs and how the Job controller treats its failures."""

    jobsink: str
    command: tuple[str, ...]
    env: Mapping[str, str]
    labels: Mapping[str, str]
    backoff_limit: int = DEFAULT_BACKOFF_LIMIT
    active_deadline_seconds: float | None = None
    fail_job_exit_codes: frozenset[int] = frozenset()
    bound_to_sink: bool = False  # a SinkBinding gives its pods K_SINK

    @classmethod
    def from_jobsink(
        cls, doc: Mapping[str, Any], build: Sequence[Mapping[str, Any]]
    ) -> JobTemplate:
        name = str(doc["metadata"]["name"])
        job = (doc.get("spec") or {}).get("job") or {}
        spec = job.get("spec") or {}
        pod = (spec.get("template") or {}).get("spec") or {}

        def refuse(why: str) -> TriggerConfigError:
            return TriggerConfigError(f"JobSink {name}: the local stack cannot run it: {why}")

        if spec.get("completions", 1) != 1 or spec.get("parallelism", 1) != 1:
            raise refuse("only completions 1 and parallelism 1 are run locally")
        if pod.get("restartPolicy", "Never") != "Never":
            raise refuse("restartPolicy must be Never (as a podFailurePolicy needs)")
        containers = pod.get("containers") or []
        if len(containers) != 1 or pod.get("initContainers"):
            raise refuse("exactly one container and no init containers")
        container = containers[0]
        command = tuple(container.get("command") or ()) + tuple(container.get("args") or ())
        if command not in _COMMANDS:
            raise refuse(f"unknown container command {list(command)}")
        env = {
            str(item["name"]): str(item["value"])
            for item in container.get("env") or []
            if "value" in item
        }
        labels = dict((job.get("metadata") or {}).get("labels") or {})
        return cls(
            jobsink=name,
            command=command,
            env=env,
            labels=labels,
            backoff_limit=int(spec.get("backoffLimit", DEFAULT_BACKOFF_LIMIT)),
            active_deadline_seconds=spec.get("activeDeadlineSeconds"),
            fail_job_exit_codes=_fail_job_exit_codes(name, spec.get("podFailurePolicy")),
            bound_to_sink=any(_binds(binding, labels) for binding in build),
        )


def _fail_job_exit_codes(name: str, policy: Mapping[str, Any] | None) -> frozenset[int]:
    codes: set[int] = set()
    for rule in (policy or {}).get("rules") or []:
        on_codes = rule.get("onExitCodes") or {}
        if rule.get("action") != "FailJob" or on_codes.get("operator") != "In":
            raise TriggerConfigError(
                f"JobSink {name}: only podFailurePolicy rules `FailJob` onExitCodes `In` are run "
                f"locally, not {dict(rule)}"
            )
        codes.update(int(code) for code in on_codes.get("values") or [])
    return frozenset(codes)


def _binds(binding: Mapping[str, Any], labels: Mapping[str, str]) -> bool:
    """A SinkBinding whose subject selects Jobs with these labels."""
    if binding.get("kind") != "SinkBinding":
        return False
    subject = (binding.get("spec") or {}).get("subject") or {}
    selector = (subject.get("selector") or {}).get("matchLabels")
    return subject.get("kind") == "Job" and bool(selector) and selector.items() <= labels.items()


def job_templates(build: Sequence[Mapping[str, Any]]) -> dict[str, JobTemplate]:
    """Every JobSink of a build, as the local stack runs it."""
    return {
        str(doc["metadata"]["name"]): JobTemplate.from_jobsink(doc, build)
        for doc in build
        if doc.get("kind") == "JobSink"
    }


@dataclass
class JobStats:
    created: Counter = field(default_factory=Counter)
    succeeded: Counter = field(default_factory=Counter)
    failed: Counter = field(default_factory=Counter)
    retries: Counter = field(default_factory=Counter)
    running: int = 0


class JobRunner:
    """Starts one Job per event for the JobSinks it knows; each Job runs on its own thread."""

    def __init__(
        self,
        templates: Mapping[str, JobTemplate],
        jobs_dir: Path,
        logs_dir: Path,
        env: Mapping[str, str],
        sink: str | None = None,
        backoff_base: float = BACKOFF_BASE_SECONDS,
    ) -> None:
        self.templates = dict(templates)
        self.jobs_dir = jobs_dir
        self.logs_dir = logs_dir
        self.env = dict(env)
        self.sink = sink
        self.backoff_base = backoff_base
        self.stats = JobStats()
        self._lock = threading.Lock()
        self._stopping = threading.Event()
        self._threads: list[threading.Thread] = []
        self._processes: set[subprocess.Popen] = set()

    def submit(self, jobsink: str, event: CloudEvent) -> str:
        """Create the Job for `event` (none if that event already has one); its name."""
        template = self.templates[jobsink]
        digest = hashlib.sha256(f"{event['source']}\n{event['id']}".encode()).hexdigest()[:12]
        name = f"{jobsink}-{digest}"
        folder = self.jobs_dir / name
        try:
            folder.mkdir(parents=True)
        except FileExistsError:
            log.info("the event already has its Job", extra={"job": name, "id": event["id"]})
            return name
        event_file = folder / JOBSINK_MOUNT_PATH.lstrip("/")
        event_file.parent.mkdir(parents=True)
        event_file.write_bytes(to_json(event))
        with self._lock:
            self.stats.created[jobsink] += 1
            self.stats.running += 1
        thread = threading.Thread(
            target=self._run, args=(template, name, event_file), name=name, daemon=True
        )
        with self._lock:
            self._threads.append(thread)
        thread.start()
        return name

    def _run(self, template: JobTemplate, name: str, event_file: Path) -> None:
        started = time.monotonic()
        deadline = (
            started + float(template.active_deadline_seconds)
            if template.active_deadline_seconds
            else None
        )
        outcome = "failed"
        try:
            for attempt in range(template.backoff_limit + 1):
                if attempt:
                    with self._lock:
                        self.stats.retries[template.jobsink] += 1
                    delay = min(self.backoff_base * 2 ** (attempt - 1), BACKOFF_CAP_SECONDS)
                    if self._stopping.wait(delay):
                        return
                code = self._attempt(template, name, event_file, attempt, deadline)
                if code == 0:
                    outcome = "succeeded"
                    return
                if code is None or code in template.fail_job_exit_codes:
                    return  # past the deadline, or a podFailurePolicy FailJob code
        finally:
            with self._lock:
                self.stats.running -= 1
                counter = self.stats.succeeded if outcome == "succeeded" else self.stats.failed
                counter[template.jobsink] += 1
            self._note(template, {"message": f"job {outcome}", "job": name})

    def _attempt(
        self,
        template: JobTemplate,
        name: str,
        event_file: Path,
        attempt: int,
        deadline: float | None,
    ) -> int | None:
        """One pod: the exit code, or None when the Job's deadline killed it."""
        # This machine's environment (PATH, PYTHONPATH, ...) under the pod's own.
        env = {**os.environ, **self.env, **template.env, **EXECUTION_MODE}
        if template.bound_to_sink and self.sink:
            env["K_SINK"] = self.sink
        command = _COMMANDS[template.command](str(event_file))
        self._note(template, {"message": "job pod started", "job": name, "attempt": attempt})
        log_path = self.logs_dir / f"{template.jobsink}.log"
        self.logs_dir.mkdir(parents=True, exist_ok=True)
        with log_path.open("ab", buffering=0) as stream:
            process = subprocess.Popen(
                command,
                env=env,
                stdout=stream,
                stderr=subprocess.STDOUT,
                stdin=subprocess.DEVNULL,
                cwd=event_file.parents[2],
                preexec_fn=die_with_parent,
            )
        with self._lock:
            self._processes.add(process)
        try:
            timeout = None if deadline is None else max(0.0, deadline - time.monotonic())
            try:
                code = process.wait(timeout)
            except subprocess.TimeoutExpired:
                process.kill()
                process.wait()
                self._note(template, {"message": "job deadline exceeded", "job": name})
                return None
        finally:
            with self._lock:
                self._processes.discard(process)
        self._note(template, {"message": "job pod exited", "job": name, "code": code})
        return code

    def _note(self, template: JobTemplate, entry: dict[str, Any]) -> None:
        """A line of the Job controller's own, in the JobSink's log beside the pods' output."""
        self.logs_dir.mkdir(parents=True, exist_ok=True)
        now = datetime.now(UTC).isoformat(timespec="milliseconds").replace("+00:00", "Z")
        line = json.dumps({"time": now, "logger": "lepton.jobs", **entry}) + "\n"
        with (self.logs_dir / f"{template.jobsink}.log").open("a") as stream:
            stream.write(line)
        log.info(entry["message"], extra={k: v for k, v in entry.items() if k != "message"})

    def join(self, timeout: float | None = None) -> bool:
        """Wait for every Job started so far; False on timeout."""
        deadline = None if timeout is None else time.monotonic() + timeout
        for thread in list(self._threads):
            thread.join(None if deadline is None else max(0.0, deadline - time.monotonic()))
            if thread.is_alive():
                return False
        return True

    def stop(self) -> None:
        """Stop retrying and end the pods running now (SIGTERM, as a node drain would)."""
        self._stopping.set()
        with self._lock:
            processes = list(self._processes)
        for process in processes:
            process.terminate()

    def status(self) -> dict[str, Any]:
        with self._lock:
            return {
                "running": self.stats.running,
                "created": dict(self.stats.created),
                "succeeded": dict(self.stats.succeeded),
                "failed": dict(self.stats.failed),
                "retries": dict(self.stats.retries),
            }
