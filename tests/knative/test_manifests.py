"""knative/ builds with kustomize, matches the Knative CRD schemas, and agrees with the code.

Every kustomize target (base and both overlays) and the examples are checked; consistency
checks compare the manifests with what the Python code actually reads, serves and emits.
"""

from __future__ import annotations

import copy
import json
import re
from collections.abc import Callable, Iterator, Mapping
from pathlib import Path
from typing import Any

import isodate
import pytest
import yaml
from jsonschema import Draft7Validator
from manifests_support import REPO, Build, CodeFacts, Doc, Workload, api_group, workloads
from werkzeug.test import Client

from asgi_client import ASGITestClient
from lepton_adapters.dead_letter_sink import DeadLetterApp
from lepton_runtime.events.inbound import KNATIVE_SQS_EVENT_TYPES
from lepton_runtime.events.outbound import (
    INFERENCE_COMPLETED,
    INFERENCE_FAILED,
    MODEL_PUBLISHED,
    REPLY_TYPES,
    TRAINING_FAILED,
)
from lepton_runtime.settings import Settings
from lepton_stack.triggers import load_triggers, trigger_predicate

SERVER_PORT = Settings().port
LIVENESS = "/health/liveness"
READINESS = "/health/readiness"
FUNCTION_SERVICES = ("lepton-infer", "lepton-train")
# Who emits which reply: the training Service and the training Jobs run the same code.
EMITTERS = {
    INFERENCE_COMPLETED: {"lepton-infer"},
    INFERENCE_FAILED: {"lepton-infer"},
    MODEL_PUBLISHED: {"lepton-train", "lepton-train-job"},
    TRAINING_FAILED: {"lepton-train", "lepton-train-job"},
}
# Set by Knative itself: in every Service revision, or in the subjects of a SinkBinding.
KNATIVE_SERVICE_ENV = {"PORT", "K_SERVICE", "K_REVISION", "K_CONFIGURATION"}
SINK_BINDING_ENV = {"K_SINK", "K_CE_OVERRIDES"}
# boto3's own configuration, which the code leaves to boto3.
BOTO3_ENV = {
    "AWS_REGION",
    "AWS_DEFAULT_REGION",
    "AWS_ENDPOINT_URL",
    "AWS_ENDPOINT_URL_S3",
    "AWS_ENDPOINT_URL_SQS",
    "AWS_ACCESS_KEY_ID",
    "AWS_SECRET_ACCESS_KEY",
    "AWS_SESSION_TOKEN",
    "AWS_ROLE_ARN",
    "AWS_WEB_IDENTITY_TOKEN_FILE",
}
# Read by libraries in the images, not by our code.
LIBRARY_ENV = {
    "PATH",
    "HOME",
    "PYTHONUNBUFFERED",
    "PYTHONDONTWRITEBYTECODE",
    "KERAS_HOME",
    "MPLCONFIGDIR",
    "TF_CPP_MIN_LOG_LEVEL",
}
CREDENTIAL_WORDS = re.compile(r"SECRET|PASSWORD|ACCESS_KEY|TOKEN|CREDENTIAL", re.IGNORECASE)


# -- helpers -------------------------------------------------------------------------------------


def schema_errors(validator: Draft7Validator, doc: Mapping[str, Any]) -> list[str]:
    return [
        f"{'.'.join(str(p) for p in error.absolute_path) or '<root>'}: {error.message}"
        for error in validator.iter_errors(doc)
    ]


def is_knative(doc: Mapping[str, Any]) -> bool:
    return api_group(doc).endswith("knative.dev")


def containers(build: Build) -> Iterator[tuple[Workload, dict[str, Any]]]:
    for doc in build.docs:
        for workload in workloads(doc):
            for container in workload.pod["containers"]:
                yield workload, container


def config_maps(build: Build) -> dict[str, dict[str, str]]:
    return {d["metadata"]["name"]: dict(d.get("data") or {}) for d in build.of_kind("ConfigMap")}


def environment(build: Build, container: Mapping[str, Any]) -> dict[str, str | None]:
    """The container's environment from the manifests: ConfigMap values, literal values, and
    None for values that come from a Secret or a field reference."""
    env: dict[str, str | None] = {}
    maps = config_maps(build)
    for source in container.get("envFrom", []):
        if "configMapRef" in source:
            name = source["configMapRef"]["name"]
            assert name in maps or source["configMapRef"].get("optional"), (
                f"ConfigMap {name} is not in the build {build.name}"
            )
            env.update(maps.get(name, {}))
    for item in container.get("env", []):
        env[item["name"]] = item.get("value") if "valueFrom" not in item else None
    return env


def knative_service(build: Build, name: str) -> Doc:
    service = build.find("Service", name, "serving.knative.dev/v1")
    assert service is not None, f"Knative Service {name} is not in {build.name}"
    return service


def main_container(service: Mapping[str, Any]) -> dict[str, Any]:
    (container,) = service["spec"]["template"]["spec"]["containers"]
    return container


def destinations(doc: Mapping[str, Any]) -> Iterator[tuple[str, Mapping[str, Any]]]:
    """Every object reference an object sends events to: subscribers, sinks, dead letters."""
    spec = doc.get("spec") or {}
    if "subscriber" in spec:
        yield "subscriber", spec["subscriber"]
    if "sink" in spec:
        yield "sink", spec["sink"]
    dead_letter = (spec.get("delivery") or {}).get("deadLetterSink")
    if dead_letter:
        yield "deadLetterSink", dead_letter


def subscriber_name(trigger: Mapping[str, Any]) -> str:
    return str(trigger["spec"]["subscriber"]["ref"]["name"])


def reply_attribute_sets(reply_type: str) -> Iterator[dict[str, str]]:
    """A reply event as the Broker could see it: with or without a subject (results carry the
    upload key, models their name) and with any role extension an inbound event had."""
    subjects = [None, "digits", "images/cat.png", "datasets/set.zip", "datasets/large/set.zip"]
    subjects += ["datasets/set/manifest.json"]
    for subject in subjects:
        for role in (None, "images", "datasets"):
            attributes = {"type": reply_type, "source": "/lepton/x", "id": "1"}
            if subject is not None:
                attributes["subject"] = subject
            if role is not None:
                attributes["leptonrole"] = role
            yield attributes


def routes(build: Build, attributes: Mapping[str, str]) -> set[str]:
    """The subscribers of every Trigger in `build` whose filters match `attributes`."""
    return {
        subscriber_name(t)
        for t in build.of_kind("Trigger")
        if trigger_predicate(t["spec"])(attributes)
    }


def seconds(duration: str) -> float:
    return isodate.parse_duration(duration).total_seconds()


# -- schemas -------------------------------------------------------------------------------------


def test_every_knative_object_matches_its_crd_schema(
    build: Build, validator_for: Callable[[Mapping[str, Any]], Draft7Validator | None]
) -> None:
    failures = {}
    for doc in filter(is_knative, build.docs):
        validator = validator_for(doc)
        assert validator is not None, f"no CRD copy for {doc['apiVersion']} {doc['kind']}"
        errors = schema_errors(validator, doc)
        if errors:
            failures[f"{doc['kind']}/{doc['metadata']['name']}"] = errors
    assert not failures, failures


def test_examples_match_their_crd_schemas(
    examples: Build, validator_for: Callable[[Mapping[str, Any]], Draft7Validator | None]
) -> None:
    assert examples.docs, "knative/examples holds no manifests"
    for doc in examples.docs:
        validator = validator_for(doc)
        assert validator is not None, f"no CRD copy for {doc['apiVersion']} {doc['kind']}"
        assert not schema_errors(validator, doc), schema_errors(validator, doc)


def test_strict_schemas_reject_unknown_fields(
    base: Build, validator_for: Callable[[Mapping[str, Any]], Draft7Validator | None]
) -> None:
    service = copy.deepcopy(knative_service(base, "lepton-infer"))
    main_container(service)["readinessProbe"]["httpGet"]["paht"] = "/typo"
    service["spec"]["template"]["metadata"]["annotations"]["x"] = "fine: annotations are free"
    validator = validator_for(service)
    assert validator is not None
    (error,) = schema_errors(validator, service)
    assert "paht" in error


def test_trigger_specs_use_only_known_fields(
    build: Build, crd_schemas: dict[tuple[str, str, str], dict[str, Any]]
) -> None:
    # The Trigger CRD keeps unknown fields in spec (for experimental features), so a typo such
    # as `filter` for `filters` would pass the schema: compare with the fields it lists.
    trigger = crd_schemas[("eventing.knative.dev", "v1", "Trigger")]
    known = set(trigger["properties"]["spec"]["properties"])
    for doc in build.of_kind("Trigger"):
        assert set(doc["spec"]) <= known, (doc["metadata"]["name"], set(doc["spec"]) - known)


def test_containers_outside_knative_services_match_the_container_schema(
    build: Build, container_validator: Draft7Validator
) -> None:
    # JobSink jobs and Deployments are not checked by any Knative CRD; hold their containers
    # to Knative's container schema, a strict subset of the Kubernetes one.
    checked = 0
    for workload, container in containers(build):
        if workload.owner["kind"] == "Service" and is_knative(workload.owner):
            continue
        errors = schema_errors(container_validator, container)
        assert not errors, (workload.label, errors)
        checked += 1
    if build.name == "overlays/minio":
        assert checked == 2, "the adapter Deployment and the JobSink's job"


# -- routing -------------------------------------------------------------------------------------


def test_every_destination_exists_in_the_build(build: Build) -> None:
    for doc in build.docs:
        for role, destination in destinations(doc):
            ref = destination.get("ref")
            assert ref is not None, f"{doc['metadata']['name']} {role} is a URI, not a reference"
            target = build.find(ref["kind"], ref["name"], ref.get("apiVersion"))
            assert target is not None, f"{doc['kind']}/{doc['metadata']['name']} {role}: {ref}"


def test_no_reply_type_reaches_the_function_that_emits_it(build: Build) -> None:
    assert set(EMITTERS) == set(REPLY_TYPES)
    for reply_type, emitters in EMITTERS.items():
        for attributes in reply_attribute_sets(reply_type):
            assert not routes(build, attributes) & emitters, (build.name, attributes)


def test_published_models_reach_the_inference_function(build: Build) -> None:
    attributes = {"type": MODEL_PUBLISHED, "source": "/lepton/lepton-train", "subject": "digits"}
    assert routes(build, attributes) == {"lepton-infer"}


@pytest.mark.parametrize(
    ("key", "subscriber"),
    [
        ("images/cat 1.png", "lepton-infer"),
        ("datasets/digits.zip", "lepton-train"),
        ("datasets/digits.tar.gz", "lepton-train"),
        ("datasets/digits/manifest.json", "lepton-train"),
    ],
)
def test_s3_adapter_uploads_reach_their_function(build: Build, key: str, subscriber: str) -> None:
    attributes = {
        "type": "com.amazonaws.s3.ObjectCreated:Put",
        "source": "aws:s3.us-east-1.lepton-uploads",
        "subject": key,
    }
    assert routes(build, attributes) == {subscriber}


def test_images_inside_a_dataset_folder_start_no_training(build: Build) -> None:
    attributes = {"type": "com.amazonaws.s3.ObjectCreated:Put", "subject": "datasets/d/7/a.png"}
    assert routes(build, attributes) == set()


def test_large_datasets_go_to_the_jobsink_only(minio: Build) -> None:
    attributes = {"type": "com.amazonaws.s3.ObjectCreated:Put", "subject": "datasets/large/a.zip"}
    assert routes(minio, attributes) == {"lepton-train-job"}


@pytest.mark.parametrize(
    ("role", "subscriber"), [("images", "lepton-infer"), ("datasets", "lepton-train")]
)
def test_sqs_queue_events_reach_their_function(aws: Build, role: str, subscriber: str) -> None:
    attributes = {
        "type": "dev.knative.eventing.aws-sqs",
        "source": "dev.knative.eventing.aws-sqs-source",
        "subject": "aws-sqs-source",
        "leptonrole": role,
    }
    assert routes(aws, attributes) == {subscriber}


def test_sqs_triggers_match_only_types_the_functions_parse(aws: Build) -> None:
    types: set[str] = set()

    def collect(expression: Any) -> None:
        if isinstance(expression, dict):
            for dialect, body in expression.items():
                if dialect == "exact" and "type" in body:
                    types.add(body["type"])
                collect(body)
        elif isinstance(expression, list):
            for item in expression:
                collect(item)

    for trigger in aws.of_kind("Trigger"):
        if trigger["metadata"]["name"].startswith(("lepton-infer-sqs", "lepton-train-sqs")):
            collect(trigger["spec"]["filters"])
    assert types
    assert types <= KNATIVE_SQS_EVENT_TYPES


def test_sqs_sources_tag_the_role_the_triggers_expect(aws: Build) -> None:
    sources = aws.of_kind("IntegrationSource")
    roles = {s["spec"]["ceOverrides"]["extensions"]["leptonrole"] for s in sources}
    assert roles == {"images", "datasets"}
    assert all("sqs" in s["spec"]["aws"] and "s3" not in s["spec"]["aws"] for s in sources)


def test_base_triggers_load_in_the_development_router() -> None:
    # `lepton up` reads knative/base itself: it must parse, and route only to what it runs.
    triggers = load_triggers([REPO / "knative" / "base"])
    assert {t.subscriber for t in triggers} <= {"lepton-infer", "lepton-train"}
    assert {t.delivery.dead_letter_sink for t in triggers} <= {"lepton-dead-letters", None}


def test_trigger_timeouts_fit_their_subscriber_services(build: Build) -> None:
    for trigger in build.of_kind("Trigger"):
        ref = trigger["spec"]["subscriber"]["ref"]
        timeout = (trigger["spec"].get("delivery") or {}).get("timeout")
        if ref["kind"] != "Service" or timeout is None:
            continue
        service = knative_service(build, ref["name"])
        allowed = service["spec"]["template"]["spec"]["timeoutSeconds"]
        assert seconds(timeout) <= allowed, (trigger["metadata"]["name"], timeout, allowed)


# -- the Services ----------------------------------------------------------------------------


def test_services_scale_to_zero_explicitly(build: Build) -> None:
    for service in build.of_kind("Service", "serving.knative.dev"):
        annotations = service["spec"]["template"]["metadata"]["annotations"]
        assert annotations["autoscaling.knative.dev/min-scale"] == "0"
        assert int(annotations["autoscaling.knative.dev/max-scale"]) >= 1
        assert float(annotations["autoscaling.knative.dev/target"]) > 0
        assert service["spec"]["template"]["spec"]["containerConcurrency"] >= 1


def test_training_takes_one_request_per_replica(build: Build) -> None:
    train = knative_service(build, "lepton-train")
    assert train["spec"]["template"]["spec"]["containerConcurrency"] == 1


def test_training_is_reachable_only_inside_the_cluster(build: Build) -> None:
    labels = knative_service(build, "lepton-train")["metadata"]["labels"]
    assert labels["networking.knative.dev/visibility"] == "cluster-local"


def test_training_timeout_outlasts_inference_timeout(build: Build) -> None:
    def timeout(name: str) -> int:
        return knative_service(build, name)["spec"]["template"]["spec"]["timeoutSeconds"]

    assert timeout("lepton-train") >= 10 * timeout("lepton-infer")


def test_containers_listen_where_the_server_listens(build: Build) -> None:
    for service in build.of_kind("Service", "serving.knative.dev"):
        container = main_container(service)
        assert [p["containerPort"] for p in container["ports"]] == [SERVER_PORT]
        assert "PORT" not in environment(build, container), "Knative sets PORT itself"


def test_probes_use_the_server_health_paths(build: Build) -> None:
    for service in build.of_kind("Service", "serving.knative.dev"):
        container = main_container(service)
        for probe, path in (("readinessProbe", READINESS), ("livenessProbe", LIVENESS)):
            http_get = container[probe]["httpGet"]
            assert http_get["path"] == path, (service["metadata"]["name"], probe)
            assert http_get.get("port", SERVER_PORT) == SERVER_PORT


def test_function_server_answers_the_probe_paths() -> None:
    import types

    from lepton_runtime.http.server import build_app

    func = types.SimpleNamespace(main=lambda context: "ok")
    client = ASGITestClient(build_app(func, Settings()))
    assert client.get(LIVENESS).status_code == 200
    assert client.get(READINESS).status_code == 200


def test_dead_letter_sink_answers_the_probe_paths() -> None:
    client = Client(DeadLetterApp(store=None))
    assert client.get(LIVENESS).status_code == 200
    assert client.get(READINESS).status_code == 200


def test_containers_run_restricted(build: Build) -> None:
    for workload, container in containers(build):
        context = container.get("securityContext") or {}
        assert context.get("runAsNonRoot") is True, workload.label
        assert context.get("allowPrivilegeEscalation") is False, workload.label
        assert context.get("capabilities", {}).get("drop") == ["ALL"], workload.label
        assert context.get("seccompProfile", {}).get("type") == "RuntimeDefault", workload.label
        assert context.get("runAsUser", 10001) == 10001, "the images' USER is 10001"


def test_containers_have_requests_and_limits(build: Build) -> None:
    for workload, container in containers(build):
        resources = container.get("resources") or {}
        for kind in ("requests", "limits"):
            assert {"cpu", "memory"} <= set(resources.get(kind, {})), (workload.label, kind)


def test_configuration_comes_from_the_configmap(build: Build) -> None:
    for workload, container in containers(build):
        sources = container.get("envFrom", [])
        refs = [s["configMapRef"]["name"] for s in sources if "configMapRef" in s]
        assert refs == ["lepton-config"], workload.label


def test_credentials_come_only_from_secret_references(build: Build) -> None:
    assert not build.of_kind("Secret"), "Secrets are created by the operator, never shipped"
    for name, data in config_maps(build).items():
        assert not [k for k in data if CREDENTIAL_WORDS.search(k)], name
    for workload, container in containers(build):
        for item in container.get("env", []):
            if CREDENTIAL_WORDS.search(item["name"]):
                assert "secretKeyRef" in item.get("valueFrom", {}), (workload.label, item)


# -- environment -------------------------------------------------------------------------------


def test_every_variable_the_code_reads_is_set_or_defaulted(
    build: Build, code_facts: CodeFacts
) -> None:
    for workload, container in containers(build):
        env = environment(build, container)
        injected = set(KNATIVE_SERVICE_ENV) | SINK_BINDING_ENV | BOTO3_ENV
        missing = [
            read.name
            for read in code_facts.reads.values()
            if not read.has_default and read.name not in env and read.name not in injected
        ]
        assert not missing, (workload.label, missing)


def test_manifests_set_only_variables_the_code_reads(build: Build, code_facts: CodeFacts) -> None:
    known = code_facts.names | BOTO3_ENV
    for workload, container in containers(build):
        unknown = set(environment(build, container)) - known
        assert not unknown, (workload.label, unknown)


def test_container_environments_are_valid_settings(build: Build) -> None:
    for _, container in containers(build):
        env = {k: v for k, v in environment(build, container).items() if v is not None}
        Settings.from_env(env)  # raises ConfigurationError naming the variable


def test_image_files_set_only_variables_someone_reads(code_facts: CodeFacts) -> None:
    known = code_facts.names | BOTO3_ENV | LIBRARY_ENV
    for path in sorted((REPO / "containers").glob("*.Containerfile")):
        text = path.read_text().replace("\\\n", " ")
        runtime_stage = text.rsplit("\nFROM ", 1)[1]
        names = set()
        for line in runtime_stage.splitlines():
            if line.startswith("ENV "):
                names |= set(re.findall(r"([A-Z_][A-Z0-9_]*)=", line))
        assert "LEPTON_FUNCTIONS_DIR" in names, path.name
        assert names <= known, (path.name, names - known)


def test_event_source_gets_its_sink_from_a_sinkbinding(minio: Build) -> None:
    (deployment,) = minio.of_kind("Deployment")
    bound = [
        b
        for b in minio.of_kind("SinkBinding")
        if b["spec"]["subject"].get("name") == deployment["metadata"]["name"]
        and b["spec"]["subject"]["kind"] == "Deployment"
    ]
    assert len(bound) == 1
    assert bound[0]["spec"]["sink"]["ref"] == {
        "apiVersion": "eventing.knative.dev/v1",
        "kind": "Broker",
        "name": "lepton",
    }


def test_event_source_listens_where_its_service_points(minio: Build) -> None:
    (deployment,) = minio.of_kind("Deployment")
    (container,) = deployment["spec"]["template"]["spec"]["containers"]
    port = int(environment(minio, container)["LEPTON_WEBHOOK_PORT"] or 0)
    (named,) = container["ports"]
    assert named["containerPort"] == port > 0
    (service,) = minio.of_kind("Service", "")
    assert service["spec"]["selector"] == deployment["spec"]["selector"]["matchLabels"]
    assert [p["targetPort"] for p in service["spec"]["ports"]] == [named["name"]]
    assert container["command"] == ["python", "-m", "lepton_adapters.event_source"]


# -- jobs, examples, func.yaml, images ---------------------------------------------------------


def test_jobsink_runs_the_training_job_command(minio: Build, project_version: str) -> None:
    from lepton_runtime.entry import build_parser

    (jobsink,) = minio.of_kind("JobSink")
    (container,) = jobsink["spec"]["job"]["spec"]["template"]["spec"]["containers"]
    assert container["image"] == f"dev.local/lepton/train:{project_version}"
    assert container["command"] == ["lepton-function", "train-job"]
    args = build_parser().parse_args(container["command"][1:] + container.get("args", []))
    assert args.command == "train-job"
    assert args.event_file == "/etc/jobsink-event/event"


def test_training_jobs_can_send_replies_to_the_broker(minio: Build) -> None:
    (jobsink,) = minio.of_kind("JobSink")
    pod_labels = jobsink["spec"]["job"]["spec"]["template"]["metadata"]["labels"]
    job_labels = jobsink["spec"]["job"]["metadata"]["labels"]
    selectors = [
        b["spec"]["subject"]["selector"]["matchLabels"]
        for b in minio.of_kind("SinkBinding")
        if b["spec"]["subject"]["kind"] == "Job"
    ]
    assert any(
        s.items() <= job_labels.items() and s.items() <= pod_labels.items() for s in selectors
    )


def test_canary_differs_from_the_base_service_only_by_pin_and_traffic(
    base: Build, examples: Build
) -> None:
    canary = copy.deepcopy(examples.find("Service", "lepton-infer"))
    assert canary is not None
    stable = knative_service(base, "lepton-infer")
    traffic = canary["spec"].pop("traffic")
    revision = canary["spec"]["template"]["metadata"].pop("name")
    env = main_container(canary)["env"]
    (pin,) = [e for e in env if e["name"] == "LEPTON_MODEL_VERSION"]
    env.remove(pin)
    assert canary == stable
    assert sum(t["percent"] for t in traffic) == 100
    assert {t["revisionName"] for t in traffic} == {revision, "lepton-infer-00001"}
    assert revision.startswith("lepton-infer-")
    assert Settings.from_env({"LEPTON_MODEL_VERSION": pin["value"]}).model_version == pin["value"]


def read_func_yaml(role: str) -> dict[str, Any]:
    """A func.yaml as func reads it: timestamps stay text (JSON Schema has no date type)."""
    func = yaml.safe_load((REPO / "functions" / role / "func.yaml").read_text())
    func["created"] = (
        func["created"].isoformat() if hasattr(func["created"], "isoformat") else func["created"]
    )
    return func


@pytest.mark.parametrize("role", ["infer", "train"])
def test_func_yaml_matches_the_func_schema(role: str) -> None:
    schema = json.loads((REPO / "tests/data/func-yaml/func_yaml-schema.json").read_text())
    validator = Draft7Validator(schema)
    assert not schema_errors(validator, read_func_yaml(role))


@pytest.mark.parametrize("name", FUNCTION_SERVICES)
def test_func_yaml_matches_the_service(base: Build, name: str) -> None:
    func = read_func_yaml(name.removeprefix("lepton-"))
    service = knative_service(base, name)
    template = service["spec"]["template"]
    container = main_container(service)
    annotations = template["metadata"]["annotations"]
    options = func["deploy"]["options"]
    assert func["name"] == name
    assert func["runtime"] == "python"
    assert func["image"] == container["image"]
    assert options["scale"]["min"] == int(annotations["autoscaling.knative.dev/min-scale"])
    assert options["scale"]["max"] == int(annotations["autoscaling.knative.dev/max-scale"])
    assert options["scale"]["metric"] == annotations["autoscaling.knative.dev/metric"]
    assert options["scale"]["target"] == float(annotations["autoscaling.knative.dev/target"])
    assert options["resources"]["requests"] == container["resources"]["requests"]
    assert options["resources"]["limits"] == {
        **container["resources"]["limits"],
        "concurrency": template["spec"]["containerConcurrency"],
    }
    assert func["deploy"]["healthEndpoints"] == {"liveness": LIVENESS, "readiness": READINESS}
    envs = {e["name"]: e["value"] for e in func["run"]["envs"] if "name" in e}
    values = [e["value"] for e in func["run"]["envs"]]
    assert "{{ configMap:lepton-config }}" in values
    assert "{{ secret:lepton-s3-credentials }}" in values
    for item in container.get("env", []):
        assert envs.get(item["name"]) == item["value"], item["name"]


def test_manifests_use_the_images_make_images_builds(build: Build, project_version: str) -> None:
    script = (REPO / "containers" / "build.sh").read_text()
    assert "IMAGE_REPO=${IMAGE_REPO:-dev.local/lepton}" in script
    images = {container["image"] for _, container in containers(build)}
    expected = {f"dev.local/lepton/{role}:{project_version}" for role in ("infer", "train")}
    assert images <= expected, images - expected


def test_every_object_is_part_of_lepton_functions(build: Build) -> None:
    for doc in build.docs:
        labels = doc["metadata"].get("labels") or {}
        assert labels.get("app.kubernetes.io/part-of") == "lepton-functions", doc["metadata"]


def test_every_yaml_file_under_knative_is_built_or_an_example(
    kustomize: Callable[[str], Build],
) -> None:
    # A manifest no kustomization lists is never deployed and never checked here.
    built = {
        (d["kind"], d["metadata"]["name"])
        for target in ("overlays/aws", "overlays/minio")
        for d in kustomize(target).docs
    }
    for path in sorted((REPO / "knative").rglob("*.yaml")):
        if path.name == "kustomization.yaml" or "examples" in path.parts:
            continue
        for doc in yaml.safe_load_all(path.read_text()):
            if isinstance(doc, dict):
                assert (doc["kind"], doc["metadata"]["name"]) in built, Path(path).name


# -- one suffix list, authenticated deliveries, jobs, polling -----------------------------------


def _suffixes(expression: Any) -> set[str]:
    found: set[str] = set()
    if isinstance(expression, dict):
        for dialect, body in expression.items():
            if dialect == "suffix":
                found.add(body["subject"])
            elif dialect != "not":
                found |= _suffixes(body)
    elif isinstance(expression, list):
        for item in expression:
            found |= _suffixes(item)
    return found


def test_dataset_triggers_accept_exactly_the_archive_suffixes_the_code_reads(build: Build) -> None:
    from lepton_model.datasets import ARCHIVE_SUFFIXES
    from lepton_runtime.training.requests import MANIFEST_NAME

    expected = {*ARCHIVE_SUFFIXES, f"/{MANIFEST_NAME}"}
    dataset_triggers = [
        t
        for t in build.of_kind("Trigger")
        if subscriber_name(t) in ("lepton-train", "lepton-train-job")
        and "filters" in t["spec"]
        and _suffixes(t["spec"]["filters"])
    ]
    if build.name != "overlays/aws":  # aws routes by queue; its notification filters below
        assert dataset_triggers
    for trigger in dataset_triggers:
        assert _suffixes(trigger["spec"]["filters"]) == expected, trigger["metadata"]["name"]


def test_s3_notifications_send_exactly_the_archive_suffixes_the_code_reads() -> None:
    from lepton_model.datasets import ARCHIVE_SUFFIXES
    from lepton_runtime.training.requests import MANIFEST_NAME

    config = json.loads((REPO / "knative/overlays/aws/s3-notifications.json").read_text())
    suffixes = {
        rule["Value"]
        for queue in config["QueueConfigurations"]
        for rule in queue["Filter"]["Key"]["FilterRules"]
        if rule["Name"] == "suffix"
    }
    assert suffixes == {*ARCHIVE_SUFFIXES, f"/{MANIFEST_NAME}"}


def test_every_dataset_key_the_triggers_route_maps_to_a_training(build: Build) -> None:
    from lepton_model.datasets import ARCHIVE_SUFFIXES
    from lepton_runtime.training.requests import dataset_source_for_key

    datasets = Settings().datasets
    for folder in ("datasets/", "datasets/large/", "datasets/large/team/"):
        for key in [f"{folder}set{s}" for s in ARCHIVE_SUFFIXES] + [f"{folder}set/manifest.json"]:
            attributes = {"type": "com.amazonaws.s3.ObjectCreated:Put", "subject": key}
            if routes(build, attributes) & {"lepton-train", "lepton-train-job"}:
                source = dataset_source_for_key(datasets, datasets.bucket, key)
                assert source is not None and source.name == "set", key


def test_deliveries_to_the_functions_are_issued_for_their_own_audience(build: Build) -> None:
    # With authentication-oidc on, the Broker's token carries the Trigger's subscriber audience;
    # the function checks it against its K_SERVICE, which Knative sets to the Service's name.
    for trigger in build.of_kind("Trigger"):
        subscriber = trigger["spec"]["subscriber"]
        if subscriber["ref"]["kind"] == "Service":
            assert subscriber.get("audience") == subscriber["ref"]["name"], trigger["metadata"]


def test_the_functions_verify_event_tokens(build: Build) -> None:
    for name in FUNCTION_SERVICES:
        env = environment(build, main_container(knative_service(build, name)))
        settings = Settings.from_env({**{k: v for k, v in env.items() if v}, "K_SERVICE": name})
        assert settings.event_auth == "oidc" and settings.oidc_audience == name
        assert settings.oidc_issuer.startswith("https://")
        # The API server's JWKS over https with the pod's own CA bundle and token.
        assert settings.oidc_jwks.startswith("https://") and settings.oidc_ca_file
        assert settings.oidc_jwks_bearer_file


def test_a_permanent_training_failure_fails_the_job_without_retry(minio: Build) -> None:
    from lepton_runtime.training.job import EXIT_FAILED, EXIT_RETRY

    (jobsink,) = minio.of_kind("JobSink")
    rules = jobsink["spec"]["job"]["spec"]["podFailurePolicy"]["rules"]
    fail_codes = {
        code
        for rule in rules
        if rule["action"] == "FailJob"
        for code in rule["onExitCodes"]["values"]
    }
    assert EXIT_FAILED in fail_codes and EXIT_RETRY not in fail_codes


def test_the_images_source_polls_greedily(aws: Build) -> None:
    sources = {
        s["metadata"]["name"]: s["spec"]["aws"]["sqs"] for s in aws.of_kind("IntegrationSource")
    }
    images = sources["lepton-uploads-images"]
    assert images["greedy"] is True and images["maxMessagesPerPoll"] == 10
    assert images["delay"] <= 100
    readme = (REPO / "knative" / "README.md").read_text()
    assert "bench/event_replica.py" in readme and "10,000 uploads" in readme
