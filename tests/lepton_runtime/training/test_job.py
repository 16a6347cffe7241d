"""`lepton train-job` (the JobSink contract): the same training, exit codes a Job acts on."""

from __future__ import annotations

import json
from pathlib import Path

from cloudevents.conversion import to_json
from cloudevents.http import CloudEvent

from archive_bombs import GiB, zip_of_zeros
from lepton_runtime.training.job import EXIT_FAILED, run_job


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
