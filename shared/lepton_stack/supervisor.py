"""Child processes of the local stack: started, health-checked, restarted when they die."""

from __future__ import annotations

import logging
import os
import signal
import subprocess
import threading
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import requests

from lepton_runtime.http.processes import die_with_parent

log = logging.getLogger("lepton.stack")


@dataclass
class Part:
    """One supervised process."""

    name: str
    command: Sequence[str]
    env: dict[str, str]
    health_url: str | None
    log_file: Path
    restart: bool = True
    process: subprocess.Popen | None = None
    restarts: int = 0
    started_at: float = 0.0
    _backoff: float = field(default=0.5, repr=False)

    @property
    def pid(self) -> int | None:
        return self.process.pid if self.process else None

    def start(self) -> None:
        self.log_file.parent.mkdir(parents=True, exist_ok=True)
        stream = self.log_file.open("ab", buffering=0)
        self.process = subprocess.Popen(
            list(self.command),
            env={**os.environ, **self.env},
            stdout=stream,
            stderr=subprocess.STDOUT,
            stdin=subprocess.DEVNULL,
            preexec_fn=die_with_parent,
            # Out of the terminal's foreground job: Ctrl-C reaches the supervisor alone, which
            # stops the parts in order (the S3 endpoint last, after the buckets are kept).
            process_group=0,
        )
        stream.close()
        self.started_at = time.monotonic()
        log.info("started", extra={"part": self.name, "pid": self.process.pid})

    def alive(self) -> bool:
        return self.process is not None and self.process.poll() is None

    def healthy(self, timeout: float = 1.0) -> bool:
        if not self.alive():
            return False
        if self.health_url is None:
            return True
        try:
            return requests.get(self.health_url, timeout=timeout).status_code == 200
        except requests.RequestException:
            return False

    def wait_healthy(self, timeout: float) -> None:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.healthy():
                return
            if not self.alive():
                code = self.process.returncode if self.process else "?"
                raise RuntimeError(f"{self.name} exited with code {code}; see {self.log_file}")
            time.sleep(0.1)
        raise RuntimeError(
            f"{self.name} did not become healthy in {timeout:.0f} s; see {self.log_file}"
        )

    def stop(self, grace: float = 10.0) -> None:
        if not self.alive():
            return
        assert self.process is not None
        self.process.send_signal(signal.SIGTERM)
        try:
            self.process.wait(grace)
        except subprocess.TimeoutExpired:
            self.process.kill()
            self.process.wait(5)


class Supervisor:
    """Keeps the parts running: a part that exits is started again, with backoff."""

    def __init__(self, parts: list[Part], on_change: Callable[[], None] | None = None) -> None:
        self.parts = parts
        self._stop = threading.Event()
        self._on_change = on_change

    def part(self, name: str) -> Part:
        return next(p for p in self.parts if p.name == name)

    def watch(self, interval: float = 0.25) -> None:
        """Restart dead parts until `stop()`."""
        while not self._stop.wait(interval):
            for part in self.parts:
                if part.alive() or not part.restart or self._stop.is_set():
                    continue
                code = part.process.returncode if part.process else None
                uptime = time.monotonic() - part.started_at
                part._backoff = 0.5 if uptime > 30 else min(part._backoff * 2, 10.0)
                log.warning(
                    "part exited; restarting",
                    extra={"part": part.name, "code": code, "in": part._backoff},
                )
                if self._stop.wait(part._backoff):
                    return
                part.restarts += 1
                part.start()
                if self._on_change:
                    self._on_change()

    def stop(self) -> None:
        self._stop.set()

    def stop_all(self) -> None:
        """Stop parts in reverse start order (functions before the S3 endpoint)."""
        self._stop.set()
        for part in reversed(self.parts):
            part.stop()
