"""The default model fetched by a child process while the inference server imports.

A cold start spends ~0.5 s importing (numpy, PIL, uvicorn, ...) on one core, then each worker
would import boto3, make an S3 client and read latest.json, metadata.json and the artifact. So
`serve infer` forks one child first, while the process is still single-threaded and small: it
imports only storage and the model store, reads the default model's pointer (or its pin) and
metadata.json, downloads the runtime's artifact into the verified model cache (as the registry
does: checked against metadata's size and sha256, written whole), writes metadata.json beside it,
answers (model, version, metadata) on a pipe and exits. Where the endpoint allows (MinIO, the
local stack) the three reads are signed by botocore without a boto3 client (signed_gets.py).
The supervisor collects the answer once it has imported everything, before forking its
workers, and hands it to the default ModelRegistry (`adopt`): the first load reads nothing
from S3 and needs no boto3.

Nothing depends on it: a child that fails, finds nothing published or is not done within
`_COLLECT_SECONDS` just means no handoff (the registry loads through S3 as without it). The
handoff serves the first load only; the registry's next poll reads latest.json as always.
"""

from __future__ import annotations

import contextlib
import json
import logging
import os
import select
import signal
import time
from dataclasses import asdict, dataclass
from typing import Any

from lepton_runtime.settings import Settings

log = logging.getLogger("lepton.models")

# How long the supervisor waits, once it has loaded the function, for a child still at work.
_COLLECT_SECONDS = 5.0


@dataclass(frozen=True)
class Prefetched:
    """A model version whose artifact is in the verified cache, and its metadata.json."""

    name: str
    version: str
    metadata: dict[str, Any]


def prefetch(settings: Settings) -> Prefetched | None:
    """Fetch the default model's version (the pin, else what latest.json names) into the cache;
    None when nothing is published. Raises what storage or the metadata check raise."""
    from lepton_runtime.models.store import ModelCache, ModelStore
    from lepton_runtime.signed_gets import SignedGets
    from lepton_runtime.storage import Storage

    # Three reads do not need boto3's client (~0.15 s to make): botocore's signer does them,
    # through the same bounds and checks (see signed_gets.py), where the endpoint allows.
    reader = SignedGets.from_settings(settings)
    storage = Storage(client=reader) if reader else Storage.from_settings(settings)
    store = ModelStore(storage, settings.models)
    name = settings.model_name
    version = settings.model_version
    if not version:
        pointer = store.pointer(name)
        if pointer is None:
            return None
        version = pointer.version
    raw = store.metadata(name, version)
    ModelCache(settings.model_cache_dir).fetch_version(store, name, version, raw, settings.runtime)
    return Prefetched(name, version, raw)


class Prefetch:
    """A child process running `prefetch`; its answer (JSON) comes on a pipe."""

    def __init__(self, pid: int, fd: int) -> None:
        self.pid = pid
        self._fd: int | None = fd
        self._started = time.monotonic()

    @classmethod
    def start(cls, settings: Settings) -> Prefetch | None:
        """Fork the child (call it while the process has one thread); None if fork failed."""
        parent = os.getpid()
        try:
            read, write = os.pipe()
            pid = os.fork()
        except OSError as exc:
            log.info("model prefetch not started", extra={"error": str(exc)})
            return None
        if pid == 0:  # the child: never returns
            os.close(read)
            _child(settings, write, parent)
        os.close(write)
        return cls(pid, read)

    def collect(self, timeout: float = _COLLECT_SECONDS) -> Prefetched | None:
        """The child's answer, waiting at most `timeout` seconds; None if it failed, found
        nothing or is not done (it is then killed). The child is reaped either way."""
        data = b""
        fd = self._fd
        began = time.monotonic()
        deadline = began + timeout
        done = False
        try:
            while fd is not None:
                left = deadline - time.monotonic()
                if left <= 0 or not select.select([fd], [], [], left)[0]:
                    break
                chunk = os.read(fd, 65536)
                if not chunk:
                    done = True
                    break
                data += chunk
        except OSError as exc:
            log.info("model prefetch unreadable", extra={"error": str(exc)})
        self.close()
        if not done:
            log.info("model prefetch not done in time", extra={"timeout": timeout})
            return None
        # `waited`: how long the start waited for the child (0 when it was done first).
        return self._parse(data, round(time.monotonic() - began, 3))

    def hand_to(self, service: Any, timeout: float = _COLLECT_SECONDS) -> bool:
        """Collect the answer and give it to `service`'s default registry; True if adopted."""
        found = self.collect(timeout)
        adopt = getattr(getattr(service, "registry", None), "adopt", None)
        return bool(found is not None and adopt is not None and adopt(found))

    def close(self) -> None:
        """Kill the child if it still runs, reap it, close the pipe (idempotent)."""
        if self._fd is not None:
            os.close(self._fd)
            self._fd = None
        if self.pid:
            with contextlib.suppress(ProcessLookupError):
                if os.waitpid(self.pid, os.WNOHANG) == (0, 0):
                    os.kill(self.pid, signal.SIGKILL)
                    os.waitpid(self.pid, 0)
            self.pid = 0

    def _parse(self, data: bytes, waited: float) -> Prefetched | None:
        elapsed = round(time.monotonic() - self._started, 3)
        try:
            answer = json.loads(data) if data else {"error": "the prefetch ended without answer"}
            if "error" in answer:
                log.info("no model prefetched", extra={"reason": answer["error"]})
                return None
            found = Prefetched(str(answer["name"]), str(answer["version"]), answer["metadata"])
        except (ValueError, TypeError, KeyError) as exc:
            log.info("no model prefetched", extra={"reason": f"bad answer: {exc!r}"})
            return None
        log.info(
            "model prefetched",
            extra={
                "model": found.name,
                "version": found.version,
                "seconds": elapsed,
                "waited": waited,
            },
        )
        return found


def _child(settings: Settings, fd: int, parent: int) -> None:
    """The prefetch process: fetch, answer on `fd`, exit (never returns, runs no atexit)."""
    from lepton_runtime.http.processes import die_with_parent

    code = 1
    try:
        for signum in (signal.SIGTERM, signal.SIGINT):
            signal.signal(signum, signal.SIG_DFL)
        die_with_parent(signal.SIGKILL)  # a supervisor killed with -9 takes it along
        if os.getppid() != parent:  # the parent died before prctl took effect
            return
        try:
            found = prefetch(settings)
            nothing = {"error": f"nothing published for {settings.model_name!r}"}
            answer: dict[str, Any] = asdict(found) if found else nothing
        except Exception as exc:  # any failure only means no handoff
            answer = {"error": f"{type(exc).__name__}: {exc}"}
        data = json.dumps(answer).encode()
        while data:
            data = data[os.write(fd, data) :]
        code = 0
    except BaseException:  # a child must reach os._exit whatever happens
        pass
    finally:
        os._exit(code)
