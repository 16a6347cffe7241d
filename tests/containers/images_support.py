"""Types shared by the image tests and their fixtures."""

from __future__ import annotations

import subprocess
from dataclasses import dataclass


@dataclass(frozen=True)
class Images:
    engine: str
    infer: str
    train: str
    build_seconds: float


@dataclass(frozen=True)
class PublishedModel:
    endpoint: str
    bucket: str
    name: str
    version: str
    labels: tuple[str, ...]
    sample_png: bytes
    sample_label: str


@dataclass
class RunningContainer:
    engine: str
    container_id: str
    url: str
    started: float  # time.monotonic() just before `<engine> run`
    command: str  # the `<engine> run ...` command line, for the report

    def logs(self) -> str:
        result = subprocess.run(
            [self.engine, "logs", self.container_id], capture_output=True, text=True, check=False
        )
        return (result.stdout + result.stderr)[-4000:]
