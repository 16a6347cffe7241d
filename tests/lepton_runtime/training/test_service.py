"""The training function: triggers, validation, the promotion gate, idempotency, publishing."""

from __future__ import annotations

import json
from typing import Any

import pytest

from archive_bombs import GiB, zip_of_zeros
from lepton_model.datasets import DatasetLimits
from lepton_runtime.errors import StorageUnavailableError
from lepton_runtime.events.inbound import parse_json
from lepton_runtime.events.outbound import event_from_http
from lepton_runtime.settings import Settings
from lepton_runtime.training.service import dataset_limits


def models_of(s3: Any, name: str = "digits") -> list[str]:
    listing = s3.list_objects_v2(Bucket="lepton-models", Prefix=f"{name}/", Delimiter="/")
    return sorted(
        p["Prefix"].split("/")[1]
        for p in listing.get("CommonPrefixes", [])
        if p["Prefix"].split("/")[1] != "runs"
    )


def live_version(s3: Any, name: str = "digits") -> str | None:
    try:
        body = s3.get_object(Bucket="lepton-models", Key=f"{name}/latest.json")["Body"].read()
    except s3.exceptions.NoSuchKey:
        return None
    return json.loads(body)["version"]


def reply(response) -> Any:
    return event_from_http(response.headers, response.get_data())


@pytest.fixture
def uploaded_archive(s3, digits_zip) -> str:
    s3.put_object(Bucket="lepton-uploads", Key="datasets/digits.zip", Body=digits_zip)
    return "datasets/digits.zip"


# --- triggers -----------------------------------------------------------------------------------


def test_archive_upload_trains_and_publishes_a_live_version(
    client, s3, record, uploaded_archive
) -> None:
    response = client.post("/", json={"Records": [record(uploaded_archive)]})
    event = reply(response)
    version = event.data["version"]
    assert response.status_code == 200
    assert event["type"] == "ai.lepton.model.published"
    assert event.data["promoted"] is True
    assert live_version(s3) == version
    files = {
        o["Key"].rsplit("/", 1)[1]
        for o in s3.list_objects_v2(Bucket="lepton-models", Prefix=f"digits/{version}/")["Contents"]
    }
    assert files == {
        "model.keras",
        "model.tflite",
        "metadata.json",
        "training_curves.png",
        "confusion_matrix.png",
    }


def test_published_metadata_records_dataset_and_metrics(
    client, s3, record, uploaded_archive
) -> None:
    version = reply(client.post("/", json={"Records": [record(uploaded_archive)]})).data["version"]
    meta = json.loads(
        s3.get_object(Bucket="lepton-models", Key=f"digits/{version}/metadata.json")["Body"].read()
    )
    assert meta["name"] == "digits" and meta["version"] == version
    assert meta["labels"] == [str(d) for d in range(10)]
    assert meta["dataset"]["digest"].startswith("sha256:")
    assert 0.0 <= meta["metrics"]["val_accuracy"] <= 1.0


def test_tar_gz_archive_is_accepted(client, s3, record, digit_files) -> None:
    import io
    import tarfile

    buffer = io.BytesIO()
    with tarfile.open(fileobj=buffer, mode="w:gz") as archive:
        for name, data in digit_files:
            info = tarfile.TarInfo(name)
            info.size = len(data)
            archive.addfile(info, io.BytesIO(data))
    s3.put_object(Bucket="lepton-uploads", Key="datasets/shapes.tar.gz", Body=buffer.getvalue())
    event = reply(client.post("/", json={"Records": [record("datasets/shapes.tar.gz")]}))
    assert event.data["name"] == "shapes"  # the model is named after the dataset
    assert live_version(s3, "shapes") == event.data["version"]


def test_folder_dataset_trains_on_its_manifest(client, s3, record, digit_files) -> None:
    for name, data in digit_files:
        s3.put_object(Bucket="lepton-uploads", Key=f"datasets/folder/{name}", Body=data)
    s3.put_object(
        Bucket="lepton-uploads",
        Key="datasets/folder/manifest.json",
        Body=json.dumps({"model": "digits", "epochs": 2}).encode(),
    )
    event = reply(client.post("/", json={"Records": [record("datasets/folder/manifest.json")]}))
    assert event.data["name"] == "digits"
    assert event.data["dataset"]["images"] == len(digit_files)
    assert event.data["training"]["epochs_run"] <= 2


def test_an_image_of_a_folder_dataset_does_not_start_a_training(
    client, s3, record, digit_files
) -> None:
    name, data = digit_files[0]
    s3.put_object(Bucket="lepton-uploads", Key=f"datasets/folder/{name}", Body=data)
    response = client.post("/", json={"Records": [record(f"datasets/folder/{name}")]})
    assert response.status_code == 202
    assert models_of(s3) == []


def test_http_request_naming_a_dataset_trains(client, s3, uploaded_archive) -> None:
    response = client.post(
        "/",
        json={
            "dataset": f"s3://lepton-uploads/{uploaded_archive}",
            "model": "mnistish",
            "epochs": 2,
            "batch_size": 16,
        },
    )
    body = response.get_json()
    assert response.status_code == 200
    assert body["name"] == "mnistish"
    assert live_version(s3, "mnistish") == body["version"]


def test_seed_article_arrays_are_accepted(client, s3) -> None:
    x_train = [[[(i + j + k) % 2 for k in range(8)] for j in range(8)] for i in range(20)]
    y_train = [i % 2 for i in range(20)]
    response = client.post(
        "/", json={"x_train": x_train, "y_train": y_train, "model": "seed", "epochs": 1}
    )
    assert response.status_code == 200
    assert response.get_json()["dataset"]["images"] == 20


def test_image_size_option_changes_the_model_input(client, s3, uploaded_archive) -> None:
    body = client.post(
        "/", json={"dataset": uploaded_archive, "model": "small", "image_size": 16, "epochs": 1}
    ).get_json()
    meta = json.loads(
        s3.get_object(Bucket="lepton-models", Key=f"small/{body['version']}/metadata.json")[
            "Body"
        ].read()
    )
    assert meta["input_shape"] == [16, 16, 1]


_SMALL_ARRAYS = {
    "x_train": [[[(i + j + k) % 2 for k in range(8)] for j in range(8)] for i in range(20)],
    "y_train": [i % 2 for i in range(20)],
}


@pytest.mark.parametrize(
    ("data", "options"),
    [
        ("arrays", {"image_size": 1024}),
        ("archive", {"dense_units": 10**9}),
        ("archive", {"filters": [1] * 300, "kernel_size": 1, "pool_size": 1}),
    ],
    ids=["input-1024", "dense-1e9", "300-conv-blocks"],
)
def test_a_network_too_large_to_train_is_refused_before_the_dataset_is_read(
    client, s3, uploaded_archive, data, options
) -> None:
    """Networks built as asked: a 1024x1024 input with the default layers is 535M weights
    (6.9 GB to build alone, past a training pod's 4 GiB; 20 small images stay within the
    decoded-dataset limit at that size); 10**9 dense units were a 500 from TensorFlow's
    allocator after the dataset was read; 300 conv blocks of kernel and pool 1 trained one
    epoch of 300 digits in 100 s (6 images/s) and published the model."""
    dataset = _SMALL_ARRAYS if data == "arrays" else {"dataset": uploaded_archive}
    response = client.post("/", json={**dataset, "epochs": 1, **options})
    assert response.status_code == 400, response.get_data(as_text=True)
    assert "the limit is" in response.get_json()["error"]["message"]
    assert "Contents" not in s3.list_objects_v2(Bucket="lepton-models")


def test_http_request_outside_the_datasets_prefix_is_refused(client) -> None:
    response = client.post("/", json={"dataset": "s3://payroll/salaries.zip"})
    assert response.status_code == 400


# --- validation and failures --------------------------------------------------------------------


def test_single_class_dataset_fails_with_a_reason_and_publishes_nothing(
    client, s3, record, digit_files, make_zip
) -> None:
    only_ones = [(n, d) for n, d in digit_files if n.startswith("1/")]
    s3.put_object(Bucket="lepton-uploads", Key="datasets/ones.zip", Body=make_zip(only_ones))
    response = client.post("/", json={"Records": [record("datasets/ones.zip")]})
    event = reply(response)
    assert response.status_code == 200
    assert event["type"] == "ai.lepton.training.failed"
    assert "at least 2 needed" in event.data["reason"]
    assert models_of(s3, "ones") == []


def test_undecodable_files_are_listed_by_name(client, s3, record, digit_files, make_zip) -> None:
    files = [*digit_files, ("3/broken.png", b"not a png")]
    s3.put_object(Bucket="lepton-uploads", Key="datasets/digits.zip", Body=make_zip(files))
    event = reply(client.post("/", json={"Records": [record("datasets/digits.zip")]}))
    assert event["type"] == "ai.lepton.training.failed"
    assert any("3/broken.png" in problem for problem in event.data["error"]["problems"])


def test_not_an_archive_fails_cleanly(client, s3, record) -> None:
    s3.put_object(Bucket="lepton-uploads", Key="datasets/junk.zip", Body=b"plain text")
    event = reply(client.post("/", json={"Records": [record("datasets/junk.zip")]}))
    assert event["type"] == "ai.lepton.training.failed"


def test_dataset_object_gone_fails_without_retry(client, record) -> None:
    response = client.post("/", json={"Records": [record("datasets/missing.zip")]})
    assert response.status_code == 200
    assert reply(response)["type"] == "ai.lepton.training.failed"


def test_failure_leaves_the_live_model_untouched(
    client, s3, record, uploaded_archive, make_zip, digit_files
) -> None:
    first = reply(client.post("/", json={"Records": [record(uploaded_archive)]})).data["version"]
    s3.put_object(
        Bucket="lepton-uploads",
        Key="datasets/digits.zip",
        Body=make_zip([f for f in digit_files if f[0].startswith("2/")]),
    )
    reply(client.post("/", json={"Records": [record(uploaded_archive)]}))
    assert live_version(s3) == first


# --- promotion gate -----------------------------------------------------------------------------


def test_below_the_accuracy_floor_is_stored_but_not_live(
    make_service, s3, record, uploaded_archive
) -> None:
    service = make_service(LEPTON_MIN_ACCURACY="1.0", LEPTON_TRAIN_EPOCHS="1")
    from lepton_runtime.events.inbound import parse_json

    outcome = service.run_event(parse_json({"Records": [record(uploaded_archive)]}))[0]
    assert outcome.data["promoted"] is False
    assert "below the floor" in outcome.data["gate"]
    assert models_of(s3) == [outcome.data["version"]]
    assert live_version(s3) is None


def test_clearly_worse_than_live_on_the_same_data_is_not_promoted(
    client, s3, uploaded_archive
) -> None:
    good = client.post("/", json={"dataset": uploaded_archive, "epochs": 8}).get_json()
    worse = client.post(
        "/", json={"dataset": uploaded_archive, "epochs": 1, "learning_rate": 0.00001}
    ).get_json()
    assert worse["promoted"] is False
    assert "below the live version" in worse["gate"]
    assert live_version(s3) == good["version"]


def test_the_gate_scores_a_live_model_of_another_input_size_with_its_own_preprocessing(
    client, s3, uploaded_archive
) -> None:
    """A live 20x20 model is compared on the same test images, decoded at 20x20 for it and at
    28x28 for the new model, instead of being waved through as not comparable."""
    live = client.post("/", json={"dataset": uploaded_archive, "image_size": 20}).get_json()
    new = client.post("/", json={"dataset": uploaded_archive, "epochs": 12}).get_json()

    assert new["previous_version"] == live["version"]
    assert "not comparable" not in new["gate"]
    assert 0.8 <= new["metrics"]["live_test_accuracy"] <= 1.0
    assert f"vs live {live['version']}" in new["gate"] or "below the live" in new["gate"]


def test_reply_and_metadata_carry_test_and_validation_accuracy(
    client, s3, uploaded_archive
) -> None:
    reply_body = client.post("/", json={"dataset": uploaded_archive}).get_json()
    meta = json.loads(
        s3.get_object(Bucket="lepton-models", Key=f"digits/{reply_body['version']}/metadata.json")[
            "Body"
        ].read()
    )

    for metrics in (reply_body["metrics"], meta["metrics"]):
        assert 0.0 < metrics["test_accuracy"] <= 1.0
        assert 0.0 < metrics["val_accuracy"] <= 1.0
        assert metrics["test_count"] > 0 and metrics["val_count"] > 0
    assert meta["training"]["test_split"] == 0.15


def test_a_live_model_with_another_label_set_is_not_replaced_unless_asked(
    client, s3, uploaded_archive, make_zip, digit_files
) -> None:
    digits_version = client.post("/", json={"dataset": uploaded_archive}).get_json()["version"]
    s3.put_object(
        Bucket="lepton-uploads",
        Key="datasets/three.zip",
        Body=make_zip([f for f in digit_files if f[0][0] in "012"]),
    )
    request = {"dataset": "datasets/three.zip", "model": "digits", "epochs": 2}

    kept = client.post("/", json=request).get_json()
    assert kept["promoted"] is False
    assert "not replaced" in kept["gate"] and "[0, 1, 2]" in kept["gate"]
    assert live_version(s3) == digits_version

    replaced = client.post("/", json={**request, "replace": True}).get_json()
    assert replaced["promoted"] is True
    assert "as asked" in replaced["gate"]
    assert live_version(s3) == replaced["version"]


# --- the input chosen from the data -------------------------------------------------------------


@pytest.fixture
def colour_archive(s3, make_zip) -> str:
    from colour_shapes import colour_files

    s3.put_object(
        Bucket="lepton-uploads", Key="datasets/colours.zip", Body=make_zip(colour_files(40))
    )
    return "datasets/colours.zip"


def test_a_colour_dataset_trains_in_colour_with_no_flags(client, s3, colour_archive) -> None:
    answer = client.post("/", json={"dataset": colour_archive}).get_json()

    assert answer["name"] == "colours"
    assert answer["input"]["channels"] == 3
    assert "in colour: kept as RGB" in answer["input"]["chosen_from_data"]["channels"]
    assert answer["metrics"]["test_accuracy"] >= 0.95
    meta = json.loads(
        s3.get_object(Bucket="lepton-models", Key=f"colours/{answer['version']}/metadata.json")[
            "Body"
        ].read()
    )
    assert meta["input_shape"] == [40, 40, 3]
    assert meta["training"]["input_chosen"]["image_size"].startswith("the images' median")


def test_channels_and_size_set_by_the_request_are_kept(client, colour_archive) -> None:
    answer = client.post(
        "/", json={"dataset": colour_archive, "channels": 1, "image_size": 24, "epochs": 1}
    ).get_json()

    assert (answer["input"]["channels"], answer["input"]["image_size"]) == (1, [24, 24])
    assert answer["input"]["chosen_from_data"] == {}


# --- training status and archive options --------------------------------------------------------


def _status(service, name: str, key: str) -> dict:
    return service.store.read_status(name, f"s3://lepton-uploads/{key}")


def test_the_training_status_follows_a_training_to_its_reply(
    service, client, record, uploaded_archive
) -> None:
    reply_data = reply(client.post("/", json={"Records": [record(uploaded_archive)]})).data

    status = _status(service, "digits", uploaded_archive)
    assert status["stage"] == "done"
    assert status["reply"]["version"] == reply_data["version"]
    assert status["event_type"] == "ai.lepton.model.published"
    assert status["epochs"] == 3 and 1 <= status["epoch"] <= 3  # the fixture's default
    assert status["updated"] >= status["started"]


def test_a_failed_training_has_a_failed_status_with_its_reason(service, client, s3, record) -> None:
    s3.put_object(Bucket="lepton-uploads", Key="datasets/junk.zip", Body=b"not a zip")
    client.post("/", json={"Records": [record("datasets/junk.zip")]})

    status = _status(service, "junk", "datasets/junk.zip")
    assert status["stage"] == "failed"
    assert "not a readable" in status["reply"]["reason"]


def test_an_archive_manifest_carries_the_training_options(client, s3, record, digit_files) -> None:
    import io
    import zipfile

    buffer = io.BytesIO()
    with zipfile.ZipFile(buffer, "w") as archive:
        archive.writestr("manifest.json", json.dumps({"model": "renamed", "epochs": 2}))
        for name, data in digit_files:
            archive.writestr(name, data)
    s3.put_object(Bucket="lepton-uploads", Key="datasets/with-options.zip", Body=buffer.getvalue())

    answer = reply(client.post("/", json={"Records": [record("datasets/with-options.zip")]})).data

    assert answer["name"] == "renamed"
    assert answer["training"]["epochs_run"] <= 2
    assert live_version(s3, "renamed") == answer["version"]


# --- idempotency and publishing -----------------------------------------------------------------


def test_redelivered_event_returns_the_first_result_and_trains_once(
    client, s3, record, uploaded_archive
) -> None:
    event = {"Records": [record(uploaded_archive)]}
    first = reply(client.post("/", json=event)).data
    second = reply(client.post("/", json=event)).data
    assert second["version"] == first["version"]
    assert second["duplicate"] is True
    assert models_of(s3) == [first["version"]]


def test_other_options_on_the_same_data_train_again(client, s3, uploaded_archive) -> None:
    first = client.post("/", json={"dataset": uploaded_archive, "epochs": 1}).get_json()
    second = client.post("/", json={"dataset": uploaded_archive, "epochs": 2}).get_json()
    assert first["version"] != second["version"]


def test_crash_while_uploading_never_moves_the_pointer(
    service, s3, record, uploaded_archive, monkeypatch
) -> None:
    from lepton_runtime.events.inbound import parse_json

    original = service.storage.put_file

    def failing_put_file(bucket, key, path, content_type=None):
        if key.endswith("model.tflite"):
            raise StorageUnavailableError("injected: the store went away mid-publish")
        return original(bucket, key, path, content_type)

    monkeypatch.setattr(service.storage, "put_file", failing_put_file)
    with pytest.raises(StorageUnavailableError):
        service.run_event(parse_json({"Records": [record(uploaded_archive)]}))
    assert live_version(s3) is None
    runs = s3.list_objects_v2(Bucket="lepton-models", Prefix="digits/runs/")
    assert "Contents" not in runs  # the run marker is gone, so a retry trains again


def test_storage_outage_answers_503(service, client, record, uploaded_archive, monkeypatch) -> None:
    def unreachable(*args, **kwargs):
        raise StorageUnavailableError("injected: the S3 endpoint is unreachable")

    monkeypatch.setattr(service.storage, "get_to_file", unreachable)
    response = client.post("/", json={"Records": [record(uploaded_archive)]})
    assert response.status_code == 503
    assert response.get_json()["error"]["code"] == "storage_unavailable"


def test_second_training_while_busy_is_429(service, client, uploaded_archive) -> None:
    assert service._busy.acquire(blocking=False)
    try:
        response = client.post("/", json={"dataset": uploaded_archive})
    finally:
        service._busy.release()
    assert response.status_code == 429
    assert response.get_json()["error"]["code"] == "training_busy"


# --- dataset limits -----------------------------------------------------------------------------


def test_default_settings_give_the_default_dataset_limits() -> None:
    """One set of defaults: the function's settings spell the same limits as DatasetLimits."""
    assert dataset_limits(Settings()) == DatasetLimits()
    assert dataset_limits(Settings.from_env({})) == DatasetLimits()


def test_dataset_settings_reach_the_dataset_limits() -> None:
    settings = Settings.from_env(
        {
            "LEPTON_MAX_DATASET_BYTES": "1000",
            "LEPTON_MAX_DATASET_UNPACKED_BYTES": "2000",
            "LEPTON_MAX_DATASET_ENTRIES": "30",
            "LEPTON_MAX_DATASET_DECODED_BYTES": "4000",
            "LEPTON_MAX_IMAGE_BYTES": "500",
        }
    )
    limits = dataset_limits(settings)
    assert (limits.max_archive_bytes, limits.max_total_bytes, limits.max_entries) == (
        1000,
        2000,
        30,
    )
    assert (limits.max_decoded_bytes, limits.max_member_bytes) == (4000, 500)


@pytest.fixture
def uploaded_bomb(s3) -> str:
    """3 GiB of zeros in one zip member, 3 MB packed."""
    s3.put_object(
        Bucket="lepton-uploads", Key="datasets/bomb.zip", Body=zip_of_zeros("0/a.png", 3 * GiB)
    )
    return "datasets/bomb.zip"


def test_an_archive_bomb_event_fails_the_training_naming_the_limit(
    client, s3, record, uploaded_bomb
) -> None:
    response = client.post("/", json={"Records": [record(uploaded_bomb)]})
    event = reply(response)
    assert response.status_code == 200
    assert event["type"] == "ai.lepton.training.failed"
    assert event.data["error"]["code"] == "dataset_too_large"
    assert "per-member unpacked size limit is 20971520 bytes" in event.data["reason"]
    assert models_of(s3, "bomb") == []


def test_an_archive_bomb_over_http_is_a_422_naming_the_limit(client, uploaded_bomb) -> None:
    response = client.post("/", json={"dataset": f"s3://lepton-uploads/{uploaded_bomb}"})
    assert response.status_code == 422
    assert response.get_json()["error"]["code"] == "dataset_too_large"
    assert "(max_member_bytes)" in response.get_json()["reason"]


def test_an_archive_over_the_archive_size_is_not_downloaded(
    make_service, s3, record, uploaded_archive
) -> None:
    service = make_service(LEPTON_MAX_DATASET_BYTES="1000")
    outcome = service.run_event(parse_json({"Records": [record(uploaded_archive)]}))[0]
    assert outcome.data["error"]["code"] == "dataset_too_large"
    assert "archive size limit is 1000 bytes" in outcome.data["reason"]


@pytest.mark.parametrize(
    ("env", "limit"),
    [
        ({"LEPTON_MAX_DATASET_ENTRIES": "20"}, "(max_entries)"),
        ({"LEPTON_MAX_IMAGE_BYTES": "100"}, "(max_member_bytes)"),
        ({"LEPTON_MAX_DATASET_UNPACKED_BYTES": "10000"}, "(max_total_bytes)"),
        ({"LEPTON_MAX_DATASET_DECODED_BYTES": "100000"}, "(max_decoded_bytes)"),
    ],
    ids=["entries", "member", "total", "decoded"],
)
def test_a_folder_dataset_is_read_under_the_same_limits(
    make_service, s3, record, digit_files, env: dict[str, str], limit: str
) -> None:
    for name, data in digit_files[:60]:
        s3.put_object(Bucket="lepton-uploads", Key=f"datasets/folder/{name}", Body=data)
    s3.put_object(Bucket="lepton-uploads", Key="datasets/folder/manifest.json", Body=b"{}")
    service = make_service(**env)
    outcome = service.run_event(parse_json({"Records": [record("datasets/folder/manifest.json")]}))
    assert outcome[0].data["error"]["code"] == "dataset_too_large"
    assert outcome[0].data["reason"].endswith(limit)
