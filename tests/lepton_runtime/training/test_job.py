"""`lepton train-job` (the JobSink contract): the same training, exit codes a Job acts on."""

from __future__ import annotations

import json
import threading
import tracemalloc
from pathlib import Path

import pytest
from cloudevents.conversion import to_json
from cloudevents.http import CloudEvent

from archive_bombs import GiB, zip_of_zeros
from lepton_runtime.events.outbound import MODEL_PUBLISHED
from lepton_runtime.settings import Location
from lepton_runtime.training.job import EXIT_FAILED, EXIT_OK, run_job
from lepton_runtime.training.requests import dataset_source_for_key


def test_an_archive_bomb_fails_the_job_without_retry(
    service, s3, record, tmp_path: Path, caplog
) -> None:
    s3.put_object(
        Bucket="lepton-uploads", Key="datasets/bomb.zip", Body=zip_of_zeros("0/a.png", 3 * GiB)
    )
    event = CloudEvent(
        {"type": "com.amazonaws.s3.ObjectCreated:Put", "source": "aws:s3"},
        {"Records": [record("datasets/bomb.zip")]},
    )
    event_file = tmp_path / "event"
    event_file.write_bytes(to_json(event))

    assert run_job(service, event_file) == EXIT_FAILED
    failed = [r for r in caplog.records if r.getMessage() == "training failed"]
    assert "(max_member_bytes)" in json.dumps(failed[0].__dict__.get("error"))
    assert "Contents" not in s3.list_objects_v2(Bucket="lepton-models", Prefix="bomb/")


def test_an_event_file_of_a_million_values_fails_the_job_before_it_is_parsed(
    service, tmp_path: Path
) -> None:
    """A 4 MB event file of 1.4 million empty arrays: the SDK's from_json parsed it three
    times with unbounded json, 296 MB (in-process)."""
    event_file = tmp_path / "event"
    event_file.write_bytes(
        b'{"specversion":"1.0","id":"x","source":"s","type":"t","data":['
        + b"[]," * (4 * 1024 * 1024 // 3)
        + b"[]]}"
    )
    tracemalloc.start()
    try:
        assert run_job(service, event_file) == EXIT_FAILED
        peak = tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()
    assert peak < 32 * 1024 * 1024, f"{peak / 2**20:.0f} MB"


def write_event(tmp_path: Path, record: dict) -> Path:
    event = CloudEvent(
        {
            "type": "com.amazonaws.s3.ObjectCreated:Put",
            "source": "aws:s3.us-east-1.lepton-uploads",
            "subject": record["s3"]["object"]["key"],
        },
        record,
    )
    event_file = tmp_path / "event"
    event_file.write_bytes(to_json(event))
    return event_file


def test_a_large_dataset_trains_publishes_and_announces_its_model(
    make_service, s3, record, digits_zip, tmp_path: Path, subscriber_url
) -> None:
    url, received = subscriber_url
    (tmp_path / "oidc-token").write_text("token-for-the-broker\n")  # as a SinkBinding mounts it
    service = make_service(K_SINK=url, LEPTON_SINK_TOKEN_FILE=str(tmp_path / "oidc-token"))
    s3.put_object(Bucket="lepton-uploads", Key="datasets/large/digits.zip", Body=digits_zip)
    event_file = write_event(tmp_path, record("datasets/large/digits.zip"))

    assert run_job(service, event_file) == EXIT_OK
    pointer = json.loads(
        s3.get_object(Bucket="lepton-models", Key="digits/latest.json")["Body"].read()
    )
    (reply,) = received
    assert reply["ce-type"] == MODEL_PUBLISHED
    assert reply["authorization"] == "Bearer token-for-the-broker"
    assert json.loads(reply["body"])["version"] == pointer["version"]


def test_a_folder_dataset_deeper_under_datasets_trains_too(
    service, s3, record, digit_files, tmp_path: Path
) -> None:
    for name, data in digit_files:
        s3.put_object(Bucket="lepton-uploads", Key=f"datasets/large/set/{name}", Body=data)
    key = "datasets/large/set/manifest.json"
    s3.put_object(Bucket="lepton-uploads", Key=key, Body=b'{"model": "digits"}')
    assert run_job(service, write_event(tmp_path, record(key))) == EXIT_OK
    assert s3.head_object(Bucket="lepton-models", Key="digits/latest.json")


def test_an_event_that_names_no_dataset_fails_the_job(
    service, record, tmp_path: Path, caplog
) -> None:
    # An image of a folder dataset: the Triggers never send one here, so it is a routing fault.
    assert run_job(service, write_event(tmp_path, record("datasets/large/set/7/a.png"))) == (
        EXIT_FAILED
    )
    assert any(r.getMessage() == "the event names no dataset to train on" for r in caplog.records)


@pytest.mark.parametrize(
    ("key", "kind", "name"),
    [
        ("datasets/digits.zip", "archive", "digits"),
        ("datasets/large/digits.zip", "archive", "digits"),
        ("datasets/large/deeper/still/x.tar.gz", "archive", "x"),
        ("datasets/large/x.TGZ", "archive", "x"),
        ("datasets/large/x.tar", "archive", "x"),
        ("datasets/set/manifest.json", "folder", "set"),
        ("datasets/large/set/manifest.json", "folder", "set"),
        ("datasets/large/set/7/a.png", None, None),
        ("datasets/.zip", None, None),
        ("datasets/manifest.json", None, None),
        ("images/x.zip", None, None),
    ],
)
def test_dataset_keys_at_any_depth_map_to_a_model_name(key: str, kind, name) -> None:
    source = dataset_source_for_key(Location("lepton-uploads", "datasets/"), "lepton-uploads", key)
    assert (source.kind, source.name) == (kind, name) if source else kind is None


def test_a_folder_datasets_prefix_is_its_own_folder() -> None:
    source = dataset_source_for_key(
        Location("lepton-uploads", "datasets/"),
        "lepton-uploads",
        "datasets/large/set/manifest.json",
    )
    assert source is not None and source.prefix == "datasets/large/set/"


@pytest.fixture
def subscriber_url():
    """A loopback HTTP server recording the CloudEvents posted to it (the Broker, for K_SINK)."""
    from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

    received: list[dict] = []

    class Handler(BaseHTTPRequestHandler):
        def do_POST(self) -> None:
            body = self.rfile.read(int(self.headers.get("Content-Length", 0)))
            received.append(
                {
                    "ce-type": self.headers.get("ce-type"),
                    "authorization": self.headers.get("Authorization"),
                    "body": body,
                }
            )
            self.send_response(202)
            self.send_header("Content-Length", "0")
            self.end_headers()

        def log_message(self, *args) -> None:  # type: ignore[no-untyped-def]
            pass

    server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    yield f"http://127.0.0.1:{server.server_address[1]}/", received
    server.shutdown()
    server.server_close()
