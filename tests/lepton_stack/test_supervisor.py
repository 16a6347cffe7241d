"""Supervised child processes: started, health-checked, restarted when they die, stopped, and
taken down with a supervisor that is killed."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import textwrap
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest
from stack_support import Subscriber, free_port, wait_for

from lepton_stack.state import pid_alive
from lepton_stack.supervisor import Part, Supervisor

SLEEP = [sys.executable, "-c", "import time; print('up', flush=True); time.sleep(60)"]
IGNORE_TERM = [
    sys.executable,
    "-c",
    "import signal, time; signal.signal(signal.SIGTERM, signal.SIG_IGN); "
    "print('up', flush=True); time.sleep(60)",
]


@pytest.fixture
def make_part(tmp_path: Path) -> Iterator[Callable[..., Part]]:
    """Parts with a fast restart backoff; every process they started is gone after the test."""
    parts: list[Part] = []

    def make(
        name: str = "sleeper",
        command: list[str] = SLEEP,
        env: dict[str, str] | None = None,
        health_url: str | None = None,
        restart: bool = True,
    ) -> Part:
        log = tmp_path / "logs" / f"{name}.log"
        part = Part(name, command, env or {}, health_url, log, restart=restart, _backoff=0.02)
        parts.append(part)
        return part

    yield make
    for part in parts:
        if part.alive():
            part.process.kill()  # type: ignore[union-attr]
            part.process.wait(5)  # type: ignore[union-attr]


@pytest.fixture
def watching() -> Iterator[Callable[[Supervisor], Supervisor]]:
    """Runs Supervisor.watch in a thread; stops every part afterwards."""
    started: list[tuple[Supervisor, threading.Thread]] = []

    def watch(supervisor: Supervisor) -> Supervisor:
        thread = threading.Thread(target=supervisor.watch, args=(0.02,), daemon=True)
        thread.start()
        started.append((supervisor, thread))
        return supervisor

    yield watch
    for supervisor, thread in started:
        supervisor.stop_all()
        thread.join(5)


def test_a_part_starts_with_its_environment_and_logs_to_its_file(
    make_part: Callable[..., Part],
) -> None:
    part = make_part(
        "echo",
        [sys.executable, "-c", "import os; print('role', os.environ['ROLE'], flush=True)"],
        env={"ROLE": "infer"},
    )
    part.start()
    assert part.process is not None
    assert part.process.wait(10) == 0
    assert part.log_file.read_text() == "role infer\n"


def test_a_killed_part_is_restarted_with_a_new_pid(
    make_part: Callable[..., Part], watching: Callable[[Supervisor], Supervisor]
) -> None:
    part = make_part()
    part.start()
    wait_for(lambda: part.log_file.read_text() == "up\n")
    first = part.pid
    changes: list[int] = []
    watching(Supervisor([part], on_change=lambda: changes.append(part.restarts)))
    os.kill(first, signal.SIGKILL)  # type: ignore[arg-type]
    wait_for(lambda: part.restarts == 1 and part.alive())
    assert part.pid != first
    assert changes == [1]
    wait_for(lambda: part.log_file.read_text().count("up\n") == 2)


def test_a_part_that_keeps_dying_is_restarted_each_time_with_growing_backoff(
    make_part: Callable[..., Part], watching: Callable[[Supervisor], Supervisor]
) -> None:
    part = make_part("crash", [sys.executable, "-c", "raise SystemExit(3)"])
    part.start()
    watching(Supervisor([part]))
    wait_for(lambda: part.restarts >= 3)
    assert part._backoff > 0.02


def test_a_part_with_restart_false_is_not_restarted(
    make_part: Callable[..., Part], watching: Callable[[Supervisor], Supervisor]
) -> None:
    part = make_part("s3", restart=False)
    part.start()
    first = part.pid
    watching(Supervisor([part]))
    os.kill(first, signal.SIGKILL)  # type: ignore[arg-type]
    wait_for(lambda: not part.alive())
    threading.Event().wait(0.3)  # many watch intervals
    assert (part.restarts, part.pid, part.alive()) == (0, first, False)


def test_stop_all_leaves_no_process_alive(make_part: Callable[..., Part]) -> None:
    parts = [make_part(f"p{i}") for i in range(3)]
    for part in parts:
        part.start()
    pids = [p.pid for p in parts]
    Supervisor(parts).stop_all()
    assert [pid_alive(pid) for pid in pids] == [False, False, False]
    assert [p.process.returncode for p in parts] == [-signal.SIGTERM] * 3  # type: ignore[union-attr]


def test_stop_all_stops_the_watch_loop(make_part: Callable[..., Part]) -> None:
    part = make_part()
    part.start()
    supervisor = Supervisor([part])
    thread = threading.Thread(target=supervisor.watch, args=(0.02,), daemon=True)
    thread.start()
    supervisor.stop_all()
    thread.join(2)
    assert not thread.is_alive()
    assert (part.restarts, part.alive()) == (0, False)


def test_stop_kills_a_part_that_ignores_sigterm_after_the_grace_period(
    make_part: Callable[..., Part],
) -> None:
    part = make_part("stubborn", IGNORE_TERM)
    part.start()
    wait_for(lambda: part.log_file.read_text() == "up\n")
    part.stop(grace=0.2)
    assert part.process.returncode == -signal.SIGKILL  # type: ignore[union-attr]


def test_wait_healthy_returns_once_the_health_url_answers_200(
    make_part: Callable[..., Part], subscriber: Subscriber
) -> None:
    part = make_part(health_url=subscriber.url + "/health")
    part.start()
    part.wait_healthy(5)
    assert part.healthy()


def test_wait_healthy_fails_with_the_exit_code_and_log_of_a_part_that_exits(
    make_part: Callable[..., Part],
) -> None:
    part = make_part(
        "broken",
        [sys.executable, "-c", "raise SystemExit(3)"],
        health_url=f"http://127.0.0.1:{free_port()}/health",
    )
    part.start()
    with pytest.raises(RuntimeError, match=r"broken exited with code 3; see .*broken\.log"):
        part.wait_healthy(10)


def test_wait_healthy_fails_when_the_health_url_never_answers(
    make_part: Callable[..., Part],
) -> None:
    part = make_part(health_url=f"http://127.0.0.1:{free_port()}/health")
    part.start()
    with pytest.raises(RuntimeError, match="did not become healthy"):
        part.wait_healthy(0.3)


SUPERVISOR = textwrap.dedent(
    """
    import sys, time
    from pathlib import Path
    from lepton_stack.supervisor import Part

    part = Part("child", {command!r}, {{}}, None, Path({log!r}))
    part.start()
    print(part.pid, flush=True)
    time.sleep(60)
    """
)


def test_ctrl_c_in_the_terminal_reaches_the_supervisor_and_not_its_parts(tmp_path: Path) -> None:
    """A terminal sends Ctrl-C's SIGINT to its whole foreground job: the supervisor has to stop
    the parts itself, in order (the S3 endpoint last, after the buckets are kept)."""
    script = SUPERVISOR.format(command=SLEEP, log=str(tmp_path / "child.log")).replace(
        "part.start()",
        "import signal\n"
        "signal.signal(signal.SIGINT, lambda *_: print('interrupted', flush=True))\n"
        "part.start()",
    )
    supervisor = subprocess.Popen(
        [sys.executable, "-c", script], stdout=subprocess.PIPE, text=True, process_group=0
    )  # the terminal's foreground job: its own process group, as a shell makes it
    try:
        assert supervisor.stdout is not None
        child = int(supervisor.stdout.readline())
        wait_for(lambda: "up" in (tmp_path / "child.log").read_text(), timeout=10)

        os.killpg(supervisor.pid, signal.SIGINT)

        assert supervisor.stdout.readline() == "interrupted\n"
        time.sleep(0.5)
        assert pid_alive(child)
    finally:
        supervisor.kill()
        supervisor.wait(5)


def test_children_die_when_the_supervisor_is_killed(tmp_path: Path) -> None:
    script = SUPERVISOR.format(command=SLEEP, log=str(tmp_path / "child.log"))
    supervisor = subprocess.Popen([sys.executable, "-c", script], stdout=subprocess.PIPE, text=True)
    try:
        assert supervisor.stdout is not None
        child = int(supervisor.stdout.readline())
        assert pid_alive(child)
        supervisor.kill()
        supervisor.wait(5)
        wait_for(lambda: not pid_alive(child), timeout=5)
    finally:
        if supervisor.poll() is None:
            supervisor.kill()
            supervisor.wait(5)
