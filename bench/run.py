"""`make bench`: side-by-side benchmarks, medians over repeats, ratios from the same run.

Measures on this machine, in one run:
- against the peers a Knative user would pick instead (bench/peers.py: KServe's Python
  ModelServer and MLServer, each in a virtualenv of its own with a minimal custom predictor on
  the same model.tflite, LiteRT and plain Pillow): the same request body to both sides (KServe V1
  `{"instances": [{"b64": ...}]}`; for MLServer the V2 BYTES tensor), the same worker count,
  wrk at concurrency 1, 8 and 32, runs alternated between the servers; our raw-image route too;
  process start to first prediction for each; KServe's own client (V1 and V2) against ours;
- HTTP inference against the seed design (Flask + TensorFlow `model.predict()` per request), the
  bare parliament/waitress server answering a constant (the framework's ceiling), our server
  answering a constant, and the in-process predictor with no HTTP (the model's limit);
- decoding real photo sizes (640x480 and 12 MP JPEG): our decoder vs plain Pillow;
- cold start to first prediction and resident memory: LiteRT vs TensorFlow runtime;
- peak worker memory under a normal load and under the test suite's hostile images;
- the event path through the local stack: upload -> result latency and sustained uploads/s;
- training: time to 97% validation accuracy on the digits, training images/s.
Prints one table, writes bench/results/latest.json and docs/benchmarks.md (+ a plot).
Everything runs on loopback and stops by itself.
"""

from __future__ import annotations

import argparse
import base64
import contextlib
import io
import json
import os
import platform
import re
import shutil
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Iterator
from contextlib import ExitStack, contextmanager
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import numpy as np
import peers
import requests

ROOT = Path(__file__).resolve().parents[1]
PYTHON = sys.executable
CONCURRENCY = (1, 8, 32)


def say(message: str) -> None:
    print(f"[{time.strftime('%H:%M:%S')}] {message}", file=sys.stderr, flush=True)


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


def wait_http(url: str, timeout: float, method: str = "GET", **kwargs: Any) -> float:
    """Poll until `url` answers 200; returns the time it took."""
    started = time.perf_counter()
    deadline = started + timeout
    while time.perf_counter() < deadline:
        try:
            if requests.request(method, url, timeout=2, **kwargs).status_code == 200:
                return time.perf_counter() - started
        except requests.RequestException:
            pass
        time.sleep(0.01)
    raise RuntimeError(f"{url} did not answer 200 within {timeout} s")


@contextmanager
def process(command: list[str], env: dict[str, str] | None = None) -> Iterator[subprocess.Popen]:
    log = tempfile.TemporaryFile()  # noqa: SIM115 - closed in the finally below
    proc = subprocess.Popen(
        command,
        env={**os.environ, **(env or {})},
        stdout=log,
        stderr=subprocess.STDOUT,
        start_new_session=True,
    )
    try:
        yield proc
    finally:
        if proc.poll() is None:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(proc.pid, signal.SIGTERM)
            try:
                proc.wait(15)
            except subprocess.TimeoutExpired:
                os.killpg(proc.pid, signal.SIGKILL)
                proc.wait()
        # A server's workers can outlive its parent by a moment: the next measurement starts
        # once the whole group is gone, so no one's teardown runs on the cores of the next.
        if not _group_gone(proc.pid, 15):
            with contextlib.suppress(ProcessLookupError):
                os.killpg(proc.pid, signal.SIGKILL)
            _group_gone(proc.pid, 5)
        log.close()


def _group_gone(pgid: int, timeout: float) -> bool:
    """Wait until no process of group `pgid` runs (zombies do not count); False on timeout."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if not any(_in_group(stat, pgid) for stat in Path("/proc").glob("[0-9]*/stat")):
            return True
        time.sleep(0.02)
    return False


def _stat_fields(stat: Path) -> list[str] | None:
    """/proc/<pid>/stat's fields after the command name (state first); None once it is gone."""
    try:
        return stat.read_text().rsplit(")", 1)[1].split()
    except (OSError, IndexError):
        return None


def _in_group(stat: Path, pgid: int) -> bool:
    fields = _stat_fields(stat)
    return fields is not None and fields[0] != "Z" and int(fields[2]) == pgid


def rss_mb(pid: int) -> float:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    return float("nan")


def process_tree(pid: int) -> list[int]:
    """A process and all its descendants (a server's workers, theirs too)."""
    parents: dict[int, list[int]] = {}
    for stat in Path("/proc").glob("[0-9]*/stat"):
        fields = _stat_fields(stat)
        if fields is not None:
            parents.setdefault(int(fields[1]), []).append(int(stat.parent.name))
    tree, queue = [], [pid]
    while queue:
        current = queue.pop()
        tree.append(current)
        queue.extend(parents.get(current, []))
    return tree


def tree_rss_mb(pid: int) -> tuple[float, float]:
    """(largest, total) resident memory of a process and its descendants (the workers)."""
    sizes = [rss_mb(p) for p in process_tree(pid) if Path(f"/proc/{p}").exists()]
    return max(sizes), sum(sizes)


_TICK = os.sysconf("SC_CLK_TCK")


def tree_cpu_seconds(pids: list[int]) -> float:
    """CPU time (user + system) the processes have used so far."""
    total = 0
    for pid in pids:
        fields = _stat_fields(Path(f"/proc/{pid}/stat"))
        if fields is not None:
            total += int(fields[11]) + int(fields[12])  # utime, stime
    return total / _TICK


# --- the model and its files --------------------------------------------------------------------


def train_digits(workdir: Path) -> tuple[Path, dict[str, Any]]:
    """Train the digits CNN as the training function does; time to 97% validation accuracy."""
    from lepton_model import datasets, digits
    from lepton_model.artifacts import export_artifact
    from lepton_model.training import TrainingConfig, train

    dataset = datasets.from_files(digits.digit_files())
    reached: dict[str, float] = {}
    started = time.perf_counter()

    def on_epoch(epoch: int, logs: dict[str, float]) -> None:
        if "time_to_97" not in reached and logs.get("val_accuracy", 0) >= 0.97:
            reached["time_to_97"] = time.perf_counter() - started
            reached["epoch_to_97"] = epoch

    trained = train(dataset, config=TrainingConfig(), on_epoch=on_epoch)
    total = time.perf_counter() - started
    directory = workdir / "model" / "v1"
    export_artifact(trained, directory, "digits", "v1", dataset.digest)
    return directory, {
        "images": len(dataset),
        "val_accuracy": trained.evaluation.accuracy,
        "epochs": trained.epochs_run,
        "seconds_total": total,
        "seconds_to_97": reached.get("time_to_97"),
        "epoch_to_97": reached.get("epoch_to_97"),
        "train_images_per_second": trained.images_per_second,
    }


def sample_png() -> bytes:
    from lepton_model import digits

    images, labels = digits.load_digits()
    buffer = io.BytesIO()
    digits.render_digit(images[int(np.flatnonzero(labels == 3)[0])], 28).save(buffer, "PNG")
    return buffer.getvalue()


def photo_jpeg(width: int, height: int) -> bytes:
    """A photo-like JPEG (smooth gradients + texture), so DCT decoding does real work."""
    from PIL import Image

    rng = np.random.default_rng(0)
    y, x = np.mgrid[0:height, 0:width].astype(np.float32)
    base = np.stack([x / width * 255, y / height * 255, (x + y) / (width + height) * 255], -1)
    noise = rng.normal(0, 12, size=(height, width, 1)).astype(np.float32)
    pixels = np.clip(base + noise, 0, 255).astype(np.uint8)
    buffer = io.BytesIO()
    Image.fromarray(pixels, "RGB").save(buffer, "JPEG", quality=90)
    return buffer.getvalue()


# --- HTTP load with wrk -------------------------------------------------------------------------

_UNITS = {"us": 1e-3, "ms": 1.0, "s": 1000.0}


def wrk(
    url: str,
    body_file: Path,
    connections: int,
    seconds: float,
    content_type: str = "image/png",
) -> dict[str, float]:
    script = body_file.with_suffix(".lua")
    script.write_text(
        'wrk.method = "POST"\n'
        f'local f = io.open("{body_file}", "rb")\n'
        'wrk.body = f:read("*all")\nf:close()\n'
        f'wrk.headers["Content-Type"] = "{content_type}"\n'
    )
    threads = min(2, connections)
    out = subprocess.run(
        [
            "wrk",
            f"-t{threads}",
            f"-c{connections}",
            f"-d{max(1, round(seconds))}s",
            "--latency",
            "-s",
            str(script),
            url,
        ],
        capture_output=True,
        text=True,
        check=True,
        timeout=seconds + 60,
    ).stdout
    rps = float(re.search(r"Requests/sec:\s+([\d.]+)", out).group(1))  # type: ignore[union-attr]
    requests_done = int(re.search(r"(\d+) requests in", out).group(1))  # type: ignore[union-attr]
    percentiles = {
        int(p): float(v) * _UNITS[u]
        for p, v, u in re.findall(r"^\s+(50|99)%\s+([\d.]+)(us|ms|s)\s*$", out, re.M)
    }
    errors = re.search(r"Non-2xx or 3xx responses: (\d+)", out)
    return {
        "rps": rps,
        "p50_ms": percentiles.get(50, float("nan")),
        "p99_ms": percentiles.get(99, float("nan")),
        "non_2xx": float(errors.group(1)) if errors else 0.0,
        "requests": float(requests_done),
    }


def load_test(name: str, url: str, body_file: Path, repeats: int, seconds: float) -> dict[str, Any]:
    results: dict[str, Any] = {}
    wrk(url, body_file, 8, 1)  # warm-up
    for connections in CONCURRENCY:
        runs = [wrk(url, body_file, connections, seconds) for _ in range(repeats)]
        results[str(connections)] = {
            "rps": statistics.median(r["rps"] for r in runs),
            "p50_ms": statistics.median(r["p50_ms"] for r in runs),
            "p99_ms": statistics.median(r["p99_ms"] for r in runs),
            "non_2xx": sum(r["non_2xx"] for r in runs),
            "runs": [r["rps"] for r in runs],
        }
        say(
            f"  {name:<10} c={connections:<3} {results[str(connections)]['rps']:8.1f} req/s "
            f"(runs {', '.join(f'{r:.0f}' for r in results[str(connections)]['runs'])})"
        )
    return results


def summarize(runs: list[dict[str, float]]) -> dict[str, Any]:
    """Medians of repeated wrk runs of one server at one concurrency."""
    return {
        "rps": statistics.median(r["rps"] for r in runs),
        "p50_ms": statistics.median(r["p50_ms"] for r in runs),
        "p99_ms": statistics.median(r["p99_ms"] for r in runs),
        "non_2xx": sum(r["non_2xx"] for r in runs),
        "runs": [r["rps"] for r in runs],
        **(
            {
                "cpu_us": statistics.median(r["cpu_us"] for r in runs),
                "cpu_runs": [r["cpu_us"] for r in runs],
            }
            if "cpu_us" in runs[0]
            else {}
        ),
    }


def paired_ratio(ours: list[float], theirs: list[float]) -> float:
    """The median of run-by-run ratios of two routes measured in the same rounds: each pair ran
    back to back, so a disturbance that spans a round cancels out of its ratio."""
    return statistics.median(a / b for a, b in zip(ours, theirs, strict=True) if b)


# --- against the peers --------------------------------------------------------------------------

WORKERS = 2  # worker processes on each side, each holding its own model


@dataclass(frozen=True)
class Target:
    """One server route under load: what is posted where."""

    key: str
    title: str
    url: str
    body: Path
    content_type: str
    pid: int  # the server's first process (its workers are its descendants)


def request_bodies(png_bytes: bytes, workdir: Path) -> dict[str, Path]:
    """The request each route gets: the same image as KServe V1 b64 JSON, as a V2 BYTES tensor
    (base64 in JSON, as MLServer's clients send it), and raw."""
    b64 = base64.b64encode(png_bytes).decode()
    bodies = {
        "png": png_bytes,
        "v1": json.dumps({"instances": [{"b64": b64}]}).encode(),
        "v2": json.dumps(
            {
                "inputs": [
                    {
                        "name": "image",
                        "shape": [1],
                        "datatype": "BYTES",
                        "data": [b64],
                        "parameters": {"content_type": "base64"},
                    }
                ]
            }
        ).encode(),
    }
    paths = {}
    for name, body in bodies.items():
        paths[name] = workdir / f"body-{name}.bin"
        paths[name].write_bytes(body)
    return paths


@contextmanager
def peer_servers(
    model_dir: Path, env: dict[str, str], bodies: dict[str, Path], peers_root: Path
) -> Iterator[list[Target]]:
    """Ours, KServe's ModelServer and MLServer (those that install here) serving at once, each
    with WORKERS processes; yields the routes to load once each answers a prediction."""
    targets: list[Target] = []
    with ExitStack() as stack, tempfile.TemporaryDirectory() as tmp:
        workdir = Path(tmp)
        model_file = model_dir / "model.tflite"
        kserve = peers.ensure(peers.KSERVE, peers_root, say)
        if kserve is not None:
            port = free_port()
            logs = workdir / "kserve-logging.json"
            proc = stack.enter_context(
                process(peers.kserve_command(kserve, model_file, port, WORKERS, logs))
            )
            url = f"http://127.0.0.1:{port}/v1/models/digits:predict"
            targets.append(
                Target(
                    "kserve",
                    "KServe ModelServer (peer)",
                    url,
                    bodies["v1"],
                    "application/json",
                    proc.pid,
                )
            )
        port = free_port()
        ours_env = {**env, "LEPTON_WORKERS": str(WORKERS)}
        ours = stack.enter_context(
            process(serve_ours(ours_env, port, "litert", workdir / "cache"), ours_env)
        )
        base = f"http://127.0.0.1:{port}"
        targets += [
            Target(
                "lepton_v1",
                "Lepton, `POST /v1/models/digits:predict`",
                f"{base}/v1/models/digits:predict",
                bodies["v1"],
                "application/json",
                ours.pid,
            ),
            Target(
                "lepton_raw",
                "Lepton, `POST /` (the PNG itself)",
                f"{base}/",
                bodies["png"],
                "image/png",
                ours.pid,
            ),
        ]
        # As deployed by default: one JSON request line per request on its log (the peers' and
        # the rows above run without one): what that line costs, side by side.
        port = free_port()
        logged_env = {**env, "LEPTON_WORKERS": str(WORKERS)}
        logged = stack.enter_context(
            process(
                serve_ours(logged_env, port, "litert", workdir / "cache", request_log=True),
                logged_env,
            )
        )
        targets.append(
            Target(
                "lepton_v1_logged",
                "Lepton, `POST /v1/models/digits:predict`, request log on (its default)",
                f"http://127.0.0.1:{port}/v1/models/digits:predict",
                bodies["v1"],
                "application/json",
                logged.pid,
            )
        )
        mlserver = peers.ensure(peers.MLSERVER, peers_root, say)
        if mlserver is not None:
            port = free_port()
            command = peers.mlserver_command(
                mlserver,
                model_file,
                port,
                WORKERS,
                workdir / "mlserver",
                (free_port(), free_port()),
            )
            peer = stack.enter_context(process(command))
            targets.append(
                Target(
                    "mlserver",
                    "MLServer (peer)",
                    f"http://127.0.0.1:{port}/v2/models/digits/infer",
                    bodies["v2"],
                    "application/json",
                    peer.pid,
                )
            )
        targets.append(
            Target(
                "lepton_v2",
                "Lepton, `POST /v2/models/digits/infer`",
                f"{base}/v2/models/digits/infer",
                bodies["v2"],
                "application/json",
                ours.pid,
            )
        )
        for target in targets:
            wait_http(
                target.url,
                180,
                "POST",
                data=target.body.read_bytes(),
                headers={"Content-Type": target.content_type},
            )
        time.sleep(2.0)  # every worker of every server has loaded its model
        yield targets


def bench_peers(
    model_dir: Path,
    env: dict[str, str],
    bodies: dict[str, Path],
    repeats: int,
    seconds: float,
    peers_root: Path,
) -> dict[str, Any]:
    """wrk against every route at c=1, 8 and 32; the servers take turns run by run, so a
    disturbance on this shared machine falls on all of them alike, in an order reversed every
    other round, so no route always runs right after the same one. Besides throughput and
    latency, the CPU time each server's processes spent per answered request (less sensitive
    to other load on the machine than throughput)."""
    out: dict[str, Any] = {"workers": WORKERS, "routes": {}}
    with peer_servers(model_dir, env, bodies, peers_root) as targets:
        trees = {t.key: process_tree(t.pid) for t in targets}
        for target in targets:
            out["routes"][target.key] = {"title": target.title, "url": target.url}
            wrk(target.url, target.body, 8, 1, target.content_type)  # warm-up
        for connections in CONCURRENCY:
            runs: dict[str, list[dict[str, float]]] = {t.key: [] for t in targets}
            for round_index in range(repeats):
                for target in targets if round_index % 2 == 0 else targets[::-1]:
                    before = tree_cpu_seconds(trees[target.key])
                    run = wrk(target.url, target.body, connections, seconds, target.content_type)
                    spent = tree_cpu_seconds(trees[target.key]) - before
                    run["cpu_us"] = spent / max(run["requests"], 1.0) * 1e6
                    runs[target.key].append(run)
            for target in targets:
                result = summarize(runs[target.key])
                out["routes"][target.key][str(connections)] = result
                say(
                    f"  {target.key:<10} c={connections:<3} {result['rps']:8.1f} req/s "
                    f"p99 {result['p99_ms']:6.1f} ms, {result['cpu_us']:5.0f} us CPU/request "
                    f"(runs {', '.join(f'{r:.0f}' for r in result['runs'])})"
                )
    return out


def drop_in_check(env: dict[str, str], png: Path, peers_root: Path) -> dict[str, Any] | None:
    """KServe's own InferenceRESTClient (V1 and V2) against our inference function."""
    python = peers.ensure(peers.KSERVE, peers_root, say)
    if python is None:
        return None
    port = free_port()
    with tempfile.TemporaryDirectory() as cache:
        command = serve_ours(env_copy := dict(env), port, "litert", Path(cache))
        with process(command, env_copy):
            base = f"http://127.0.0.1:{port}"
            wait_http(f"{base}/health/readiness", 60)
            done = subprocess.run(
                [
                    str(python),
                    str(ROOT / "bench" / "kserve_client_check.py"),
                    base,
                    "digits",
                    str(png),
                ],
                capture_output=True,
                text=True,
                timeout=120,
            )
    try:
        checks = json.loads(done.stdout)["checks"]
    except (ValueError, KeyError):
        checks = [{"name": "kserve_client_check.py", "ok": False, "detail": done.stderr[-500:]}]
    for check in checks:
        say(f"  {'ok  ' if check['ok'] else 'FAIL'} {check['name']}: {check['detail']}")
    return {"client": "kserve " + peers.KSERVE.requirements[0].split("==")[1], "checks": checks}


# --- the parts ----------------------------------------------------------------------------------


@contextmanager
def moto_with_model(model_dir: Path) -> Iterator[dict[str, str]]:
    import boto3
    from moto.server import ThreadedMotoServer

    server = ThreadedMotoServer(ip_address="127.0.0.1", port=free_port(), verbose=False)
    server.start()
    host, port = server.get_host_and_port()
    endpoint = f"http://{host}:{port}"
    env = {
        "AWS_ENDPOINT_URL": endpoint,
        "AWS_ACCESS_KEY_ID": "bench",
        "AWS_SECRET_ACCESS_KEY": "bench",
        "AWS_REGION": "us-east-1",
        "AWS_DEFAULT_REGION": "us-east-1",
        "LEPTON_S3_ADDRESSING_STYLE": "path",
    }
    s3 = boto3.client(
        "s3",
        endpoint_url=endpoint,
        region_name="us-east-1",
        aws_access_key_id="bench",
        aws_secret_access_key="bench",
    )
    for bucket in ("lepton-uploads", "lepton-results", "lepton-models"):
        s3.create_bucket(Bucket=bucket)
    for path in model_dir.iterdir():
        s3.put_object(Bucket="lepton-models", Key=f"digits/v1/{path.name}", Body=path.read_bytes())
    s3.put_object(Bucket="lepton-models", Key="digits/latest.json", Body=b'{"version": "v1"}')
    try:
        yield env
    finally:
        server.stop()


def serve_ours(
    env: dict[str, str], port: int, runtime: str, cache: Path, request_log: bool = False
) -> list[str]:
    """The inference function's server; like the peers' without a line per request unless
    `request_log` (its default as deployed: one JSON line per request)."""
    env.update(
        {
            "PORT": str(port),
            "LEPTON_RUNTIME": runtime,
            "LEPTON_MODEL_CACHE_DIR": str(cache),
            "LEPTON_LOG_LEVEL": "INFO" if request_log else "WARNING",
            "LEPTON_ACCESS_LOG": "on" if request_log else "off",
            # As deployed (knative/base/config.yaml): events authenticated, the issuer's keys
            # found by OIDC discovery at the first event. Only images are sent here (open
            # routes), so nothing is fetched; events are measured on the local stack.
            "LEPTON_EVENT_AUTH": "oidc",
            "LEPTON_OIDC_ISSUER": "https://kubernetes.default.svc.cluster.local",
            "LEPTON_OIDC_AUDIENCE": "lepton-infer",
        }
    )
    return [
        PYTHON,
        "-m",
        "lepton_runtime.entry",  # `lepton-function`, what the image runs
        "serve",
        "infer",
        "--function-dir",
        str(ROOT / "functions" / "infer"),
    ]


def bench_http(
    model_dir: Path, png: Path, env: dict[str, str], repeats: int, seconds: float
) -> dict[str, Any]:
    out: dict[str, Any] = {}
    port = free_port()
    say("HTTP: the seed design (Flask + TensorFlow model.predict per request)")
    with process(
        [PYTHON, str(ROOT / "bench" / "seed_app.py"), str(model_dir / "model.keras"), str(port)]
    ):
        wait_http(f"http://127.0.0.1:{port}/health", 120)
        out["seed"] = load_test("seed", f"http://127.0.0.1:{port}/infer", png, repeats, seconds)
    port = free_port()
    say("HTTP: parliament as shipped, answering a constant (the framework's ceiling)")
    with process([PYTHON, str(ROOT / "bench" / "serve_stock_parliament.py"), str(port)]):
        wait_http(f"http://127.0.0.1:{port}/health/liveness", 60)
        out["ceiling"] = load_test("ceiling", f"http://127.0.0.1:{port}/", png, repeats, seconds)
    port = free_port()
    say("HTTP: the Lepton server (lepton serve) answering a constant (our server's ceiling)")
    with process([PYTHON, str(ROOT / "bench" / "serve_bare.py"), str(port)]):
        wait_http(f"http://127.0.0.1:{port}/health/liveness", 60)
        out["server"] = load_test("server", f"http://127.0.0.1:{port}/", png, repeats, seconds)
    return out


def _children(pid: int) -> list[int]:
    children = Path(f"/proc/{pid}/task/{pid}/children").read_text().split()
    return [int(child) for child in children] or [pid]


def _vm_hwm_mb(pid: int) -> float:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmHWM:"):
            return int(line.split()[1]) / 1024
    return float("nan")


def bench_hostile(env: dict[str, str], png: Path, seconds: float) -> dict[str, Any]:
    """Peak worker memory (VmHWM) under a normal load, then under the hostile images of the
    test suite (tests/hostile_images.py) sent one at a time and then 8 at once."""
    from concurrent.futures import ThreadPoolExecutor

    sys.path.insert(0, str(ROOT / "tests"))
    from hostile_images import HOSTILE_IMAGES, hostile_image

    images = {name: hostile_image(name) for name in HOSTILE_IMAGES}
    port = free_port()
    url = f"http://127.0.0.1:{port}/"
    with tempfile.TemporaryDirectory() as cache:
        command = serve_ours(env_copy := dict(env), port, "litert", Path(cache))
        env_copy["LEPTON_WORKERS"] = "2"
        with process(command, env_copy) as proc:
            wait_http(f"http://127.0.0.1:{port}/health/readiness", 60)
            time.sleep(1.0)  # both workers load their model
            workers = _children(proc.pid)
            wrk(url, png, 8, seconds)
            normal = max(_vm_hwm_mb(pid) for pid in workers)

            def send(data: bytes) -> tuple[int, float]:
                started = time.perf_counter()
                response = requests.post(
                    url, data=data, headers={"Content-Type": "application/octet-stream"}, timeout=60
                )
                return response.status_code, time.perf_counter() - started

            answers = [send(data) for data in images.values()]
            with ThreadPoolExecutor(8) as pool:
                answers += list(pool.map(send, images.values()))
            hostile = max(_vm_hwm_mb(pid) for pid in workers)
    return {
        "images": len(images),
        "normal_peak_mb": normal,
        "hostile_peak_mb": hostile,
        "classified": sum(status == 200 for status, _ in answers),
        "refused": sum(status in (400, 413, 415) for status, _ in answers),
        "other": sum(status not in (200, 400, 413, 415) for status, _ in answers),
        "slowest_answer_s": max(seconds for _, seconds in answers),
    }


def bench_in_process(model_dir: Path, png_bytes: bytes, seconds: float) -> dict[str, float]:
    """Decode + classify in a loop in this process: the model's limit, no HTTP."""
    from lepton_model.classifier import load_classifier

    classifier = load_classifier(model_dir, "litert")
    latencies = []
    deadline = time.perf_counter() + seconds
    while time.perf_counter() < deadline:
        started = time.perf_counter()
        classifier.classify(classifier.decode(png_bytes)[np.newaxis])
        latencies.append(time.perf_counter() - started)
    per_image = statistics.median(latencies)
    return {
        "rps": 1.0 / per_image,
        "p50_ms": per_image * 1000,
        "p99_ms": float(np.percentile(latencies, 99)) * 1000,
    }


def bench_decode(repeats: int) -> dict[str, Any]:
    from PIL import Image

    from lepton_model.imaging import decode_image

    def plain(data: bytes) -> np.ndarray:
        image = Image.open(io.BytesIO(data)).convert("L").resize((28, 28), Image.BILINEAR)
        return np.asarray(image, dtype=np.float32)

    out: dict[str, Any] = {}
    for label, (w, h) in {"640x480": (640, 480), "12MP": (4000, 3000)}.items():
        data = photo_jpeg(w, h)
        timings: dict[str, list[float]] = {"lepton": [], "pillow": []}
        for _ in range(repeats):
            for name, fn in (("lepton", decode_image), ("pillow", plain)):
                started = time.perf_counter()
                fn(data)
                timings[name].append((time.perf_counter() - started) * 1000)
        out[label] = {name: statistics.median(values) for name, values in timings.items()}
        say(
            f"  decode {label}: lepton {out[label]['lepton']:.1f} ms, "
            f"plain Pillow {out[label]['pillow']:.1f} ms"
        )
    return out


def first_prediction(
    command: list[str], env: dict[str, str] | None, url: str, body: bytes, content_type: str
) -> tuple[float, float, float]:
    """Seconds from spawning `command` to its first successful prediction, then the resident
    memory of its largest process and of all its processes (MB)."""
    started = time.perf_counter()
    with process(command, env) as proc:
        while True:
            try:
                if requests.post(
                    url, data=body, timeout=5, headers={"Content-Type": content_type}
                ).ok:
                    break
            except requests.RequestException:
                pass
            if time.perf_counter() - started > 180:
                raise RuntimeError(f"no prediction from {command[:3]}")
            time.sleep(0.005)
        elapsed = time.perf_counter() - started
        largest, total = tree_rss_mb(proc.pid)
    return elapsed, largest, total


def bench_cold_start(
    model_dir: Path, env: dict[str, str], bodies: dict[str, Path], repeats: int, peers_root: Path
) -> dict[str, Any]:
    """Process start to first prediction, WORKERS processes each, alternated between the
    servers: ours with the model read from the stack's S3 (moto) by each worker, the peers from
    the local model file; then ours on the TensorFlow runtime."""
    v1 = bodies["v1"].read_bytes()
    model_file = model_dir / "model.tflite"

    def ours(runtime: str) -> Any:
        def start(workdir: Path) -> tuple[list[str], dict[str, str] | None, str, bytes, str]:
            port = free_port()
            env_copy = {**env, "LEPTON_WORKERS": str(WORKERS)}
            command = serve_ours(env_copy, port, runtime, workdir / "cache")
            url = f"http://127.0.0.1:{port}/v1/models/digits:predict"
            return command, env_copy, url, v1, "application/json"

        return start

    starters: dict[str, Any] = {"litert": ours("litert")}
    kserve = peers.ensure(peers.KSERVE, peers_root, say)
    if kserve is not None:

        def kserve_start(workdir: Path) -> tuple[list[str], dict[str, str] | None, str, bytes, str]:
            port = free_port()
            command = peers.kserve_command(
                kserve, model_file, port, WORKERS, workdir / "logging.json"
            )
            url = f"http://127.0.0.1:{port}/v1/models/digits:predict"
            return command, None, url, v1, "application/json"

        starters["kserve"] = kserve_start
    mlserver = peers.ensure(peers.MLSERVER, peers_root, say)
    if mlserver is not None:

        def mlserver_start(
            workdir: Path,
        ) -> tuple[list[str], dict[str, str] | None, str, bytes, str]:
            port = free_port()
            command = peers.mlserver_command(
                mlserver,
                model_file,
                port,
                WORKERS,
                workdir / "mlserver",
                (free_port(), free_port()),
            )
            url = f"http://127.0.0.1:{port}/v2/models/digits/infer"
            return command, None, url, bodies["v2"].read_bytes(), "application/json"

        starters["mlserver"] = mlserver_start
    runs: dict[str, list[tuple[float, float, float]]] = {name: [] for name in starters}
    for _ in range(repeats):
        for name, start in starters.items():
            with tempfile.TemporaryDirectory() as tmp:
                runs[name].append(first_prediction(*start(Path(tmp))))
    runs["tensorflow"] = []
    for _ in range(repeats):
        with tempfile.TemporaryDirectory() as tmp:
            runs["tensorflow"].append(first_prediction(*ours("tensorflow")(Path(tmp))))
    out: dict[str, Any] = {}
    for name, measured in runs.items():
        out[name] = {
            "cold_start_s": statistics.median(m[0] for m in measured),
            "rss_mb": statistics.median(m[1] for m in measured),
            "rss_total_mb": statistics.median(m[2] for m in measured),
            "runs": [m[0] for m in measured],
        }
        say(
            f"  cold start {name}: {out[name]['cold_start_s']:.2f} s "
            f"(runs {', '.join(f'{r:.2f}' for r in out[name]['runs'])}), "
            f"RSS {out[name]['rss_mb']:.0f} MB"
        )
    return out


def bench_event_path(count: int) -> dict[str, Any]:
    """Uploads through the local stack (S3 -> SQS -> source -> router -> function -> S3)."""
    from lepton_stack.stack import LocalStack, aws_client
    from lepton_stack.state import Ports, StackLayout

    png_bytes = sample_png()
    with tempfile.TemporaryDirectory() as root:
        layout = StackLayout(
            root=Path(root) / ".lepton",
            ports=Ports(
                s3=free_port(),
                router=free_port(),
                infer=free_port(),
                train=free_port(),
                webhook=free_port(),
            ),
        )
        stack = LocalStack(layout)
        try:
            say("event path: starting the local stack (it trains its first model)")
            stack.start(progress=lambda m: say(f"  {m}"))
            s3 = aws_client(layout, "s3")
            keys = [f"images/bench/{i:04d}.png" for i in range(count)]
            uploaded: dict[str, float] = {}
            landed: dict[str, float] = {}
            done = threading.Event()

            def watch() -> None:
                paginator = s3.get_paginator("list_objects_v2")
                while not done.is_set():
                    for page in paginator.paginate(Bucket="lepton-results", Prefix="images/bench/"):
                        for item in page.get("Contents", []):
                            landed.setdefault(item["Key"][:-5], time.perf_counter())
                    if len(landed) >= count:
                        return
                    time.sleep(0.02)

            watcher = threading.Thread(target=watch, daemon=True)
            watcher.start()
            for key in keys:
                uploaded[key] = time.perf_counter()
                s3.put_object(Bucket="lepton-uploads", Key=key, Body=png_bytes)
            watcher.join(timeout=300)
            done.set()
            latencies = [(landed[k] - uploaded[k]) * 1000 for k in keys if k in landed]
            span = max(landed.values()) - min(uploaded.values()) if landed else float("nan")
            out = {
                "uploads": count,
                "results": len(latencies),
                "p50_ms": statistics.median(latencies),
                "p99_ms": float(np.percentile(latencies, 99)),
                "uploads_per_second": len(latencies) / span,
            }
            say(
                f"  event path: {out['results']}/{count} results, p50 {out['p50_ms']:.0f} ms, "
                f"p99 {out['p99_ms']:.0f} ms, {out['uploads_per_second']:.1f} uploads/s"
            )
            return out
        finally:
            stack.shutdown()


# --- report -------------------------------------------------------------------------------------


def machine() -> dict[str, Any]:
    cpu = "unknown"
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    return {
        "cpu": cpu,
        "cores": os.cpu_count(),
        "python": platform.python_version(),
        "platform": platform.platform(),
        "date": datetime.now(UTC).isoformat(timespec="seconds"),
    }


def _peer_rows(peers_out: dict[str, Any], peer: str, ours: list[str]) -> list[str]:
    routes = peers_out["routes"]
    if peer not in routes:
        return [f"| {peer}: not installed here | | | | | | | | |"]
    base = routes[peer]
    lines = []
    for key in (peer, *ours):
        row = routes[key]
        c1, c8, c32 = (row[str(c)]["rps"] for c in CONCURRENCY)
        cpu = row["8"].get("cpu_us", float("nan"))
        ratio = (
            ""
            if key == peer
            else f"{c8 / base['8']['rps']:.2f}x / {c32 / base['32']['rps']:.2f}x "
            f"/ {base['8'].get('cpu_us', float('nan')) / cpu:.2f}x"
        )
        lines.append(
            f"| {row['title']} | {c1:.0f} | {c8:.0f} | {c32:.0f} | {row['8']['p50_ms']:.2f} "
            f"| {row['8']['p99_ms']:.2f} | {row['32']['p99_ms']:.2f} | {cpu:.0f} | {ratio} |"
        )
    return lines


def _raw_against_v1(raw: dict[str, Any], v1: dict[str, Any]) -> list[str]:
    """`POST /` against the V1 route of the same server, their runs paired round by round."""
    cells = []
    for c in CONCURRENCY:
        a, b = raw[str(c)], v1[str(c)]
        cpu = (
            f"{paired_ratio(b['cpu_runs'], a['cpu_runs']):.2f}x"
            if "cpu_runs" in a and "cpu_runs" in b
            else ""
        )
        cells.append(
            f"{paired_ratio(a['runs'], b['runs']):.2f}x ({a['rps'] / b['rps']:.2f}x) | {cpu}"
        )
    return [
        "| `POST /` (the PNG) against `POST /v1/models/digits:predict`, the same server: median "
        "of the run-by-run ratios (ratio of the medians) | req/s c=1 | CPU c=1 | req/s c=8 "
        "| CPU c=8 | req/s c=32 | CPU c=32 |",
        "| --- | ---: | ---: | ---: | ---: | ---: | ---: |",
        "| `POST /` against V1 (above 1.00x: `POST /` answers more, or spends less CPU per "
        f"request) | {' | '.join(cells)} |",
    ]


def table(results: dict[str, Any]) -> str:
    lines: list[str] = []
    peers_out = results.get("peers")
    if peers_out:
        workers, routes = peers_out["workers"], peers_out["routes"]
        header = (
            " | c=1 req/s | c=8 req/s | c=32 req/s | p50 ms (c=8) | p99 ms (c=8) | p99 ms (c=32) "
            "| CPU µs/request (c=8) | vs the peer: req/s c=8 / c=32 / CPU per request |"
        )
        rule = "| --- | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: |"
        lines += [
            f'| Against KServe: the same KServe V1 body `{{"instances": [{{"b64": ...}}]}}` '
            f"(one 28x28 PNG), {workers} worker processes each" + header,
            rule,
            *_peer_rows(
                peers_out,
                "kserve",
                [k for k in ("lepton_v1", "lepton_raw", "lepton_v1_logged") if k in routes],
            ),
            "",
            f"| Against MLServer: the same V2 body (one BYTES tensor, the PNG in base64), "
            f"{workers} workers each" + header,
            rule,
            *_peer_rows(peers_out, "mlserver", ["lepton_v2"]),
        ]
        if "lepton_raw" in routes and "lepton_v1" in routes:
            lines += ["", *_raw_against_v1(routes["lepton_raw"], routes["lepton_v1"])]
    cold = results.get("cold_start")
    if cold:
        names = {
            "kserve": "KServe ModelServer (peer), model from local disk",
            "mlserver": "MLServer (peer), model from local disk",
            "litert": "Lepton (LiteRT), model from the stack's S3",
            "tensorflow": "Lepton on TensorFlow (LEPTON_RUNTIME=tensorflow), from S3",
        }
        lines += [
            "",
            "| Process start to first prediction (2 workers each) | s (median) | runs s "
            "| largest process MB | all processes MB |",
            "| --- | ---: | --- | ---: | ---: |",
        ]
        for key, name in names.items():
            if key in cold:
                row = cold[key]
                runs = ", ".join(f"{r:.2f}" for r in row["runs"])
                lines.append(
                    f"| {name} | {row['cold_start_s']:.2f} | {runs} | {row['rss_mb']:.0f} "
                    f"| {row['rss_total_mb']:.0f} |"
                )
    drop_in = results.get("drop_in")
    if drop_in:
        lines += [
            "",
            f"| KServe's own client ({drop_in['client']}, `InferenceRESTClient`) against the "
            "inference function | result |",
            "| --- | --- |",
        ]
        for check in drop_in["checks"]:
            verdict = "ok" if check["ok"] else "FAILED"
            lines.append(f"| {check['name']} | {verdict}: {check['detail']} |")
    http = results.get("http")
    if http:
        seed8, ceiling8 = http["seed"]["8"]["rps"], http["ceiling"]["8"]["rps"]
        lines += [
            "",
            "| Reference points (1 PNG/request, `POST /`) | c=1 req/s | c=8 req/s | c=32 req/s "
            "| p50 ms (c=8) | p99 ms (c=8) | vs seed (c=8) | vs ceiling (c=8) |",
            "| --- | ---: | ---: | ---: | ---: | ---: | ---: | ---: |",
        ]
        names = {
            "seed": "seed design: Flask + TF model.predict()",
            "ceiling": "framework ceiling: parliament as shipped, constant answer",
            "server": "our server (lepton serve), constant answer",
        }
        rows = {key: http[key] for key in names}
        if peers_out:
            names["lepton"] = "Lepton inference function (LiteRT), from the peer runs above"
            rows["lepton"] = peers_out["routes"]["lepton_raw"]
        for key, name in names.items():
            row = rows[key]
            c1, c8, c32 = row["1"]["rps"], row["8"]["rps"], row["32"]["rps"]
            lines.append(
                f"| {name} | {c1:.0f} | {c8:.0f} | {c32:.0f} | {row['8']['p50_ms']:.2f} "
                f"| {row['8']['p99_ms']:.2f} | {c8 / seed8:.1f}x | {c8 / ceiling8:.0%} |"
            )
        local = results.get("in_process")
        if local:
            lines.append(
                f"| in-process decode + LiteRT, no HTTP (the model's limit) | {local['rps']:.0f} "
                f"| | | {local['p50_ms']:.3f} | {local['p99_ms']:.3f} "
                f"| {local['rps'] / seed8:.0f}x | |"
            )
    if results.get("decode"):
        lines += [
            "",
            "| Decode a JPEG to the 28x28 input | Lepton decoder ms | plain Pillow ms | speed-up |",
            "| --- | ---: | ---: | ---: |",
        ]
        for size, row in results["decode"].items():
            speedup = row["pillow"] / row["lepton"]
            lines.append(f"| {size} | {row['lepton']:.1f} | {row['pillow']:.1f} | {speedup:.1f}x |")
    if cold and "tensorflow" in cold:
        lite, tf = cold["litert"], cold["tensorflow"]
        lines += [
            "",
            "| LiteRT vs TensorFlow runtime | cold start | largest process |",
            "| --- | ---: | ---: |",
            f"| LiteRT advantage | {tf['cold_start_s'] / lite['cold_start_s']:.1f}x faster "
            f"| {tf['rss_mb'] / lite['rss_mb']:.1f}x smaller |",
        ]
    hostile = results.get("hostile")
    if hostile:
        lines += [
            "",
            "| Peak worker memory (VmHWM, LEPTON_WORKERS=2) | largest worker MB | answers |",
            "| --- | ---: | --- |",
            f"| normal load: wrk c=8, one PNG a request | {hostile['normal_peak_mb']:.0f} | |",
            f"| then the hostile images of tests/hostile_images.py ({hostile['images']}), one at "
            f"a time, then 8 at once | {hostile['hostile_peak_mb']:.0f} "
            f"| {hostile['classified']} classified, {hostile['refused']} refused, "
            f"{hostile['other']} other; slowest {hostile['slowest_answer_s']:.1f} s |",
            "| bound (tests/lepton_runtime/inference/test_hostile_requests.py) | 300 | |",
        ]
    if results.get("event_path"):
        event = results["event_path"]
        lines += [
            "",
            "| Event path (local stack) | results | p50 ms | p99 ms | uploads/s |",
            "| --- | ---: | ---: | ---: | ---: |",
            f"| S3 upload -> result object | {event['results']}/{event['uploads']} "
            f"| {event['p50_ms']:.0f} | {event['p99_ms']:.0f} "
            f"| {event['uploads_per_second']:.1f} |",
        ]
    training = results.get("training")
    if training:
        to97 = training["seconds_to_97"]
        reached = f"{to97:.1f} s (epoch {training['epoch_to_97']})" if to97 else "not reached"
        lines += [
            "",
            "| Training on the digits (2 cores) | value |",
            "| --- | ---: |",
            f"| time to 97% validation accuracy | {reached} |",
            f"| final validation accuracy | {training['val_accuracy']:.2%} "
            f"after {training['epochs']} epochs ({training['seconds_total']:.1f} s) |",
            f"| training throughput | {training['train_images_per_second']:.0f} images/s |",
        ]
    return "\n".join(lines).strip("\n")


def plot(results: dict[str, Any], path: Path) -> None:
    """Throughput of each route against the peers, by concurrency."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    routes = results["peers"]["routes"]
    fig, ax = plt.subplots(figsize=(8, 3.8), dpi=100)
    keys = [
        k for k in ("kserve", "lepton_v1", "lepton_raw", "mlserver", "lepton_v2") if k in routes
    ]
    width = 0.8 / len(keys)
    for i, key in enumerate(keys):
        values = [routes[key][str(c)]["rps"] for c in CONCURRENCY]
        offsets = [x + (i - (len(keys) - 1) / 2) * width for x in range(len(CONCURRENCY))]
        ax.bar(offsets, values, width, label=routes[key]["title"].replace("`", ""))
    ax.set_xticks(range(len(CONCURRENCY)), [f"c={c}" for c in CONCURRENCY])
    ax.set_ylabel("requests/s (one 28x28 PNG each)")
    ax.legend(fontsize=7)
    ax.grid(axis="y", alpha=0.3)
    fig.tight_layout()
    fig.savefig(path)
    plt.close(fig)


SECTIONS = (
    "peers",
    "drop_in",
    "http",
    "in_process",
    "decode",
    "cold_start",
    "hostile",
    "event_path",
)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--seconds", type=float, default=3.0, help="per wrk run")
    parser.add_argument(
        "--peer-repeats",
        type=int,
        default=9,
        help="runs of each server at each concurrency against the peers (alternated)",
    )
    parser.add_argument("--peer-seconds", type=float, default=2.0, help="per run against peers")
    parser.add_argument("--uploads", type=int, default=200, help="event-path uploads")
    parser.add_argument("--skip-event-path", action="store_true")
    parser.add_argument(
        "--only",
        default="",
        help=f"comma-separated sections to run ({', '.join(SECTIONS)}); prints, writes no files",
    )
    parser.add_argument(
        "--model-dir", type=Path, help="an exported model to serve instead of training one"
    )
    parser.add_argument(
        "--peers-dir",
        type=Path,
        default=peers.DEFAULT_ROOT,
        help="where the peers' virtualenvs are kept",
    )
    parser.add_argument("--json", type=Path, default=ROOT / "bench" / "results" / "latest.json")
    parser.add_argument("--markdown", type=Path, default=ROOT / "docs" / "benchmarks.md")
    args = parser.parse_args(argv)
    sections = set(args.only.split(",")) if args.only else set(SECTIONS)
    if args.skip_event_path:
        sections.discard("event_path")
    if unknown := sections - set(SECTIONS):
        parser.error(f"unknown sections: {', '.join(sorted(unknown))}")
    if shutil.which("wrk") is None:
        print("bench: wrk is not installed (Debian: apt-get install wrk)", file=sys.stderr)
        return 2
    import logging

    logging.getLogger("werkzeug").setLevel(logging.ERROR)  # moto's per-request access log
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
    # The function image installs the package with pip, which compiles it; an editable checkout
    # with PYTHONDONTWRITEBYTECODE set would compile every module again at each start.
    subprocess.run(
        [PYTHON, "-m", "compileall", "-q", str(ROOT / "shared"), str(ROOT / "functions")],
        check=False,
        capture_output=True,
    )
    started = time.perf_counter()
    results: dict[str, Any] = {"machine": machine()}
    with tempfile.TemporaryDirectory(prefix="lepton-bench-") as tmp:
        workdir = Path(tmp)
        if args.model_dir:
            model_dir = args.model_dir
        else:
            say("training the digits model (the training benchmark)")
            model_dir, results["training"] = train_digits(workdir)
        png_bytes = sample_png()
        png = workdir / "digit.png"
        png.write_bytes(png_bytes)
        bodies = request_bodies(png_bytes, workdir)
        with moto_with_model(model_dir) as env:
            if "peers" in sections:
                say(f"against the peers: {WORKERS} workers each, runs alternated")
                results["peers"] = bench_peers(
                    model_dir, env, bodies, args.peer_repeats, args.peer_seconds, args.peers_dir
                )
            if "drop_in" in sections:
                say("KServe's own client (V1 and V2) against the inference function")
                results["drop_in"] = drop_in_check(env, png, args.peers_dir)
            if "cold_start" in sections:
                say("cold starts, alternated")
                results["cold_start"] = bench_cold_start(
                    model_dir, env, bodies, args.repeats, args.peers_dir
                )
            if "http" in sections:
                results["http"] = bench_http(model_dir, png, env, args.repeats, args.seconds)
            if "in_process" in sections:
                say("in-process predictor")
                results["in_process"] = bench_in_process(model_dir, png_bytes, args.seconds)
            if "decode" in sections:
                say("decoding photos")
                results["decode"] = bench_decode(max(5, args.repeats * 3))
            if "hostile" in sections:
                say("peak worker memory: normal load, then the hostile images")
                results["hostile"] = bench_hostile(env, png, args.seconds)
        if "event_path" in sections:
            results["event_path"] = bench_event_path(args.uploads)
    results["seconds"] = time.perf_counter() - started
    report = table(results)
    print(report)
    if args.only:
        return 0
    args.json.parent.mkdir(parents=True, exist_ok=True)
    args.json.write_text(json.dumps(results, indent=2))
    args.markdown.parent.mkdir(parents=True, exist_ok=True)
    plot(results, args.markdown.with_suffix(".png"))
    info = results["machine"]
    args.markdown.write_text(
        "# Benchmarks\n\nProduced by `make bench` (bench/run.py) on "
        f"{info['date']}: {info['cpu']}, {info['cores']} cores, Python {info['python']}. "
        f"Against the peers: medians of {args.peer_repeats} runs of {args.peer_seconds:.0f} s "
        "per server and concurrency, the servers taking turns run by run; elsewhere medians of "
        f"{args.repeats} runs ({args.seconds:.0f} s each for HTTP). Everything is measured in "
        "the same run and ratios are taken side by side. "
        "Raw numbers: bench/results/latest.json. What bounds each figure, and what was done to "
        "get there: [performance.md](performance.md).\n\n"
        f"![throughput]({args.markdown.with_suffix('.png').name})\n\n{report}\n"
    )
    say(f"done in {results['seconds']:.0f} s; wrote {args.json} and {args.markdown}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
