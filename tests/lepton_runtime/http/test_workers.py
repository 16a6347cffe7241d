"""`lepton serve` with several worker processes: spreading, restarts, relayed announcements,
summed metrics, max_workers and a clean SIGTERM."""

from __future__ import annotations

import os
import signal
import subprocess
import textwrap
import time
from collections.abc import Callable
from pathlib import Path

import pytest
import requests

from lepton_runtime.http.workers import available_cpus

pytestmark = pytest.mark.slow

FUNC = """
import os
from pathlib import Path

from lepton_runtime.metrics import FunctionMetrics

MARKS = Path(os.environ["MARK_DIR"])


class Service:
    max_workers = int(os.environ.get("MAX_WORKERS", "0")) or None
    metrics = FunctionMetrics("test")

    def start(self): ...
    def stop(self): ...
    def ready(self): return True

    def announce(self): ...

    def changed(self):
        (MARKS / f"changed-{os.getpid()}").write_text("1")


service = Service()


def main(context):
    service.metrics.request("test", 200, 0.001)
    if context.request.path == "/" and context.request.args.get("announce"):
        service.announce()
    return str(os.getpid())
"""


class Served:
    def __init__(self, process: subprocess.Popen, url: str, marks: Path) -> None:
        self.process, self.url, self.marks = process, url, marks

    def pid_answering(self) -> int:
        # A new connection each time, so the kernel may pick another worker.
        with requests.Session() as session:
            return int(session.post(self.url + "/", data=b"x", timeout=5).text)

    def pids(self, tries: int = 60) -> set[int]:
        return {self.pid_answering() for _ in range(tries)}

    def children(self) -> set[int]:
        out = subprocess.run(
            ["ps", "-o", "pid=", "--ppid", str(self.process.pid)], capture_output=True, text=True
        )
        return {int(line) for line in out.stdout.split()}


@pytest.fixture
def serve(tmp_path: Path, serve_function) -> Callable[..., Served]:
    def start(workers: int, max_workers: int = 0) -> Served:
        name = f"{workers}-{max_workers}-{len(list(tmp_path.iterdir()))}"
        folder = tmp_path / f"func{name}"
        folder.mkdir()
        (folder / "func.py").write_text(textwrap.dedent(FUNC))
        marks = tmp_path / f"marks{name}"
        marks.mkdir()
        env = {
            "LEPTON_WORKERS": str(workers),
            "MARK_DIR": str(marks),
            "MAX_WORKERS": str(max_workers),
        }
        process, url = serve_function(folder, env)
        served = Served(process, url, marks)
        deadline = time.monotonic() + 30
        while len(served.children()) < (workers if not max_workers else 0) and (
            time.monotonic() < deadline
        ):
            time.sleep(0.1)
        return served

    return start


def test_requests_are_spread_over_the_workers(serve) -> None:
    served = serve(2)
    assert served.pids() == served.children()
    assert len(served.children()) == 2


def test_a_killed_worker_is_replaced(serve) -> None:
    served = serve(2)
    victim = min(served.children())
    os.kill(victim, signal.SIGKILL)
    deadline = time.monotonic() + 10
    while (victim in served.children() or len(served.children()) < 2) and (
        time.monotonic() < deadline
    ):
        time.sleep(0.1)
    assert victim not in served.children()
    assert len(served.children()) == 2
    assert served.pids() == served.children()


def test_an_announcement_reaches_every_worker(serve) -> None:
    served = serve(2)
    requests.post(served.url + "/?announce=1", data=b"x", timeout=5)
    deadline = time.monotonic() + 5
    expected = {f"changed-{pid}" for pid in served.children()}
    while {p.name for p in served.marks.iterdir()} != expected and time.monotonic() < deadline:
        time.sleep(0.05)
    assert {p.name for p in served.marks.iterdir()} == expected


def test_metrics_are_summed_over_the_workers(serve) -> None:
    served = serve(2)
    answered_by = [served.pid_answering() for _ in range(40)]
    assert len(set(answered_by)) == 2
    text = requests.get(served.url + "/metrics", timeout=5).text
    line = next(row for row in text.splitlines() if row.startswith("lepton_requests_total{"))
    assert float(line.rsplit(" ", 1)[1]) == 40.0


def test_a_function_allowing_one_worker_runs_in_one_process(serve) -> None:
    served = serve(2, max_workers=1)
    assert served.children() == set()
    assert served.pids() == {served.process.pid}


def test_sigterm_stops_every_worker_and_exits_cleanly(serve) -> None:
    served = serve(2)
    workers = served.children()
    served.process.send_signal(signal.SIGTERM)
    assert served.process.wait(20) == 0
    time.sleep(0.2)
    assert not [pid for pid in workers if Path(f"/proc/{pid}").exists()]


def test_workers_die_with_a_killed_supervisor(serve) -> None:
    served = serve(2)
    workers = served.children()
    served.process.kill()
    served.process.wait(5)
    deadline = time.monotonic() + 10
    while [pid for pid in workers if Path(f"/proc/{pid}").exists()] and (
        time.monotonic() < deadline
    ):
        time.sleep(0.1)
    assert not [pid for pid in workers if Path(f"/proc/{pid}").exists()]


def test_available_cpus_is_within_the_affinity() -> None:
    assert 1 <= available_cpus() <= len(os.sched_getaffinity(0))
