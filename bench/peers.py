"""The servers `make bench` compares the inference function with, each in a virtualenv of its own.

KServe's Python ModelServer and MLServer are what a Knative user would pick instead of this
function. Neither is a dependency of the project: the bench creates a virtualenv per peer on first
use (default ~/.cache/lepton-bench/peers/<name>, kept between runs and re-created when its
requirements change), installs the peer with pip and runs a minimal custom predictor of ours in
it (bench/kserve_predictor.py, bench/mlserver_runtime.py) on the same model.tflite.

`python bench/peers.py kserve` installs one ahead of time: `make test` does so for KServe, whose
own client the drop-in tests run (tests/lepton_runtime/inference/test_clients.py).
"""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path

BENCH = Path(__file__).resolve().parent
DEFAULT_ROOT = Path.home() / ".cache" / "lepton-bench" / "peers"


@dataclass(frozen=True)
class Peer:
    name: str
    title: str
    requirements: tuple[str, ...]


KSERVE = Peer(
    "kserve",
    "KServe ModelServer",
    ("kserve==0.21.0", "ai-edge-litert>=1.2", "pillow>=10.3"),
)
MLSERVER = Peer(
    "mlserver",
    "MLServer",
    # MLServer 1.7.1's inference workers call asyncio.get_event_loop() before any loop exists,
    # which uvloop 0.22 turned into an error: its workers die at start with a newer uvloop.
    ("mlserver==1.7.1", "uvloop<0.22", "ai-edge-litert>=1.2", "pillow>=10.3"),
)


def ensure(peer: Peer, root: Path = DEFAULT_ROOT, log=print) -> Path | None:
    """The Python of `peer`'s virtualenv, created and installed when needed; None (with the
    reason logged) when it cannot be installed here."""
    venv = root / peer.name
    python = venv / "bin" / "python"
    stamp = venv / "lepton-bench.json"
    wanted = {"requirements": list(peer.requirements), "python": sys.version.split()[0]}
    if python.exists() and stamp.exists() and json.loads(stamp.read_text()) == wanted:
        return python
    log(f"installing {peer.title} into {venv} (once; pip, a minute or two)")
    shutil.rmtree(venv, ignore_errors=True)
    venv.parent.mkdir(parents=True, exist_ok=True)
    try:
        subprocess.run([sys.executable, "-m", "venv", str(venv)], check=True, capture_output=True)
        subprocess.run(
            [
                str(python),
                *("-m", "pip", "install", "--quiet", "--disable-pip-version-check"),
                *peer.requirements,
            ],
            check=True,
            capture_output=True,
            text=True,
            timeout=1800,
        )
    except (subprocess.CalledProcessError, subprocess.TimeoutExpired) as exc:
        detail = (getattr(exc, "stderr", None) or str(exc)).strip().splitlines()[-1:]
        log(f"{peer.title} could not be installed: {' '.join(detail)}")
        shutil.rmtree(venv, ignore_errors=True)
        return None
    stamp.write_text(json.dumps(wanted))
    return python


def kserve_command(
    python: Path, model_file: Path, port: int, workers: int, logs: Path
) -> list[str]:
    """KServe's ModelServer on `port` with `workers` processes, each loading the model.

    It runs as lean as its options allow, as ours does in the rows compared with it (its
    request log off; one more row has it on): no gRPC server (ours serves none), no
    per-request latency log line, uvicorn's access log off.
    """
    logs.write_text(json.dumps(_quiet_logging()))
    return [
        str(python),
        str(BENCH / "kserve_predictor.py"),
        "--model_file",
        str(model_file),
        "--model_name",
        "digits",
        "--http_port",
        str(port),
        "--workers",
        str(workers),
        "--enable_grpc",
        "false",
        "--enable_latency_logging",
        "false",
        "--log_config_file",
        str(logs),
    ]


def _quiet_logging() -> dict:
    return {
        "version": 1,
        "disable_existing_loggers": False,
        "handlers": {"stderr": {"class": "logging.StreamHandler", "stream": "ext://sys.stderr"}},
        "loggers": {
            name: {"handlers": ["stderr"], "level": "WARNING", "propagate": False}
            for name in ("kserve", "kserve.trace", "uvicorn", "uvicorn.error", "uvicorn.access")
        },
    }


def mlserver_command(
    python: Path, model_file: Path, port: int, workers: int, folder: Path, ports: tuple[int, int]
) -> list[str]:
    """`mlserver start` on a folder holding the runtime and its settings: `workers` parallel
    inference workers each loading the model, behind MLServer's one HTTP process."""
    folder.mkdir(parents=True, exist_ok=True)
    shutil.copy(BENCH / "mlserver_runtime.py", folder / "mlserver_runtime.py")
    grpc_port, metrics_port = ports
    (folder / "settings.json").write_text(
        json.dumps(
            {
                "host": "127.0.0.1",
                "http_port": port,
                "grpc_port": grpc_port,
                "metrics_port": metrics_port,
                "parallel_workers": workers,
                "debug": False,
            }
        )
    )
    (folder / "model-settings.json").write_text(
        json.dumps(
            {
                "name": "digits",
                "implementation": "mlserver_runtime.DigitsRuntime",
                "parameters": {"uri": str(model_file)},
            }
        )
    )
    return [str(python.parent / "mlserver"), "start", str(folder)]


PEERS = {peer.name: peer for peer in (KSERVE, MLSERVER)}


def main(argv: list[str]) -> int:
    """Install the named peers (all by default); 1 when one cannot be installed here."""
    names = argv or list(PEERS)
    if unknown := [name for name in names if name not in PEERS]:
        print(f"unknown peers {unknown}; known: {', '.join(PEERS)}", file=sys.stderr)
        return 2
    failed = [name for name in names if ensure(PEERS[name], log=print) is None]
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
