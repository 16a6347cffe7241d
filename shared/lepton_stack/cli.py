"""The `lepton` command: run the local stack and talk to it.

lepton up [--detach]        start the whole pipeline (foreground, Ctrl-C stops it)
lepton down                 stop a detached stack
lepton status               parts, model versions, queue depths, dead letters
lepton env                  `export NAME=value` lines for a function container / your shell
lepton serve infer|train    run one function server on $PORT, as its container does
lepton predict FILE...      classify files over HTTP
lepton put FILE... [--wait] upload images, show results as they land
lepton train DIR            archive a <label>/<image> folder, upload it, follow the training
lepton logs [PART] [-f]     show a part's log
"""

from __future__ import annotations

import argparse
import io
import json
import mimetypes
import os
import shlex
import signal
import subprocess
import sys
import time
import zipfile
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

from lepton_stack.state import (
    Ports,
    StackLayout,
    StackNotRunningError,
    pid_alive,
    read_state,
    running_state,
)


def _layout(args: argparse.Namespace) -> StackLayout:
    defaults = Ports()
    ports = Ports(
        **{
            name: getattr(args, f"{name}_port", None) or getattr(defaults, name)
            for name in ("s3", "router", "infer", "train", "webhook")
        }
    )
    return StackLayout(root=Path(args.state_dir).resolve(), ports=ports)


def _fail(message: str, code: int = 1) -> int:
    print(f"lepton: {message}", file=sys.stderr)
    return code


# --- up / down ----------------------------------------------------------------------------------


def cmd_up(args: argparse.Namespace) -> int:
    from lepton_runtime.logs import configure
    from lepton_stack.stack import LocalStack, StackError, ready_message

    layout = _layout(args)
    if args.detach:
        return _up_detached(args, layout)
    configure("WARNING", sys.stderr)
    stack = LocalStack(layout)
    say = (lambda msg: print(f"  {msg}", flush=True)) if not args.quiet else (lambda _m: None)
    print("Starting the Lepton functions stack ...", flush=True)
    try:
        stack.start(progress=say)
        from lepton_stack.stack import write_samples

        write_samples(layout)
        print(ready_message(layout, stack.model_version), flush=True)
        stack.run()
    except StackError as exc:
        return _fail(str(exc))
    except KeyboardInterrupt:
        pass
    finally:
        print("Stopping ...", flush=True)
        stack.shutdown()
    print("Stopped.")
    return 0


def _up_detached(args: argparse.Namespace, layout: StackLayout) -> int:
    from lepton_stack.stack import ready_message

    try:
        state = read_state(layout)
        if pid_alive(state.get("pid")):
            return _fail(f"a stack is already running (pid {state['pid']}); `lepton down` first")
    except StackNotRunningError:
        pass
    layout.logs.mkdir(parents=True, exist_ok=True)
    if layout.state_file.exists():
        layout.state_file.unlink()
    log = (layout.logs / "stack.log").open("ab")
    child = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "lepton_stack.cli",
            "--state-dir",
            str(layout.root),
            "up",
            "--quiet",
            *(f"--{name}-port={port}" for name, port in vars(layout.ports).items()),
        ],
        stdout=log,
        stderr=subprocess.STDOUT,
        stdin=subprocess.DEVNULL,
        start_new_session=True,
    )
    deadline = time.monotonic() + args.timeout
    print("Starting the Lepton functions stack in the background ...", flush=True)
    while time.monotonic() < deadline:
        if child.poll() is not None:
            return _fail(f"the stack failed to start; see {layout.logs / 'stack.log'}")
        try:
            state = read_state(layout)
        except (StackNotRunningError, ValueError):
            state = {}
        if state.get("status") == "ready" and state.get("pid") == child.pid:
            print(ready_message(layout, state.get("model_version")))
            return 0
        time.sleep(0.3)
    child.send_signal(signal.SIGTERM)
    return _fail(f"the stack was not ready after {args.timeout:.0f} s; see {layout.logs}")


def cmd_down(args: argparse.Namespace) -> int:
    layout = _layout(args)
    try:
        state = read_state(layout)
    except StackNotRunningError:
        print("No local stack is running.")
        return 0
    pid = state.get("pid")
    if not pid_alive(pid):  # stopped already: the recorded pids may belong to others by now
        print("No local stack is running.")
        return 0
    pids = [p["pid"] for p in state.get("parts", {}).values() if p.get("pid")]
    if pid_alive(pid):
        os.kill(pid, signal.SIGTERM)
        deadline = time.monotonic() + 30
        while pid_alive(pid) and time.monotonic() < deadline:
            time.sleep(0.1)
        if pid_alive(pid):
            os.kill(pid, signal.SIGKILL)
    for child in pids:  # the supervisor stops them; make sure nothing is left behind
        deadline = time.monotonic() + 10
        while pid_alive(child) and time.monotonic() < deadline:
            time.sleep(0.1)
        if pid_alive(child):
            os.kill(child, signal.SIGKILL)
    print("Stopped the local stack.")
    return 0


# --- env / serve --------------------------------------------------------------------------------


def cmd_env(args: argparse.Namespace) -> int:
    layout = _layout(args)
    try:
        state = running_state(layout)
    except StackNotRunningError as exc:
        return _fail(str(exc))
    env = layout.function_env(args.role)
    env.pop("PORT", None) if args.role == "shell" else None
    # The running stack's addresses, which `lepton up --*-port` may have moved off the defaults.
    env["AWS_ENDPOINT_URL"] = env["AWS_ENDPOINT_URL_S3"] = state["s3_endpoint"]
    for name, bucket in state.get("buckets", {}).items():
        env[f"LEPTON_{name.upper()}_BUCKET"] = bucket
    if "PORT" in env and args.role in state.get("functions", {}):
        env["PORT"] = str(urlsplit(state["functions"][args.role]).port)
    env["LEPTON_MODEL_NAME"] = state.get("model", env["LEPTON_MODEL_NAME"])
    for name, value in sorted(env.items()):
        print(f"export {name}={shlex.quote(value)}")
    return 0


def _function_settings() -> Any:
    """The function's Settings from the environment, with logging configured; SystemExit(2)
    with the reason when the environment is invalid."""
    from lepton_runtime.errors import ConfigurationError
    from lepton_runtime.logs import configure
    from lepton_runtime.settings import Settings

    try:
        settings = Settings.from_env()
    except ConfigurationError as exc:
        raise SystemExit(_fail(f"configuration error: {exc}", 2)) from exc
    configure(settings.log_level)
    return settings


def cmd_serve(args: argparse.Namespace) -> int:
    from lepton_runtime.processes import quiet_collector

    quiet_collector()  # until the server has loaded (it calls settle_heap)
    from lepton_runtime.workers import serve

    settings = _function_settings()
    function_dir = (
        Path(args.function_dir) if args.function_dir else _function_dir(settings, args.role)
    )
    if not (function_dir / "func.py").exists():
        return _fail(f"{function_dir}/func.py not found; pass --function-dir", 2)
    serve(function_dir, settings)
    return 0


def cmd_train_job(args: argparse.Namespace) -> int:
    from lepton_runtime.storage import Storage
    from lepton_runtime.training.job import run_job
    from lepton_runtime.training.service import TrainingService

    settings = _function_settings()
    return run_job(
        TrainingService(settings, Storage.from_settings(settings)), Path(args.event_file)
    )


def _function_dir(settings: Any, role: str) -> Path:
    """LEPTON_FUNCTIONS_DIR/<role> (./functions by default), else this checkout's."""
    from lepton_stack.stack import repo_root

    candidates = [settings.functions_dir / role, repo_root() / "functions" / role]
    return next((c for c in candidates if (c / "func.py").exists()), candidates[-1])


# --- talking to the stack -----------------------------------------------------------------------


def _state_or_exit(args: argparse.Namespace) -> dict[str, Any]:
    try:
        return running_state(_layout(args))
    except StackNotRunningError as exc:
        raise SystemExit(_fail(str(exc))) from exc


def cmd_predict(args: argparse.Namespace) -> int:
    import requests

    url = args.url or _state_or_exit(args)["functions"]["infer"]
    status = 0
    for name in args.files:
        path = Path(name)
        if not path.is_file():
            status = _fail(f"{path}: no such file")
            continue
        content_type = mimetypes.guess_type(path.name)[0] or "application/octet-stream"
        try:
            response = requests.post(
                url + "/",
                data=path.read_bytes(),
                headers={"Content-Type": content_type},
                timeout=30,
            )
        except requests.RequestException as exc:
            return _fail(f"cannot reach the inference function at {url}: {exc}")
        body = response.json() if response.content else {}
        if args.json:
            print(json.dumps({"file": str(path), "status": response.status_code, **body}))
        elif response.ok:
            best = body["predictions"][0]
            print(
                f"{path}: {best['label']} ({best['confidence']:.1%})  "
                f"model {body['model']['name']}@{body['model']['version']}"
            )
        else:
            error = body.get("error", {})
            print(
                f"{path}: error {response.status_code} {error.get('code')}: {error.get('message')}"
            )
            status = 1
    return status


def _client(state: dict[str, Any], service: str) -> Any:
    """A boto3 client for the running stack's S3 or SQS endpoint."""
    import boto3
    from botocore.config import Config

    return boto3.client(
        service,
        endpoint_url=state["s3_endpoint"],
        region_name=state["region"],
        aws_access_key_id=state["access_key"],
        aws_secret_access_key=state["secret_key"],
        config=Config(s3={"addressing_style": "path"}),
    )


def _s3(state: dict[str, Any]) -> Any:
    return _client(state, "s3")


def cmd_put(args: argparse.Namespace) -> int:
    from tqdm import tqdm

    state = _state_or_exit(args)
    s3 = _s3(state)
    uploads, results = state["buckets"]["uploads"], state["buckets"]["results"]
    keys = []
    for name in args.files:
        path = Path(name)
        if not path.is_file():
            return _fail(f"{path}: no such file")
        key = f"{args.prefix.rstrip('/')}/{path.name}"
        etag = s3.put_object(
            Bucket=uploads,
            Key=key,
            Body=path.read_bytes(),
            ContentType=mimetypes.guess_type(path.name)[0] or "application/octet-stream",
        )["ETag"].strip('"')
        keys.append((key, etag))
        if not args.wait:
            print(f"uploaded s3://{uploads}/{key}")
    if not args.wait:
        return 0
    pending = dict(keys)
    deadline = time.monotonic() + args.timeout
    with tqdm(total=len(keys), desc="results", unit="img", file=sys.stderr) as bar:
        while pending and time.monotonic() < deadline:
            for key, etag in list(pending.items()):
                try:
                    body = s3.get_object(Bucket=results, Key=f"{key}.json")["Body"].read()
                except s3.exceptions.NoSuchKey:
                    continue
                result = json.loads(body)
                if result.get("source", {}).get("etag") != etag:
                    continue  # the result of an earlier upload to the same key
                del pending[key]
                bar.update(1)
                if "error" in result:
                    line = f"{key}: failed: {result['error'].get('message')}"
                else:
                    best = result["predictions"][0]
                    line = f"{key}: {best['label']} ({best['confidence']:.1%})"
                bar.write(f"{line}  -> s3://{results}/{key}.json")
            if pending:
                time.sleep(0.2)
    if pending:
        return _fail(
            f"{len(pending)} result(s) did not land in {args.timeout:.0f} s: "
            f"check `lepton status` and `lepton logs`"
        )
    return 0


def _archive_folder(folder: Path) -> bytes:
    buffer = io.BytesIO()
    with zipfile.ZipFile(buffer, "w", zipfile.ZIP_DEFLATED) as archive:
        for path in sorted(folder.rglob("*")):
            if path.is_file():
                archive.write(path, path.relative_to(folder).as_posix())
    return buffer.getvalue()


def _dataset_limits() -> Any:
    """The training function's dataset limits, from the same LEPTON_* settings."""
    from lepton_runtime.errors import ConfigurationError
    from lepton_runtime.settings import Settings
    from lepton_runtime.training.service import dataset_limits

    try:
        return dataset_limits(Settings.from_env())
    except ConfigurationError as exc:
        raise SystemExit(_fail(f"configuration error: {exc}", 2)) from exc


def cmd_train(args: argparse.Namespace) -> int:
    from tqdm import tqdm

    from lepton_model.datasets import scan_directory
    from lepton_model.errors import DatasetError

    state = _state_or_exit(args)
    folder = Path(args.folder)
    if not folder.is_dir():
        return _fail(f"{folder} is not a folder of <label>/<image> files")
    name = args.name or state["model"]
    limits = _dataset_limits()
    beyond = f"{folder} is beyond the training function's dataset limits"
    try:
        scan_directory(folder, limits)
    except DatasetError as exc:
        return _fail(f"{beyond}: {exc}")
    data = _archive_folder(folder)
    if len(data) > limits.max_archive_bytes:
        too_large = limits.violation("max_archive_bytes", f"its zip is {len(data)} bytes")
        return _fail(f"{beyond}: {too_large}")
    s3 = _s3(state)
    key = f"datasets/{name}.zip"
    s3.put_object(
        Bucket=state["buckets"]["uploads"], Key=key, Body=data, ContentType="application/zip"
    )
    print(f"uploaded {len(data)} bytes to s3://{state['buckets']['uploads']}/{key}; training ...")
    log_path = Path(state["parts"]["train"]["log"])
    offset = log_path.stat().st_size if log_path.exists() else 0
    lettered = _train_dead_letters(state)
    deadline = time.monotonic() + args.timeout
    bar = tqdm(desc=f"training {name}", unit="epoch", file=sys.stderr)
    try:
        while time.monotonic() < deadline:
            offset, lines = _read_new(log_path, offset)
            for entry in lines:
                if entry.get("model") != name:
                    continue
                if entry.get("message") == "epoch":
                    bar.update(1)
                    bar.set_postfix(acc=entry.get("accuracy"), val_acc=entry.get("val_accuracy"))
                elif entry.get("message") == "training failed":
                    bar.close()
                    return _fail(f"training failed: {entry.get('error')}")
                elif entry.get("message", "").startswith("duplicate training request"):
                    bar.close()
                    print(
                        f"these images were already trained into {name} version "
                        f"{entry.get('version')}; nothing new to train."
                    )
                    return 0
                elif entry.get("message") in ("model published", "model stored, not promoted"):
                    bar.close()
                    live = entry["message"] == "model published"
                    print(
                        f"{name} version {entry.get('version')}: validation accuracy "
                        f"{entry.get('val_accuracy', 0):.2%}; "
                        + ("now live." if live else f"not promoted ({entry.get('reason')}).")
                    )
                    return 0
            if _train_dead_letters(state) > lettered:
                bar.close()
                return _fail(
                    f"the dataset event was dead-lettered (see {state['dead_letters']} "
                    "and `lepton logs train`)"
                )
            time.sleep(0.5)
    finally:
        bar.close()
    return _fail(f"no published model after {args.timeout:.0f} s; see `lepton logs train`")


def _train_dead_letters(state: dict[str, Any]) -> int:
    """Dead letters of the dataset trigger so far, from the router (0 if it does not answer)."""
    import requests

    try:
        status = requests.get(state["router"] + "/status", timeout=2).json()
    except (requests.RequestException, ValueError):
        return 0
    return int(status.get("dead_letters", {}).get("lepton-train-datasets", 0))


def _read_new(path: Path, offset: int) -> tuple[int, list[dict[str, Any]]]:
    if not path.exists():
        return offset, []
    with path.open("rb") as stream:
        stream.seek(offset)
        chunk = stream.read()
    complete = chunk.rfind(b"\n") + 1
    entries = []
    for line in chunk[:complete].splitlines():
        try:
            entries.append(json.loads(line))
        except ValueError:
            continue
    return offset + complete, entries


def cmd_status(args: argparse.Namespace) -> int:
    import requests

    layout = _layout(args)
    try:
        state = running_state(layout)
    except StackNotRunningError as exc:
        return _fail(str(exc))
    print(f"stack: {state['status']} (supervisor pid {state['pid']})")
    for name, part in state["parts"].items():
        alive = "up" if pid_alive(part.get("pid")) else "DOWN"
        print(f"  {name:<7} {alive:<5} pid {part.get('pid')}  restarts {part.get('restarts', 0)}")
    s3 = _s3(state)
    models_bucket, model = state["buckets"]["models"], state["model"]
    try:
        live = json.loads(
            s3.get_object(Bucket=models_bucket, Key=f"{model}/latest.json")["Body"].read()
        )["version"]
    except Exception:
        live = None
    print(f"models (s3://{models_bucket}/{model}/):")
    paginator = s3.get_paginator("list_objects_v2")
    for page in paginator.paginate(Bucket=models_bucket, Prefix=f"{model}/", Delimiter="/"):
        for prefix in page.get("CommonPrefixes", []):
            version = prefix["Prefix"].split("/")[-2]
            if version == "runs":
                continue
            try:
                meta = json.loads(
                    s3.get_object(Bucket=models_bucket, Key=f"{prefix['Prefix']}metadata.json")[
                        "Body"
                    ].read()
                )
                accuracy = f"val_accuracy {meta['metrics']['val_accuracy']:.2%}"
            except Exception:
                accuracy = "(incomplete)"
            marker = "  <- live" if version == live else ""
            print(f"  {version}  {accuracy}{marker}")
    sqs = _client(state, "sqs")
    for label, url in state.get("queues", {}).items():
        attrs = sqs.get_queue_attributes(
            QueueUrl=url,
            AttributeNames=["ApproximateNumberOfMessages", "ApproximateNumberOfMessagesNotVisible"],
        )["Attributes"]
        print(
            f"queue {label.replace('_url', ''):<6} waiting {attrs['ApproximateNumberOfMessages']}"
            f"  in flight {attrs['ApproximateNumberOfMessagesNotVisible']}"
        )
    dead = sorted(Path(state["dead_letters"]).glob("*.json"))
    print(f"dead letters: {len(dead)} in {state['dead_letters']}")
    for path in dead[-5:]:
        print(f"  {path.name}")
    try:
        router = requests.get(state["router"] + "/status", timeout=2).json()
        print(
            f"router: received {router['received']}, delivered {router['delivered']}, "
            f"retries {router['retries']}, dead-lettered {router['dead_letters']}"
        )
    except requests.RequestException:
        print("router: not answering")
    return 0


def cmd_logs(args: argparse.Namespace) -> int:
    layout = _layout(args)
    logs = layout.logs
    if not logs.exists():
        return _fail(f"no logs in {logs}; start the stack first")
    names = [args.part] if args.part else sorted(p.stem for p in logs.glob("*.log"))
    paths = [logs / f"{name}.log" for name in names]
    missing = [p for p in paths if not p.exists()]
    if missing:
        return _fail(
            f"no log {missing[0].name}; parts: "
            f"{', '.join(sorted(p.stem for p in logs.glob('*.log')))}"
        )
    if args.follow:
        os.execvp("tail", ["tail", "-n", str(args.lines), "-F", *map(str, paths)])
    for path in paths:
        if len(paths) > 1:
            print(f"==> {path} <==")
        lines = path.read_text(errors="replace").splitlines()[-args.lines :]
        print("\n".join(lines))
    return 0


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="lepton", description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument(
        "--state-dir",
        default=os.environ.get("LEPTON_STATE_DIR", ".lepton"),
        help="where the local stack keeps its state (default .lepton)",
    )
    sub = parser.add_subparsers(dest="command", required=True)

    up = sub.add_parser("up", help="start the local stack")
    up.add_argument("--detach", action="store_true", help="return once ready; stop with down")
    up.add_argument("--timeout", type=float, default=900)
    up.add_argument("--quiet", action="store_true", help=argparse.SUPPRESS)
    for name, port in vars(Ports()).items():
        up.add_argument(
            f"--{name}-port",
            type=int,
            default=None,
            help=f"port of the {name} part (default {port})",
        )
    up.set_defaults(func=cmd_up)
    sub.add_parser("down", help="stop a detached stack").set_defaults(func=cmd_down)
    sub.add_parser("status", help="parts, models, queues, dead letters").set_defaults(
        func=cmd_status
    )

    env = sub.add_parser("env", help="print the function environment for the running stack")
    env.add_argument("role", nargs="?", default="infer", choices=("infer", "train", "shell"))
    env.set_defaults(func=cmd_env)

    serve = sub.add_parser("serve", help="run one function server on $PORT")
    serve.add_argument("role", choices=("infer", "train"))
    serve.add_argument("--function-dir", help="folder holding func.py (default functions/ROLE)")
    serve.set_defaults(func=cmd_serve)

    job = sub.add_parser("train-job", help="train once for the CloudEvent in a file (JobSink)")
    job.add_argument("--event-file", default="/etc/jobsink-event/event")
    job.set_defaults(func=cmd_train_job)

    predict = sub.add_parser("predict", help="classify image files over HTTP")
    predict.add_argument("files", nargs="+")
    predict.add_argument("--url", help="inference function URL (default: the local stack's)")
    predict.add_argument("--json", action="store_true", help="print one JSON object per file")
    predict.set_defaults(func=cmd_predict)

    put = sub.add_parser("put", help="upload images to the uploads bucket")
    put.add_argument("files", nargs="+")
    put.add_argument("--wait", action="store_true", help="show results as they land")
    put.add_argument("--prefix", default="images/")
    put.add_argument("--timeout", type=float, default=120)
    put.set_defaults(func=cmd_put)

    train = sub.add_parser("train", help="train a model from a <label>/<image> folder")
    train.add_argument("folder")
    train.add_argument("--name", help="dataset and model name (default: the served model)")
    train.add_argument("--timeout", type=float, default=1800)
    train.set_defaults(func=cmd_train)

    logs = sub.add_parser("logs", help="show the logs of the stack's parts")
    logs.add_argument("part", nargs="?")
    logs.add_argument("-f", "--follow", action="store_true")
    logs.add_argument("-n", "--lines", type=int, default=50)
    logs.set_defaults(func=cmd_logs)
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    return int(args.func(args) or 0)


if __name__ == "__main__":
    sys.exit(main())
