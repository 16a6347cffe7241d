"""Fixtures of the manifest tests: kustomize builds of knative/, strict CRD schemas, code facts.

Builds come from real kustomize (`kubectl kustomize`, or a `kustomize` binary); without either
the tests fail rather than skip, so CI cannot pass them silently. The CRD schemas are the
upstream Knative ones copied into tests/data/knative-crds (see SOURCES.md there), made strict:
an object that lists its properties and does not preserve unknown fields gets
`additionalProperties: false`, as the API server's pruning would silently drop such fields.
"""

from __future__ import annotations

import copy
import subprocess
import sys
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any

import pytest
import yaml
from jsonschema import Draft7Validator

# The suite runs with --import-mode=importlib, which puts no test folder on sys.path: make the
# helper module importable (here and in the test modules) under its unique name.
sys.path.insert(0, str(Path(__file__).parent))

from manifests_support import (
    CRD_DIR,
    KNATIVE,
    REPO,
    Build,
    CodeFacts,
    CrdKey,
    Doc,
    api_group,
    code_env_reads,
    kustomize_command,
    load_crds,
    root_schema,
    strict,
)

BUILD_TARGETS = ("base", "overlays/aws", "overlays/minio")


# -- fixtures ------------------------------------------------------------------------------------


@pytest.fixture(scope="session")
def kustomize() -> Callable[[str], Build]:
    """Builds a target under knative/ with real kustomize (cached per target)."""
    command = kustomize_command()
    if command is None:
        pytest.fail(
            "kustomize is needed to build knative/: install kubectl (`kubectl kustomize`) or "
            "kustomize; .ci/install-container-tools.sh installs kubectl where apt can."
        )
    cache: dict[str, Build] = {}

    def build(target: str) -> Build:
        if target not in cache:
            result = subprocess.run(
                [*command, str(KNATIVE / target)], capture_output=True, text=True, check=False
            )
            assert result.returncode == 0, f"kustomize {target} failed:\n{result.stderr}"
            docs = tuple(d for d in yaml.safe_load_all(result.stdout) if isinstance(d, dict))
            cache[target] = Build(target, docs)
        return cache[target]

    return build


@pytest.fixture(scope="session", params=BUILD_TARGETS)
def build(request: pytest.FixtureRequest, kustomize: Callable[[str], Build]) -> Build:
    """Each kustomize target in turn."""
    return kustomize(request.param)


@pytest.fixture(scope="session")
def base(kustomize: Callable[[str], Build]) -> Build:
    return kustomize("base")


@pytest.fixture(scope="session")
def aws(kustomize: Callable[[str], Build]) -> Build:
    return kustomize("overlays/aws")


@pytest.fixture(scope="session")
def minio(kustomize: Callable[[str], Build]) -> Build:
    return kustomize("overlays/minio")


@pytest.fixture(scope="session")
def examples() -> Build:
    docs: list[Doc] = []
    for path in sorted((KNATIVE / "examples").glob("*.yaml")):
        docs.extend(d for d in yaml.safe_load_all(path.read_text()) if isinstance(d, dict))
    return Build("examples", tuple(docs))


@pytest.fixture(scope="session")
def crd_schemas() -> dict[CrdKey, dict[str, Any]]:
    """The raw openAPIV3Schema of every served version of every copied CRD."""
    schemas = load_crds()
    assert schemas, f"no CRDs under {CRD_DIR}"
    return schemas


@pytest.fixture(scope="session")
def validator_for(
    crd_schemas: dict[CrdKey, dict[str, Any]],
) -> Callable[[Mapping[str, Any]], Draft7Validator | None]:
    """The strict validator of an object's group, version and kind (None: no CRD for it)."""
    validators: dict[CrdKey, Draft7Validator] = {}

    def get(doc: Mapping[str, Any]) -> Draft7Validator | None:
        group = api_group(doc)
        version = str(doc.get("apiVersion", "")).rpartition("/")[2]
        key = (group, version, str(doc.get("kind")))
        if key not in crd_schemas:
            return None
        if key not in validators:
            validators[key] = Draft7Validator(root_schema(crd_schemas[key]))
        return validators[key]

    return get


@pytest.fixture(scope="session")
def container_validator(crd_schemas: dict[CrdKey, dict[str, Any]]) -> Draft7Validator:
    """Knative's container schema (a strict subset of the Kubernetes Container), for the
    containers that sit in sub-trees the CRDs leave unchecked (JobSink jobs, Deployments)."""
    service = crd_schemas[("serving.knative.dev", "v1", "Service")]
    pod = service["properties"]["spec"]["properties"]["template"]["properties"]["spec"]
    return Draft7Validator(strict(copy.deepcopy(pod["properties"]["containers"]["items"])))


@pytest.fixture(scope="session")
def code_facts() -> CodeFacts:
    facts = CodeFacts(code_env_reads())
    assert "LEPTON_MODEL_NAME" in facts.names, "the settings reader calls were not recognised"
    return facts


@pytest.fixture(scope="session")
def project_version() -> str:
    import tomllib

    return tomllib.loads((REPO / "pyproject.toml").read_text())["project"]["version"]
