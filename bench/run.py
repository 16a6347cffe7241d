"""`make bench`: side-by-side benchmarks, medians over repeats, ratios from the same run.

Measures on this machine, in one run:
- HTTP inference (one 28x28 PNG per request, wrk at concurrency 1, 8, 32): the seed design
  (Flask + TensorFlow `model.predict()` per request), the bare parliament/waitress server
  answering a constant (the framework's ceiling), our inference function, and the in-process
  predictor with no HTTP (the model's limit);
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
from contextlib import contextmanager
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import numpy as np
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
            os.killpg(proc.pid, signal.SIGTERM)
            try:
                proc.wait(15)
            except subprocess.TimeoutExpired:
                os.killpg(proc.pid, signal.SIGKILL)
                proc.wait()
        log.close()


def rss_mb(pid: int) -> float:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    return float("nan")


def tree_rss_mb(pid: int) -> tuple[float, float]:
    """(largest, total) resident memory of a process and its children (the worker processes)."""
    pids = [pid]
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            if int(stat.read_text().rsplit(")", 1)[1].split()[1]) == pid:
                pids.append(int(stat.parent.name))
        except (OSError, ValueError, IndexError):
            continue
    sizes = [rss_mb(p) for p in pids if Path(f"/proc/{p}").exists()]
    return max(sizes), sum(sizes)


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


def wrk(url: str, body_file: Path, connections: int, seconds: float) -> dict[str, float]:
    script = body_file.with_suffix(".lua")
    script.write_text(
        'wrk.method = "POST"\n'
        f'local f = io.open("{body_file}", "rb")\n'
        'wrk.body = f:read("*all")\nf:close()\n'
        'wrk.headers["Content-Type"] = "image/png"\n'
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


def serve_ours(env: dict[str, str], port: int, runtime: str, cache: Path) -> list[str]:
    env.update(
        {
            "PORT": str(port),
            "LEPTON_RUNTIME": runtime,
            "LEPTON_MODEL_CACHE_DIR": str(cache),
            "LEPTON_LOG_LEVEL": "WARNING",
            # Only images are sent here (open routes); events are measured on the local stack,
            # whose router signs them.
            "LEPTON_EVENT_AUTH": "off",
        }
    )
    return [
        PYTHON,
        "-m",
        "lepton_stack.cli",
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
    port = free_port()
    say("HTTP: the Lepton inference function (LiteRT)")
    with tempfile.TemporaryDirectory() as cache:
        command = serve_ours(env_copy := dict(env), port, "litert", Path(cache))
        with process(command, env_copy):
            wait_http(f"http://127.0.0.1:{port}/health/readiness", 60)
            out["lepton"] = load_test("lepton", f"http://127.0.0.1:{port}/", png, repeats, seconds)
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


def bench_cold_start(env: dict[str, str], png_bytes: bytes, repeats: int) -> dict[str, Any]:
    out: dict[str, Any] = {}
    for runtime in ("litert", "tensorflow"):
        starts, memory, totals = [], [], []
        for _ in range(repeats):
            port = free_port()
            with tempfile.TemporaryDirectory() as cache:
                command = serve_ours(env_copy := dict(env), port, runtime, Path(cache))
                started = time.perf_counter()
                with process(command, env_copy) as proc:
                    url = f"http://127.0.0.1:{port}/"
                    while True:
                        try:
                            if requests.post(
                                url,
                                data=png_bytes,
                                timeout=5,
                                headers={"Content-Type": "image/png"},
                            ).ok:
                                break
                        except requests.RequestException:
                            pass
                        if time.perf_counter() - started > 120:
                            raise RuntimeError(f"no prediction from the {runtime} function")
                        time.sleep(0.01)
                    starts.append(time.perf_counter() - started)
                    largest, total = tree_rss_mb(proc.pid)
                    memory.append(largest)
                    totals.append(total)
        out[runtime] = {
            "cold_start_s": statistics.median(starts),
            "rss_mb": statistics.median(memory),
            "rss_total_mb": statistics.median(totals),
            "runs": starts,
        }
        say(
            f"  cold start {runtime}: {out[runtime]['cold_start_s']:.2f} s, "
            f"RSS {out[runtime]['rss_mb']:.0f} MB"
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


def table(results: dict[str, Any]) -> str:
    http = results["http"]
    seed8, ceiling8 = http["seed"]["8"]["rps"], http["ceiling"]["8"]["rps"]
    lines = [
        "| Inference over HTTP (1 PNG/request) | c=1 req/s | c=8 req/s | c=32 req/s "
        "| p50 ms (c=8) | p99 ms (c=8) | vs seed (c=8) | vs ceiling (c=8) |",
        "| --- | ---: | ---: | ---: | ---: | ---: | ---: | ---: |",
    ]
    names = {
        "seed": "seed design: Flask + TF model.predict()",
        "ceiling": "framework ceiling: parliament as shipped, constant answer",
        "server": "our server (lepton serve), constant answer",
        "lepton": "Lepton inference function (LiteRT)",
    }
    for key, name in names.items():
        row = http[key]
        c1, c8, c32 = row["1"]["rps"], row["8"]["rps"], row["32"]["rps"]
        lines.append(
            f"| {name} | {c1:.0f} | {c8:.0f} | {c32:.0f} | {row['8']['p50_ms']:.2f} "
            f"| {row['8']['p99_ms']:.2f} | {c8 / seed8:.1f}x | {c8 / ceiling8:.0%} |"
        )
    local = results["in_process"]
    lines.append(
        f"| in-process decode + LiteRT, no HTTP (the model's limit) | {local['rps']:.0f} | | "
        f"| {local['p50_ms']:.3f} | {local['p99_ms']:.3f} | {local['rps'] / seed8:.0f}x | |"
    )
    lines += [
        "",
        "| Decode a JPEG to the 28x28 input | Lepton decoder ms | plain Pillow ms | speed-up |",
        "| --- | ---: | ---: | ---: |",
    ]
    for size, row in results["decode"].items():
        speedup = row["pillow"] / row["lepton"]
        lines.append(f"| {size} | {row['lepton']:.1f} | {row['pillow']:.1f} | {speedup:.1f}x |")
    cold = results["cold_start"]
    lite, tf = cold["litert"], cold["tensorflow"]
    lines += [
        "",
        "| Runtime | cold start to first prediction s | largest process MB | all processes MB |",
        "| --- | ---: | ---: | ---: |",
        f"| LiteRT | {lite['cold_start_s']:.2f} | {lite['rss_mb']:.0f} "
        f"| {lite['rss_total_mb']:.0f} |",
        f"| TensorFlow (LEPTON_RUNTIME=tensorflow) | {tf['cold_start_s']:.2f} "
        f"| {tf['rss_mb']:.0f} | {tf['rss_total_mb']:.0f} |",
        f"| LiteRT advantage | {tf['cold_start_s'] / lite['cold_start_s']:.1f}x faster "
        f"| {tf['rss_mb'] / lite['rss_mb']:.1f}x smaller | |",
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
    training = results["training"]
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
    return "\n".join(lines)


def plot(results: dict[str, Any], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    http = results["http"]
    fig, ax = plt.subplots(figsize=(7, 3.6), dpi=100)
    width = 0.25
    for i, (key, label) in enumerate(
        (
            ("seed", "seed (Flask + TF predict)"),
            ("lepton", "Lepton (LiteRT)"),
            ("ceiling", "bare parliament"),
        )
    ):
        values = [http[key][str(c)]["rps"] for c in CONCURRENCY]
        ax.bar([x + (i - 1) * width for x in range(len(CONCURRENCY))], values, width, label=label)
    ax.set_xticks(range(len(CONCURRENCY)), [f"c={c}" for c in CONCURRENCY])
    ax.set_ylabel("requests/s (one 28x28 PNG each)")
    ax.set_yscale("log")
    ax.legend()
    ax.grid(axis="y", alpha=0.3)
    fig.tight_layout()
    fig.savefig(path)
    plt.close(fig)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--seconds", type=float, default=5.0, help="per wrk run")
    parser.add_argument("--uploads", type=int, default=200, help="event-path uploads")
    parser.add_argument("--skip-event-path", action="store_true")
    parser.add_argument("--json", type=Path, default=ROOT / "bench" / "results" / "latest.json")
    parser.add_argument("--markdown", type=Path, default=ROOT / "docs" / "benchmarks.md")
    args = parser.parse_args(argv)
    if shutil.which("wrk") is None:
        print("bench: wrk is not installed (Debian: apt-get install wrk)", file=sys.stderr)
        return 2
    import logging

    logging.getLogger("werkzeug").setLevel(logging.ERROR)  # moto's per-request access log
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
    started = time.perf_counter()
    results: dict[str, Any] = {"machine": machine()}
    with tempfile.TemporaryDirectory(prefix="lepton-bench-") as tmp:
        workdir = Path(tmp)
        say("training the digits model (the training benchmark)")
        model_dir, results["training"] = train_digits(workdir)
        png_bytes = sample_png()
        png = workdir / "digit.png"
        png.write_bytes(png_bytes)
        with moto_with_model(model_dir) as env:
            results["http"] = bench_http(model_dir, png, env, args.repeats, args.seconds)
            say("in-process predictor")
            results["in_process"] = bench_in_process(model_dir, png_bytes, args.seconds)
            say("decoding photos")
            results["decode"] = bench_decode(max(5, args.repeats * 3))
            say("cold starts")
            results["cold_start"] = bench_cold_start(env, png_bytes, args.repeats)
            say("peak worker memory: normal load, then the hostile images")
            results["hostile"] = bench_hostile(env, png, args.seconds)
        if not args.skip_event_path:
            results["event_path"] = bench_event_path(args.uploads)
    results["seconds"] = time.perf_counter() - started
    report = table(results)
    print(report)
    args.json.parent.mkdir(parents=True, exist_ok=True)
    args.json.write_text(json.dumps(results, indent=2))
    args.markdown.parent.mkdir(parents=True, exist_ok=True)
    plot(results, args.markdown.with_suffix(".png"))
    info = results["machine"]
    args.markdown.write_text(
        "# Benchmarks\n\nProduced by `make bench` (bench/run.py) on "
        f"{info['date']}: {info['cpu']}, {info['cores']} cores, Python {info['python']}. "
        f"Medians of {args.repeats} runs of {args.seconds:.0f} s each, all measured in the same "
        "run; ratios are taken side by side. Raw numbers: bench/results/latest.json.\n\n"
        f"![throughput]({args.markdown.with_suffix('.png').name})\n\n{report}\n"
    )
    say(f"done in {results['seconds']:.0f} s; wrote {args.json} and {args.markdown}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
