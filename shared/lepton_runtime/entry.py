"""`lepton-function`: what a function image runs, without the development stack.

    lepton-function serve infer|train [--function-dir DIR]   the function server on $PORT
    lepton-function train-job [--event-file FILE]            one JobSink training

`lepton serve` and `lepton train-job` (the developer's CLI) run the same code.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from lepton_runtime.errors import ConfigurationError
from lepton_runtime.settings import Settings

JOBSINK_EVENT_FILE = "/etc/jobsink-event/event"  # where JobSink mounts the event
# The checkout's functions/, for `lepton serve` from a clone (an image sets LEPTON_FUNCTIONS_DIR).
_CHECKOUT_FUNCTIONS = Path(__file__).resolve().parents[2] / "functions"


def _fail(message: str, code: int = 2) -> int:
    print(f"lepton-function: {message}", file=sys.stderr)
    return code


def function_settings(log: bool = True) -> Settings:
    """Settings from the environment, logging configured (unless `log` is False);
    SystemExit(2) when invalid."""
    try:
        settings = Settings.from_env()
    except ConfigurationError as exc:
        raise SystemExit(_fail(f"configuration error: {exc}")) from exc
    if log:
        configure_logging(settings)
    return settings


def configure_logging(settings: Settings) -> None:
    from lepton_runtime.logs import configure

    configure(settings.log_level)


def function_dir(settings: Settings, role: str) -> Path:
    """LEPTON_FUNCTIONS_DIR/<role> (./functions by default), else the checkout's."""
    candidates = [settings.functions_dir / role, _CHECKOUT_FUNCTIONS / role]
    return next((c for c in candidates if (c / "func.py").exists()), candidates[-1])


def serve(role: str, directory: str | None = None) -> int:
    from lepton_runtime.http.processes import quiet_collector

    quiet_collector()  # until the server has loaded (it calls settle_heap); the prefetch too
    settings = function_settings(log=False)
    folder = Path(directory) if directory else function_dir(settings, role)
    if not (folder / "func.py").exists():
        return _fail(f"{folder}/func.py not found; pass --function-dir")
    prefetch = None
    if role == "infer":  # fetch the model on the other core while this one imports the server
        from lepton_runtime.inference.prefetch import Prefetch

        # As early as can be: the child's boto3 import and S3 reads are a start's longest path.
        prefetch = Prefetch.start(settings)
    configure_logging(settings)
    try:
        from lepton_runtime.http.workers import serve as serve_workers

        serve_workers(folder, settings, prefetch=prefetch)
    finally:
        if prefetch is not None:
            prefetch.close()
    return 0


def train_job(event_file: str) -> int:
    from lepton_runtime.storage import Storage
    from lepton_runtime.training.job import run_job
    from lepton_runtime.training.service import TrainingService

    settings = function_settings()
    return run_job(TrainingService(settings, Storage.from_settings(settings)), Path(event_file))


def add_commands(sub: argparse._SubParsersAction) -> None:
    """The `serve` and `train-job` subcommands (shared with the `lepton` CLI)."""
    parser = sub.add_parser(
        "serve",
        help="run one function server on $PORT",
        description="Serve a function as its container does, on $PORT (default 8080), with "
        "LEPTON_WORKERS processes (default: one per CPU; the training function uses one).",
    )
    parser.add_argument("role", choices=("infer", "train"), help="which function")
    parser.add_argument("--function-dir", help="folder holding func.py (default functions/ROLE)")
    parser.set_defaults(func=lambda args: serve(args.role, args.function_dir))
    job = sub.add_parser(
        "train-job",
        help="train once for the CloudEvent in a file (JobSink)",
        description="Train once for the CloudEvent in a file, as a Knative JobSink Job does. "
        "Exit codes: 0 done, 1 transient failure (retry the pod), 2 permanent failure.",
    )
    job.add_argument(
        "--event-file",
        default=JOBSINK_EVENT_FILE,
        help=f"the event (default {JOBSINK_EVENT_FILE}, JobSink's mount path)",
    )
    job.set_defaults(func=lambda args: train_job(args.event_file))


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="lepton-function", description=__doc__.splitlines()[0])
    add_commands(parser.add_subparsers(dest="command", required=True))
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    return int(args.func(args))


if __name__ == "__main__":
    sys.exit(main())
