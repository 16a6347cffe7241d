"""What one inference replica sustains on the event path: the figure the aws overlay's
IntegrationSource polling is set from (knative/README.md, "Bursts of uploads").

One `lepton serve infer` process with one worker (a replica's CPU limit is one core), event
authentication on (tokens of a local issuer, as a Broker with OIDC sends), against a moto server
in its own process. N images are uploaded first; then N binary S3 CloudEvents are POSTed with
16 in flight (the Service's containerConcurrency). Each event costs what it costs on a cluster:
token check, GET of the object (If-Match its ETag), decode, LiteRT, conditional PUT of the result.

    .venv/bin/python bench/event_replica.py [--events 400]

Prints events/s and latency percentiles. On this project's 2-core machine the moto server, the
load generator and the replica share the cores, so the figure is a floor for a replica with a
core of its own and a real S3.
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import tempfile
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import boto3
import requests
from cloudevents.http import CloudEvent

sys.path.insert(0, str(Path(__file__).parent))
from run import PYTHON, ROOT, free_port, process, sample_png, train_digits, wait_http

from lepton_runtime.events.outbound import binary_http
from lepton_stack.oidc import JWKS_FILE, LocalIssuer

CONCURRENCY = 16


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--events", type=int, default=400)
    args = parser.parse_args(argv)
    with tempfile.TemporaryDirectory() as tmp:
        work = Path(tmp)
        model_dir, _ = train_digits(work)
        moto_port = free_port()
        endpoint = f"http://127.0.0.1:{moto_port}"
        moto = [PYTHON, "-m", "moto.server", "-H", "127.0.0.1", "-p", str(moto_port)]
        with process(moto):
            wait_http(f"{endpoint}/moto-api/", 30)
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
                s3.put_object(
                    Bucket="lepton-models", Key=f"digits/v1/{path.name}", Body=path.read_bytes()
                )
            s3.put_object(
                Bucket="lepton-models", Key="digits/latest.json", Body=b'{"version": "v1"}'
            )
            issuer = LocalIssuer.create(work / "oidc", "http://bench.invalid")
            port = free_port()
            env = {
                "AWS_ENDPOINT_URL": endpoint,
                "AWS_ACCESS_KEY_ID": "bench",
                "AWS_SECRET_ACCESS_KEY": "bench",
                "AWS_REGION": "us-east-1",
                "LEPTON_S3_ADDRESSING_STYLE": "path",
                "LEPTON_OIDC_ISSUER": issuer.issuer,
                "LEPTON_OIDC_JWKS": str(work / "oidc" / JWKS_FILE),
                "LEPTON_OIDC_AUDIENCE": "lepton-infer",
                "LEPTON_MODEL_CACHE_DIR": str(work / "cache"),
                "LEPTON_WORKERS": "1",
                "LEPTON_LOG_LEVEL": "WARNING",
                "PORT": str(port),
            }
            serve = [PYTHON, "-m", "lepton_stack.cli", "serve", "infer", "--function-dir"]
            with process([*serve, str(ROOT / "functions" / "infer")], env):
                url = f"http://127.0.0.1:{port}/"
                wait_http(f"{url}health/readiness", 60)
                png = sample_png()
                events = []
                for index in range(args.events):
                    key = f"images/bench/{index:05d}.png"
                    etag = s3.put_object(Bucket="lepton-uploads", Key=key, Body=png)["ETag"]
                    events.append(_event(key, etag.strip('"')))
                token = issuer.token("lepton-infer")
                session = requests.Session()
                session.mount("http://", requests.adapters.HTTPAdapter(pool_maxsize=CONCURRENCY))

                def send(event: CloudEvent) -> float:
                    headers, body = binary_http(event)
                    headers["Authorization"] = f"Bearer {token}"
                    started = time.perf_counter()
                    answer = session.post(url, data=body, headers=headers, timeout=60)
                    assert answer.status_code == 200, answer.text[:200]
                    return time.perf_counter() - started

                send(events[0])  # warm up (first object read, first PUT)
                started = time.perf_counter()
                with ThreadPoolExecutor(CONCURRENCY) as pool:
                    latencies = sorted(pool.map(send, events[1:]))
                elapsed = time.perf_counter() - started
    count = len(latencies)
    result = {
        "events": count,
        "seconds": round(elapsed, 2),
        "events_per_second": round(count / elapsed, 1),
        "p50_ms": round(statistics.median(latencies) * 1000, 1),
        "p99_ms": round(latencies[int(count * 0.99) - 1] * 1000, 1),
        "concurrency": CONCURRENCY,
    }
    print(json.dumps(result))
    return 0


def _event(key: str, etag: str) -> CloudEvent:
    return CloudEvent(
        {
            "type": "com.amazonaws.s3.ObjectCreated:Put",
            "source": "aws:s3.us-east-1.lepton-uploads",
            "subject": key,
            "datacontenttype": "application/json",
        },
        {"s3": {"bucket": {"name": "lepton-uploads"}, "object": {"key": key, "eTag": etag}}},
    )


if __name__ == "__main__":
    sys.exit(main())
