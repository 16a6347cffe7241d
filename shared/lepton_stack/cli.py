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
import contextlib
import json
import mimetypes
import os
import shlex
import signal
import subprocess
import sys
import time
from pathlib import Path
from typing import Any
from urllib.parse import urlencode, urlsplit

from lepton_runtime.entry import add_commands
from lepton_stack.settings import state_dir
from lepton_stack.state import (
    OVERLAYS,
    Ports,
    StackLayout,
    StackLock,
    StackNotRunningError,
    StackRunningError,
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
    overlay = getattr(args, "overlay", None) or OVERLAYS[0]
    return StackLayout(root=Path(args.state_dir).resolve(), ports=ports, overlay=overlay)


def _fail(message: str, code: int = 1) -> int:
    print(f"lepton: {message}", file=sys.stderr)
    return code


# --- up / down ----------------------------------------------------------------------------------


def cmd_up(args: argparse.Namespace) -> int:
    from lepton_runtime.logs import configure
    from lepton_stack.stack import LocalStack, StackError, ready_message

    layout = _layout(args)
    if StackLock(layout).probe():
        return _already_running(layout)
    if args.detach:
        return _up_detached(args, layout)
    configure("WARNING", sys.stderr)
    stack = LocalStack(layout)
    say = (lambda msg: print(f"  {msg}", flush=True)) if not args.quiet else (lambda _m: None)
    try:
        stack.lock.acquire()
    except StackRunningError:
        return _already_running(layout)
    print("Starting the Lepton functions stack ...", flush=True)
    try:
        stack.start(progress=say)
        from lepton_stack.stack import write_samples

        write_samples(layout)
        print(ready_message(layout, stack.model_version, stack.model_accuracy), flush=True)
        stack.run()
    except StackError as exc:
        return _fail(str(exc))
    except KeyboardInterrupt:
        pass
    finally:
        _say("Stopping ...")
        stack.shutdown()
    _say("Stopped.")
    return 0


def _say(line: str) -> None:
    """Print a line of the stop, which goes on when the terminal went first (a `| tee` that the
    same Ctrl-C ended, a closed window)."""
    with contextlib.suppress(OSError):
        print(line, flush=True)


def _already_running(layout: StackLayout) -> int:
    """A second `lepton up` / `make run`: say where the running stack is and leave it alone."""
    try:
        state = read_state(layout)
    except StackNotRunningError:
        state = {}
    functions = state.get("functions", {})
    print(
        f"A Lepton stack is already running here (pid {state.get('pid')}, {state.get('status')}; "
        f"state in {layout.state_file}):\n"
        f"  S3 + SQS endpoint  {state.get('s3_endpoint')}\n"
        f"  infer function     {functions.get('infer')}\n"
        f"  train function     {functions.get('train')}\n"
        "It was left alone: `lepton status` shows it, `lepton down` stops it."
    )
    return 0


def _up_detached(args: argparse.Namespace, layout: StackLayout) -> int:
    from lepton_stack.stack import ready_message

    layout.logs.mkdir(parents=True, exist_ok=True)
    log_file = layout.logs / "stack.log"
    log = log_file.open("ab")
    start = log.tell()  # what this start writes, not what earlier ones did
    child = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "lepton_stack.cli",
            "--state-dir",
            str(layout.root),
            "up",
            "--quiet",
            f"--overlay={layout.overlay}",
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
            with log_file.open("rb") as written:
                written.seek(start)
                reasons = [
                    line.removeprefix("lepton: ")
                    for line in written.read().decode(errors="replace").splitlines()
                    if line.startswith("lepton: ")
                ]
            why = f": {'; '.join(reasons)}" if reasons else ""
            return _fail(f"the stack failed to start{why}; see {log_file}")
        try:
            state = read_state(layout)
        except (StackNotRunningError, ValueError):
            state = {}
        if state.get("status") == "ready" and state.get("pid") == child.pid:
            print(
                ready_message(
                    layout,
                    state.get("model_version"),
                    state.get("model_test_accuracy"),
                    detached=True,
                )
            )
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


def cmd_reset(args: argparse.Namespace) -> int:
    """Forget everything the stack kept: buckets, model cache, dead letters, Jobs."""
    import shutil

    layout = _layout(args)
    if StackLock(layout).probe():
        return _fail("the stack is running: stop it first (`lepton down`, or Ctrl-C)")
    removed = []
    for path in (layout.buckets, layout.root / "cache", layout.dead_letters, layout.jobs):
        if path.exists():
            shutil.rmtree(path)
            removed.append(str(path))
    print(
        f"Removed {', '.join(removed)}: the next `make run` starts clean."
        if removed
        else f"Nothing kept in {layout.root}: already clean."
    )
    return 0


# --- env / serve --------------------------------------------------------------------------------


def cmd_env(args: argparse.Namespace) -> int:
    layout = _layout(args)
    try:
        state = running_state(layout)
    except StackNotRunningError as exc:
        return _fail(str(exc))
    env = layout.function_env(args.role)
    # No PORT: the stack's functions hold their ports, and `lepton serve` in the same shell
    # would collide with them; it listens on its own default (8080) unless PORT is set.
    env.pop("PORT", None)
    # The running stack's addresses, which `lepton up --*-port` may have moved off the defaults.
    env["AWS_ENDPOINT_URL"] = env["AWS_ENDPOINT_URL_S3"] = state["s3_endpoint"]
    for name, bucket in state.get("buckets", {}).items():
        env[f"LEPTON_{name.upper()}_BUCKET"] = bucket
    env["LEPTON_MODEL_NAME"] = state.get("model", env["LEPTON_MODEL_NAME"])
    for name, value in sorted(env.items()):
        print(f"export {name}={shlex.quote(value)}")
    return 0


# --- talking to the stack -----------------------------------------------------------------------


def _state_or_exit(args: argparse.Namespace) -> dict[str, Any]:
    try:
        return running_state(_layout(args))
    except StackNotRunningError as exc:
        raise SystemExit(_fail(str(exc))) from exc


def cmd_predict(args: argparse.Namespace) -> int:
    import requests

    url = args.url or _state_or_exit(args)["functions"]["infer"]
    target = url + "/" + (f"?{urlencode({'model': args.model})}" if args.model else "")
    status = 0
    files, missing = _image_files(args.files)
    for path in missing:
        status = _fail(f"{path}: no such file or folder")
    if not files and not missing:
        return _fail(f"no image files in {', '.join(args.files)}")
    for path in files:
        content_type = mimetypes.guess_type(path.name)[0] or "application/octet-stream"
        try:
            response = requests.post(
                target,
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


def _model_store(state: dict[str, Any]) -> Any:
    """The running stack's models bucket, through the one module that knows its layout."""
    from lepton_runtime.models.store import ModelStore
    from lepton_runtime.settings import Location
    from lepton_runtime.storage import Storage

    return ModelStore(Storage(_s3(state)), Location(state["buckets"]["models"]))


def cmd_models(args: argparse.Namespace) -> int:
    """Every model in the models bucket: its versions, the live one, test accuracy, plots."""
    from lepton_model.artifacts import CONFUSION_PLOT, HISTORY_PLOT
    from lepton_stack.persistence import key_path

    state = _state_or_exit(args)
    store = _model_store(state)
    kept = _layout(args).buckets / store.bucket
    names = store.models()
    if not names:
        print(f"no models in {store.uri('')} yet: train one with `lepton train DIR`")
        return 0
    for name in names:
        pointer = store.pointer(name)
        live = pointer.version if pointer else None
        versions = store.versions(name)
        print(f"{name}  ({len(versions)} version(s); live: {live or 'none'})")
        for version in versions[-args.last :]:
            try:
                meta = store.metadata(name, version)
            except Exception:
                print(f"  {version}  (incomplete)")
                continue
            metrics = meta.get("metrics", {})
            accuracy = metrics.get("test_accuracy", metrics.get("val_accuracy"))
            shape = "x".join(str(n) for n in meta.get("input_shape", []))
            labels = meta.get("labels", [])
            marker = "  <- live" if version == live else ""
            print(
                f"  {version}  test accuracy {accuracy:.2%}  input {shape}  "
                f"{len(labels)} labels{marker}"
            )
        if live:
            route = "POST /" if name == state["model"] else f"POST /?model={name}"
            print(
                f"  served: {route}, POST /v1/models/{name}:predict, "
                f"uploads under {'images/' if name == state['model'] else f'images/{name}/'}"
            )
            for plot in (HISTORY_PLOT, CONFUSION_PLOT):
                key = store.artifact_key(name, live, plot)
                local = kept / key_path(key)
                print(f"  plot: {local if local.exists() else store.uri(key)}")
    return 0


def cmd_put(args: argparse.Namespace) -> int:
    from tqdm import tqdm

    state = _state_or_exit(args)
    s3 = _s3(state)
    uploads, results = state["buckets"]["uploads"], state["buckets"]["results"]
    keys = []
    files, missing = _image_files(args.files)
    if missing:
        return _fail(f"{missing[0]}: no such file or folder")
    named: dict[str, Path] = {}
    for path in files:  # each is uploaded under its name alone: two of one name would be one
        key = f"{args.prefix.rstrip('/')}/{path.name}"
        if key in named and named[key].resolve() != path.resolve():
            return _fail(
                f"{named[key]} and {path} would both be uploaded as s3://{uploads}/{key}, the "
                "second replacing the first: nothing was uploaded; rename one, or put them in "
                "separate runs"
            )
        named[key] = path
    for key, path in named.items():
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
    failed = 0
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
                    failed += 1
                    line = f"{key}: failed: {result['error'].get('message')}"
                else:
                    best = result["predictions"][0]
                    line = f"{key}: {best['label']} ({best['confidence']:.1%})"
                bar.write(f"{line}{_classified_by(result)}  -> s3://{results}/{key}.json")
            if pending:
                time.sleep(0.2)
    if pending:
        return _fail(
            f"{len(pending)} result(s) did not land in {args.timeout:.0f} s: "
            f"check `lepton status` and `lepton logs`"
        )
    if failed:
        return _fail(f"{failed} of {len(keys)} image(s) could not be classified (see above)")
    return 0


def _classified_by(result: dict[str, Any]) -> str:
    """` [model version]`: which model answered (an upload under images/<name>/ is classified
    by model <name> only when one of that name is published, else by the default)."""
    model = result.get("model")
    if not isinstance(model, dict) or not model.get("name"):
        return ""
    return f" [{model['name']} {model.get('version', '')}]".replace(" ]", "]")


_IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg", ".gif", ".bmp", ".webp", ".tif", ".tiff")


def _image_files(names: list[str]) -> tuple[list[Path], list[Path]]:
    """(files to send, names that are neither a file nor a folder); a folder stands for the
    image files in it and below it, in name order."""
    files: list[Path] = []
    missing: list[Path] = []
    for name in names:
        path = Path(name)
        if path.is_dir():
            files += sorted(
                found
                for found in path.rglob("*")
                if found.is_file()
                and found.suffix.lower() in _IMAGE_SUFFIXES
                and not any(part.startswith(".") for part in found.relative_to(path).parts)
            )
        elif path.is_file():
            files.append(path)
        else:
            missing.append(path)
    return files, missing


def _dataset_limits() -> Any:
    """The training function's dataset limits, from the same LEPTON_* settings."""
    from lepton_runtime.errors import ConfigurationError
    from lepton_runtime.settings import Settings
    from lepton_runtime.training.service import dataset_limits

    try:
        return dataset_limits(Settings.from_env())
    except ConfigurationError as exc:
        raise SystemExit(_fail(f"configuration error: {exc}", 2)) from exc


_TRAINING_OPTIONS = ("epochs", "batch_size", "learning_rate", "patience", "seed", "channels")


def cmd_train(args: argparse.Namespace) -> int:
    from lepton_stack import train_command as tc

    state = _state_or_exit(args)
    folder = Path(args.folder)
    options: dict[str, Any] = {
        key: getattr(args, key) for key in _TRAINING_OPTIONS if getattr(args, key) is not None
    }
    if args.image_size is not None:
        options["image_size"] = args.image_size
    if args.replace:
        options["replace"] = True
    try:
        name = tc.model_name_for(folder, args.name)
        upload = tc.archive_folder(folder, name, options, _dataset_limits())
    except tc.FolderError as exc:
        return _fail(str(exc), tc.EXIT_USAGE)
    uploads = state["buckets"]["uploads"]
    key = f"datasets/{name}.zip"
    source = f"s3://{uploads}/{key}"
    store = _model_store(state)
    since = time.time()
    _s3(state).put_object(Bucket=uploads, Key=key, Body=upload.data, ContentType="application/zip")
    print(
        f"uploaded {upload.images} images of {len(upload.labels)} labels "
        f"({', '.join(upload.labels[:6])}{', ...' if len(upload.labels) > 6 else ''}) "
        f"to {source}: model {name!r}"
    )
    lettered = _train_dead_letters(state)

    def read_status() -> dict[str, Any] | None:
        if _train_dead_letters(state) > lettered:
            raise SystemExit(
                _fail(
                    f"the dataset event was dead-lettered (see {state['dead_letters']} "
                    "and `lepton logs train`)"
                )
            )
        return store.read_status(name, source)

    code, final = tc.follow(read_status, since - 1.0, args.timeout)
    if final is None:
        return _fail(
            f"the training did not finish in {args.timeout:.0f} s; see `lepton logs train`",
            tc.EXIT_FAILED,
        )
    return code


def _train_dead_letters(state: dict[str, Any]) -> int:
    """Dead letters of the dataset trigger so far, from the router (0 if it does not answer)."""
    import requests

    try:
        status = requests.get(state["router"] + "/status", timeout=2).json()
    except (requests.RequestException, ValueError):
        return 0
    return int(status.get("dead_letters", {}).get("lepton-train-datasets", 0))


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
    store, model = _model_store(state), state["model"]
    try:
        pointer = store.pointer(model)
    except Exception:
        pointer = None
    live = pointer.version if pointer else None
    print(f"models ({store.uri(store.model_prefix(model))}):")
    for version in store.versions(model):
        try:
            metrics = store.metadata(model, version)["metrics"]
            figure = metrics.get("test_accuracy", metrics.get("val_accuracy"))
            kind = "test_accuracy" if "test_accuracy" in metrics else "val_accuracy"
            accuracy = f"{kind} {figure:.2%}"
        except Exception:
            accuracy = "(incomplete)"
        marker = "  <- live" if version == live else ""
        print(f"  {version}  {accuracy}{marker}")
    others = [name for name in store.models() if name != model]
    for name in others:
        pointer = store.pointer(name)
        print(
            f"model {name}: live {pointer.version if pointer else 'none'}; "
            f"uploads under images/{name}/, `lepton predict --model {name}`"
        )
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
        jobs = router.get("jobs") or {}
        if jobs:
            print(
                f"jobs: running {jobs['running']}, created {jobs['created']}, "
                f"succeeded {jobs['succeeded']}, failed {jobs['failed']}"
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
        default=state_dir(),
        help="where the local stack keeps its state (default $LEPTON_STATE_DIR, else .lepton)",
    )
    sub = parser.add_subparsers(dest="command", required=True)

    up = sub.add_parser(
        "up",
        help="start the local stack",
        description="Start the whole pipeline on this machine: an S3 + SQS endpoint, the event "
        "source, the development router (the Knative Broker's part) and both functions, then "
        "train the first model from the bundled digits unless one is live. In the foreground "
        "until Ctrl-C, or with --detach until `lepton down`.",
    )
    up.add_argument("--detach", action="store_true", help="return once ready; stop with down")
    up.add_argument(
        "--timeout", type=float, default=900, help="seconds to wait for readiness (default 900)"
    )
    up.add_argument("--quiet", action="store_true", help=argparse.SUPPRESS)
    up.add_argument(
        "--overlay",
        choices=OVERLAYS,
        default=OVERLAYS[0],
        help="the knative/overlays/<name> whose Triggers and JobSinks the router serves "
        "(as `make deploy OVERLAY=...`; default %(default)s)",
    )
    for name, port in vars(Ports()).items():
        up.add_argument(
            f"--{name}-port",
            type=int,
            default=None,
            help=f"TCP port of the {name} part on 127.0.0.1 (default {port})",
        )
    up.set_defaults(func=cmd_up)
    sub.add_parser(
        "down",
        help="stop the running stack",
        description="Stop the local stack (started detached or in another terminal) and every "
        "process it started.",
    ).set_defaults(func=cmd_down)
    sub.add_parser(
        "reset",
        help="forget the kept buckets, model cache, dead letters and Jobs",
        description="Start clean: remove what a stopped stack kept in the state dir (its "
        "buckets with every model, result and dataset, the model cache, dead letters, Jobs). "
        "Refused while the stack runs.",
    ).set_defaults(func=cmd_reset)
    sub.add_parser(
        "status",
        help="parts, models, queues, dead letters",
        description="Show whether each part of the local stack is up, the model versions (the "
        "live one marked), queue depths, dead letters and what the router delivered.",
    ).set_defaults(func=cmd_status)

    env = sub.add_parser(
        "env",
        help="print the function environment for the running stack",
        description="Print `export NAME=value` lines: what a function container of the running "
        'stack gets (S3 endpoint, region, keys, bucket names). `eval "$(lepton env)"` makes '
        "aws, boto3 and `lepton serve` talk to the stack. No PORT: a function you serve by "
        "hand listens on its own default (8080), not on the stack's ports.",
    )
    env.add_argument(
        "role",
        nargs="?",
        default="infer",
        choices=("infer", "train", "shell"),
        help="whose environment (default infer)",
    )
    env.set_defaults(func=cmd_env)

    add_commands(sub)  # serve, train-job: what the function images run

    predict = sub.add_parser(
        "predict",
        help="classify image files over HTTP",
        description="Send images to the inference function and print the best label of each. "
        "A folder stands for the image files in it and below it. Exit code 1 when any image "
        "could not be classified.",
    )
    predict.add_argument("files", nargs="+", help="image files or folders")
    predict.add_argument("--url", help="inference function URL (default: the local stack's)")
    predict.add_argument(
        "--model",
        help="the model to classify with, by name (default: the function's default model)",
    )
    predict.add_argument("--json", action="store_true", help="print one JSON object per file")
    predict.set_defaults(func=cmd_predict)

    models = sub.add_parser(
        "models",
        help="the models in the models bucket",
        description="List every model in the models bucket: its versions (newest last), the "
        "live one, test accuracy, input shape, and where the live version's plots are.",
    )
    models.add_argument(
        "--last", type=int, default=5, help="versions shown per model, newest (default 5)"
    )
    models.set_defaults(func=cmd_models)

    put = sub.add_parser(
        "put",
        help="upload images to the uploads bucket",
        description="Upload images where an upload starts a classification; with --wait, "
        "show each result as it lands. Exit code 1 when a result is a failure or does not "
        "land in time.",
    )
    put.add_argument("files", nargs="+", help="image files or folders")
    put.add_argument("--wait", action="store_true", help="show results as they land")
    put.add_argument("--prefix", default="images/", help="key prefix (default images/)")
    put.add_argument(
        "--timeout", type=float, default=120, help="seconds to wait with --wait (default 120)"
    )
    put.set_defaults(func=cmd_put)

    train = sub.add_parser(
        "train",
        help="train a model from a <label>/<image> folder",
        description="Check a <label>/<image> folder, upload it as s3://<uploads>/datasets/"
        "<name>.zip and follow its training. Exit codes: 0 the new version is live, 3 it was "
        "trained but held back (the reason is printed), 1 the training failed, 2 the folder "
        "or options are wrong. Options left out are the training function's, or chosen "
        "from the images (channels, input size).",
    )
    train.add_argument("folder", help="a folder of <label>/<image> files")
    train.add_argument(
        "--name", help="model (and dataset) name (default: the folder's name, made valid)"
    )
    train.add_argument("--epochs", type=int, help="most epochs (default 30; early stopping)")
    train.add_argument("--batch-size", type=int, help="images per step (default 32)")
    train.add_argument("--learning-rate", type=float, help="Adam's step size (default 0.002)")
    train.add_argument(
        "--patience", type=int, help="epochs without improvement before stopping (default 4)"
    )
    train.add_argument("--seed", type=int, help="seed of splits and training (default 42)")
    train.add_argument(
        "--channels",
        type=int,
        choices=(1, 3),
        help="1 grayscale, 3 RGB (default: chosen from the images: RGB when they have colour)",
    )
    train.add_argument(
        "--image-size",
        type=int,
        help="model input side in pixels (default: from the images' sizes, 28 to 64)",
    )
    train.add_argument(
        "--replace",
        action="store_true",
        help="make it live even when the live model of this name has other labels",
    )
    train.add_argument(
        "--timeout", type=float, default=1800, help="seconds to wait for the result (default 1800)"
    )
    train.set_defaults(func=cmd_train)

    logs = sub.add_parser(
        "logs",
        help="show the logs of the stack's parts",
        description="Show the last lines of a part's log (JSON lines for the functions), or of "
        "every part's.",
    )
    logs.add_argument("part", nargs="?", help="infer, train, router, source, s3 ... (default all)")
    logs.add_argument("-f", "--follow", action="store_true", help="keep printing new lines")
    logs.add_argument(
        "-n", "--lines", type=int, default=50, help="lines to show first (default 50)"
    )
    logs.set_defaults(func=cmd_logs)
    return parser


def main(argv: list[str] | None = None) -> int:
    import botocore.exceptions
    import requests

    args = build_parser().parse_args(argv)
    try:
        return int(args.func(args) or 0)
    except (requests.ConnectionError, botocore.exceptions.EndpointConnectionError) as exc:
        return _fail(
            f"cannot reach the local stack at {_endpoint_of(exc) or 'its address'}: it is "
            "stopped or still starting; see `lepton status`, start it with `make run`"
        )


def _endpoint_of(error: Exception) -> str:
    """The URL a connection error was about, without the library's retry noise."""
    request = getattr(error, "request", None)
    if request is not None and getattr(request, "url", None):
        parts = urlsplit(request.url)
        return f"{parts.scheme}://{parts.netloc}"
    return str(getattr(error, "kwargs", {}).get("endpoint_url", ""))


if __name__ == "__main__":
    sys.exit(main())
