"""`lepton serve`: one function server process per CPU, each a full `serve_process`.

Python runs one thread at a time, so a function whose requests are short and CPU-bound (the
inference function) answers more with a process per core. Each worker binds $PORT with
SO_REUSEPORT (the kernel spreads connections), loads its own model and drains on SIGTERM; the
parent forwards signals, restarts a worker that dies, and relays a worker's announcement (a new
model went live) to the others. Metrics are summed across workers with prometheus-client's
multiprocess mode.
"""

from __future__ import annotations

import contextlib
import logging
import os
import shutil
import signal
import tempfile
import time
from pathlib import Path
from typing import TYPE_CHECKING, Any

from lepton_runtime.http.processes import die_with_parent, settle_heap
from lepton_runtime.http.server import listening_socket, load_function, serve_process
from lepton_runtime.settings import (
    Settings,
    metrics_multiprocess_dir,
    use_metrics_multiprocess_dir,
)

if TYPE_CHECKING:
    from lepton_runtime.inference.prefetch import Prefetch

log = logging.getLogger("lepton.server")

# How long a worker waits for its model before it takes requests anyway (answering 503 until
# the model arrives, as a single process does when there is no model yet).
_READY_WAIT_SECONDS = 15.0


def available_cpus() -> int:
    """CPUs this process may use: its affinity, capped by a cgroup v2 CPU quota (a container's
    CPU limit), at least 1."""
    count = len(os.sched_getaffinity(0))
    try:
        quota, period = Path("/sys/fs/cgroup/cpu.max").read_text().split()
        if quota != "max":
            count = min(count, max(1, int(int(quota) / int(period))))
    except (OSError, ValueError):
        pass
    return max(1, count)


def serve(
    function_dir: Path,
    settings: Settings,
    grace_seconds: float = 30.0,
    prefetch: Prefetch | None = None,
) -> None:
    """Serve the function in `function_dir` with settings.workers processes (0 = one per CPU,
    capped by what the function allows). A `prefetch` (of the inference function's model) is
    collected and handed to the function's service once loaded, before any worker starts."""
    workers = settings.workers or available_cpus()
    metrics_dir = None
    if workers > 1 and not metrics_multiprocess_dir():
        # prometheus-client picks its value store at import: before the function is loaded.
        metrics_dir = tempfile.mkdtemp(prefix="lepton-metrics-")
        use_metrics_multiprocess_dir(metrics_dir)
    try:
        func = load_function(function_dir)
        service = getattr(func, "service", None)
        if prefetch is not None:
            prefetch.hand_to(service)
        workers = min(workers, getattr(service, "max_workers", workers) or workers)
        if workers <= 1:
            serve_process(func, function_dir, settings, grace_seconds)
        else:
            _Supervisor(func, function_dir, settings, workers, grace_seconds).run()
    finally:
        if metrics_dir:
            shutil.rmtree(metrics_dir, ignore_errors=True)


class _Supervisor:
    """The parent: forks the workers and keeps them running until told to stop."""

    def __init__(
        self, func: Any, function_dir: Path, settings: Settings, workers: int, grace_seconds: float
    ) -> None:
        self.func = func
        self.function_dir = function_dir
        self.settings = settings
        self.count = workers
        self.grace = grace_seconds
        self.children: set[int] = set()
        self.stopping = False
        self.pid = os.getpid()

    def run(self) -> None:
        # Bind once here, so a taken port fails now, once, with a clear error. It is closed
        # before forking: a listening socket no worker accepts on would swallow connections.
        listening_socket(self.settings.host, self.settings.port, reuse_port=True).close()
        signal.signal(signal.SIGTERM, self._stop)
        signal.signal(signal.SIGINT, self._stop)
        signal.signal(signal.SIGUSR1, self._relay)
        settle_heap()  # what the workers inherit stays shared, out of their collectors' way
        for _ in range(self.count):
            self._fork()
        # A prefetched model is for the workers started with it; a replacement reads S3.
        registry = getattr(getattr(self.func, "service", None), "registry", None)
        if hasattr(registry, "drop_handoff"):
            registry.drop_handoff()
        log.info("workers started", extra={"workers": self.count, "port": self.settings.port})
        while self.children:
            try:
                pid, status = os.waitpid(-1, 0)
            except ChildProcessError:
                break
            except InterruptedError:
                continue
            self.children.discard(pid)
            _mark_dead(pid)
            if not self.stopping:
                log.warning("worker exited; starting another", extra={"pid": pid, "status": status})
                time.sleep(0.5)
                self._fork()
        log.info("stopped")

    def _fork(self) -> None:
        pid = os.fork()
        if pid:
            self.children.add(pid)
            return
        code = 0
        try:  # the worker
            for signum in (signal.SIGTERM, signal.SIGINT, signal.SIGUSR1):
                signal.signal(signum, signal.SIG_DFL)
            die_with_parent()
            if os.getppid() != self.pid:  # the parent died before prctl took effect
                return
            service = getattr(self.func, "service", None)
            if service is not None and hasattr(service, "changed"):
                signal.signal(signal.SIGUSR1, lambda *_: service.changed())
                service.announce = lambda: os.kill(os.getppid(), signal.SIGUSR1)
            serve_process(
                self.func,
                self.function_dir,
                self.settings,
                self.grace,
                listen=lambda: listening_socket(
                    self.settings.host, self.settings.port, reuse_port=True
                ),
                ready_wait=_READY_WAIT_SECONDS,
            )
        except BaseException:
            log.exception("worker failed")
            code = 1
        finally:
            os._exit(code)

    def _stop(self, signum: int, _frame: Any) -> None:
        if self.stopping:
            return
        self.stopping = True
        log.info("stopping workers", extra={"signal": signum, "workers": len(self.children)})
        for pid in list(self.children):
            _signal(pid, signal.SIGTERM)
        deadline = time.monotonic() + self.grace + 5
        signal.signal(
            signal.SIGALRM, lambda *_: [_signal(p, signal.SIGKILL) for p in list(self.children)]
        )
        signal.alarm(max(1, int(deadline - time.monotonic())))

    def _relay(self, _signum: int, _frame: Any) -> None:
        for pid in list(self.children):
            _signal(pid, signal.SIGUSR1)


def _signal(pid: int, signum: int) -> None:
    with contextlib.suppress(ProcessLookupError):
        os.kill(pid, signum)


def _mark_dead(pid: int) -> None:
    if metrics_multiprocess_dir():
        from prometheus_client import multiprocess

        multiprocess.mark_process_dead(pid)
