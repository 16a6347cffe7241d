"""Helpers of the manifest tests: objects of a kustomize build, strict CRD schemas, and the
environment variables the code reads (found in its syntax tree)."""

from __future__ import annotations

import ast
import copy
import shutil
from collections.abc import Iterator, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

REPO = Path(__file__).resolve().parents[2]
KNATIVE = REPO / "knative"
CRD_DIR = REPO / "tests" / "data" / "knative-crds"

Doc = dict[str, Any]
CrdKey = tuple[str, str, str]  # (group, version, kind)


@dataclass(frozen=True)
class Build:
    """The objects of one kustomize target (or of the examples folder)."""

    name: str
    docs: tuple[Doc, ...]

    def of_kind(self, kind: str, group: str | None = None) -> list[Doc]:
        return [
            d
            for d in self.docs
            if d.get("kind") == kind and (group is None or api_group(d) == group)
        ]

    def find(self, kind: str, name: str, api_version: str | None = None) -> Doc | None:
        for doc in self.docs:
            if (
                doc.get("kind") == kind
                and doc["metadata"]["name"] == name
                and (api_version is None or doc.get("apiVersion") == api_version)
            ):
                return doc
        return None


@dataclass(frozen=True)
class Workload:
    """A pod template inside an object, with the names that locate it."""

    owner: Doc
    pod: Mapping[str, Any]
    path: str

    @property
    def label(self) -> str:
        return f"{self.owner['kind']}/{self.owner['metadata']['name']}"


@dataclass(frozen=True)
class EnvRead:
    """One environment variable the code reads, and whether the code has a default for it."""

    name: str
    has_default: bool
    where: str


@dataclass
class CodeFacts:
    """What the Python code reads from the environment."""

    reads: dict[str, EnvRead] = field(default_factory=dict)

    @property
    def names(self) -> set[str]:
        return set(self.reads)


def api_group(doc: Mapping[str, Any]) -> str:
    api_version = str(doc.get("apiVersion", ""))
    return api_version.rpartition("/")[0] if "/" in api_version else ""


def workloads(doc: Mapping[str, Any]) -> Iterator[Workload]:
    """Every pod spec an object carries (Knative Service, JobSink, Deployment, sources)."""
    spec = doc.get("spec") or {}
    kind = doc.get("kind")
    if kind == "JobSink":
        pod = spec.get("job", {}).get("spec", {}).get("template", {}).get("spec")
        path = "spec.job.spec.template.spec"
    elif kind in ("Service", "Configuration", "Deployment", "ContainerSource", "Job"):
        pod = spec.get("template", {}).get("spec")
        path = "spec.template.spec"
    else:
        pod = None
        path = ""
    if pod is not None and "containers" in pod:
        yield Workload(doc, pod, path)


def strict(schema: Any) -> Any:
    """A copy of an OpenAPI v3 schema in which listed properties are the only ones allowed."""
    if isinstance(schema, list):
        return [strict(item) for item in schema]
    if not isinstance(schema, dict):
        return schema
    out = {key: strict(value) for key, value in schema.items()}
    if (
        "properties" in out
        and not out.get("x-kubernetes-preserve-unknown-fields")
        and "additionalProperties" not in out
    ):
        out["additionalProperties"] = False
    return out


def root_schema(crd_schema: Mapping[str, Any]) -> dict[str, Any]:
    """The strict schema of a whole object: apiVersion, kind and metadata allowed at the root."""
    schema = strict(copy.deepcopy(dict(crd_schema)))
    properties = schema.setdefault("properties", {})
    properties.setdefault("apiVersion", {"type": "string"})
    properties.setdefault("kind", {"type": "string"})
    properties.setdefault("metadata", {"type": "object"})
    schema["additionalProperties"] = False
    return schema


def load_crds() -> dict[CrdKey, dict[str, Any]]:
    schemas: dict[CrdKey, dict[str, Any]] = {}
    for path in sorted(CRD_DIR.rglob("*.yaml")):
        crd = yaml.safe_load(path.read_text())
        group = crd["spec"]["group"]
        kind = crd["spec"]["names"]["kind"]
        for version in crd["spec"]["versions"]:
            if version.get("served", True):
                schemas[(group, version["name"], kind)] = version["schema"]["openAPIV3Schema"]
    return schemas


def kustomize_command() -> list[str] | None:
    if shutil.which("kubectl"):
        return ["kubectl", "kustomize"]
    if shutil.which("kustomize"):
        return ["kustomize", "build"]
    return None


def code_env_reads() -> dict[str, EnvRead]:
    """Every environment variable read in shared/ and functions/, found in the syntax tree.

    Recognised: settings' `reader.<type>("NAME", default, ...)`, `env.get("NAME")`,
    `os.environ.get("NAME", default)`, `os.getenv("NAME", default)` and `os.environ["NAME"]`.
    """
    reads: dict[str, EnvRead] = {}
    files = sorted((REPO / "shared").rglob("*.py")) + sorted((REPO / "functions").rglob("*.py"))
    for path in files:
        tree = ast.parse(path.read_text(), filename=str(path))
        where = str(path.relative_to(REPO))
        for node in ast.walk(tree):
            found = _env_read(node)
            if found is None:
                continue
            name, has_default = found
            previous = reads.get(name)
            if previous is None or (has_default and not previous.has_default):
                reads[name] = EnvRead(name, has_default, where)
    return reads


def _env_read(node: ast.AST) -> tuple[str, bool] | None:
    if (
        isinstance(node, ast.Subscript)
        and isinstance(node.ctx, ast.Load)  # os.environ["X"] = ... sets, it does not read
        and _dotted(node.value) in ("os.environ", "environ")
    ):
        key = node.slice
        if isinstance(key, ast.Constant) and isinstance(key.value, str):
            return key.value, False
        return None
    if not isinstance(node, ast.Call) or not node.args:
        return None
    first = node.args[0]
    if not (isinstance(first, ast.Constant) and isinstance(first.value, str)):
        return None
    callee = _dotted(node.func)
    if callee is None:
        return None
    has_default = len(node.args) >= 2 or any(k.arg == "default" for k in node.keywords)
    if callee.startswith("reader.") and callee != "reader._bounded":
        return first.value, has_default or callee.endswith(".ce_overrides")
    if callee in ("env.get", "os.environ.get", "environ.get", "os.getenv"):
        return first.value, has_default
    return None


def _dotted(node: ast.AST) -> str | None:
    if isinstance(node, ast.Name):
        return node.id
    if isinstance(node, ast.Attribute):
        base = _dotted(node.value)
        return None if base is None else f"{base}.{node.attr}"
    return None
