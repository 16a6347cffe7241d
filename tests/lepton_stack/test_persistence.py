"""The local stack's buckets mirrored to disk and restored (lepton_stack.persistence)."""

from __future__ import annotations

from pathlib import Path

import boto3
import pytest
from moto import mock_aws

from lepton_stack.persistence import BucketMirror, key_path

BUCKETS = ["lepton-uploads", "lepton-models"]


def _s3():
    client = boto3.client("s3", region_name="us-east-1")
    for bucket in BUCKETS:
        client.create_bucket(Bucket=bucket)
    return client


def _objects(s3, bucket: str) -> dict[str, bytes]:
    listing = s3.list_objects_v2(Bucket=bucket).get("Contents", [])
    return {o["Key"]: s3.get_object(Bucket=bucket, Key=o["Key"])["Body"].read() for o in listing}


def test_objects_survive_a_new_endpoint_with_their_types_and_metadata(tmp_path: Path) -> None:
    with mock_aws():
        s3 = _s3()
        s3.put_object(
            Bucket="lepton-models",
            Key="digits/v1/training_history.png",
            Body=b"png",
            ContentType="image/png",
            Metadata={"trained": "yes"},
        )
        s3.put_object(Bucket="lepton-uploads", Key="datasets/shapes.zip", Body=b"zip")
        BucketMirror(s3, tmp_path, BUCKETS).save()
    assert (tmp_path / "lepton-models/digits/v1/training_history.png").read_bytes() == b"png"

    with mock_aws():  # a new, empty endpoint: the next `lepton up`
        s3 = _s3()
        assert BucketMirror(s3, tmp_path, BUCKETS).restore() == 2
        head = s3.head_object(Bucket="lepton-models", Key="digits/v1/training_history.png")
        assert (head["ContentType"], head["Metadata"]) == ("image/png", {"trained": "yes"})
        assert _objects(s3, "lepton-uploads") == {"datasets/shapes.zip": b"zip"}


def test_saving_again_writes_only_what_changed_and_removes_what_was_deleted(
    tmp_path: Path,
) -> None:
    with mock_aws():
        s3 = _s3()
        for key in ("a", "b", "c"):
            s3.put_object(Bucket="lepton-uploads", Key=f"images/{key}.png", Body=key.encode())
        mirror = BucketMirror(s3, tmp_path, BUCKETS)
        assert mirror.save().written == 3

        s3.put_object(Bucket="lepton-uploads", Key="images/a.png", Body=b"changed")
        s3.delete_object(Bucket="lepton-uploads", Key="images/b.png")
        report = mirror.save()

    assert (report.written, report.removed, report.kept) == (1, 1, 1)
    assert (tmp_path / "lepton-uploads/images/a.png").read_bytes() == b"changed"
    assert not (tmp_path / "lepton-uploads/images/b.png").exists()


@pytest.mark.parametrize("key", ["../escape", "/abs", "dir/", "a/./b", "index.json", "x\0y"])
def test_a_key_that_is_not_a_safe_path_is_kept_under_its_hash(tmp_path: Path, key: str) -> None:
    assert key_path(key).startswith("_keys/")
    with mock_aws():
        s3 = _s3()
        s3.put_object(Bucket="lepton-uploads", Key=key, Body=b"odd")
        BucketMirror(s3, tmp_path, BUCKETS).save()
    assert not (tmp_path.parent / "escape").exists()
    with mock_aws():
        s3 = _s3()
        BucketMirror(s3, tmp_path, BUCKETS).restore()
        assert _objects(s3, "lepton-uploads") == {key: b"odd"}
