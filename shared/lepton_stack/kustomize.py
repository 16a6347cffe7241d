"""The kustomize subset knative/ uses, rendered in Python for the local stack.

`lepton up` must build the overlay a user deploys (`make deploy` is `kubectl apply -k`), but a
fresh machine has nothing but Python: no kubectl, no kustomize binary, and no network to fetch
one. So this renders the constructs knative/ uses, and refuses every other one loudly rather
than rendering something kustomize would not:

- `Kustomization` and `Component` files with `resources` (YAML files, or folders holding a
  kustomization), `components`, `labels` (`pairs`, on metadata.labels only: `includeSelectors`
  and `includeTemplates` must be false), `patches` (inline or `path`, JSON 6902 operations,
  with a `target` of group, version, kind and name), and `images` (name, newName, newTag,
  digest), which knative/README.md tells users to add for a registry.
- The order kustomize uses: a kustomization's resources, then each component (its resources
  join, then its patches apply to everything so far), then the kustomization's own patches,
  labels and images.

tests/lepton_stack/test_kustomize.py renders every target under knative/ and compares the
objects with `kubectl kustomize` where kubectl is installed, and checks that every field of
every kustomization under knative/ is one this module handles.
"""

from __future__ import annotations

import copy
import re
from collections.abc import Iterable, Mapping
from pathlib import Path
from typing import Any

import jsonpatch
import yaml

Doc = dict[str, Any]

KUSTOMIZATION_FILES = ("kustomization.yaml", "kustomization.yml", "Kustomization")
# The fields of a Kustomization / Component this renderer handles; any other one is refused.
SUPPORTED_FIELDS = frozenset(
    {"apiVersion", "kind", "metadata", "resources", "components", "labels", "patches", "images"}
)
_KINDS = {
    "Kustomization": "kustomize.config.k8s.io/v1beta1",
    "Component": "kustomize.config.k8s.io/v1alpha1",
}
_TARGET_FIELDS = frozenset({"group", "version", "kind", "name"})
_PATCH_FIELDS = frozenset({"target", "patch", "path"})
_LABEL_FIELDS = frozenset({"pairs", "includeSelectors", "includeTemplates"})
_IMAGE_FIELDS = frozenset({"name", "newName", "newTag", "digest"})


class KustomizeError(ValueError):
    """A kustomization this renderer cannot build faithfully (or that is invalid)."""


def render(target: Path) -> list[Doc]:
    """The objects `kubectl kustomize target` would print (in file order, not kind order)."""
    return _build(Path(target), expect="Kustomization", seen=())


def kustomization_file(folder: Path) -> Path:
    for name in KUSTOMIZATION_FILES:
        if (folder / name).is_file():
            return folder / name
    raise KustomizeError(f"{folder} holds no kustomization.yaml")


def _build(folder: Path, expect: str, seen: tuple[Path, ...]) -> list[Doc]:
    folder = folder.resolve()
    if folder in seen:
        raise KustomizeError(f"{folder} includes itself (through {' -> '.join(map(str, seen))})")
    path = kustomization_file(folder)
    spec = _read_kustomization(path, expect)
    docs = _resources(folder, spec.get("resources") or [], (*seen, folder))
    for component in spec.get("components") or []:
        docs = _apply_component(folder / component, docs, (*seen, folder))
    return _transform(path, spec, docs)


def _read_kustomization(path: Path, expect: str) -> Doc:
    spec = yaml.safe_load(path.read_text()) or {}
    if not isinstance(spec, dict):
        raise KustomizeError(f"{path} is not a YAML mapping")
    kind = spec.get("kind", "Kustomization")
    if kind != expect:
        raise KustomizeError(f"{path} is a {kind}; expected a {expect} here")
    if spec.get("apiVersion", _KINDS[kind]) != _KINDS[kind]:
        raise KustomizeError(f"{path}: apiVersion {spec.get('apiVersion')!r} for a {kind}")
    unknown = set(spec) - SUPPORTED_FIELDS
    if unknown:
        raise KustomizeError(
            f"{path} uses {', '.join(sorted(unknown))}, which the local stack's kustomize "
            "renderer (lepton_stack/kustomize.py) does not implement"
        )
    return spec


def _resources(folder: Path, entries: Iterable[str], seen: tuple[Path, ...]) -> list[Doc]:
    docs: list[Doc] = []
    for entry in entries:
        if not isinstance(entry, str) or "://" in entry or Path(entry).is_absolute():
            # kustomize refuses absolute roots too; remote ones would need the network.
            raise KustomizeError(
                f"resource {entry!r} in {folder}: only local paths relative to it are supported"
            )
        path = folder / entry
        if path.is_dir():
            docs.extend(_build(path, expect="Kustomization", seen=seen))
        elif path.is_file():
            docs.extend(_objects(path))
        else:
            raise KustomizeError(f"resource {entry!r} in {folder} does not exist")
    return docs


def _objects(path: Path) -> list[Doc]:
    docs = [d for d in yaml.safe_load_all(path.read_text()) if d is not None]
    for doc in docs:
        if not isinstance(doc, dict) or not doc.get("kind") or not doc.get("metadata"):
            raise KustomizeError(f"{path} holds a document that is not a Kubernetes object")
    return docs


def _apply_component(folder: Path, docs: list[Doc], seen: tuple[Path, ...]) -> list[Doc]:
    folder = folder.resolve()
    path = kustomization_file(folder)
    spec = _read_kustomization(path, expect="Component")
    merged = docs + _resources(folder, spec.get("resources") or [], (*seen, folder))
    for component in spec.get("components") or []:
        merged = _apply_component(folder / component, merged, (*seen, folder))
    return _transform(path, spec, merged)


def _transform(path: Path, spec: Mapping[str, Any], docs: list[Doc]) -> list[Doc]:
    docs = [copy.deepcopy(d) for d in docs]
    for patch in spec.get("patches") or []:
        _patch(path, patch, docs)
    for labels in spec.get("labels") or []:
        _label(path, labels, docs)
    for image in spec.get("images") or []:
        _image(path, image, docs)
    return docs


def _patch(path: Path, patch: Mapping[str, Any], docs: list[Doc]) -> None:
    unknown = set(patch) - _PATCH_FIELDS
    if unknown:
        raise KustomizeError(f"{path}: patch fields {sorted(unknown)} are not supported")
    if ("patch" in patch) == ("path" in patch):
        raise KustomizeError(f"{path}: a patch needs exactly one of patch or path")
    text = patch["patch"] if "patch" in patch else (path.parent / patch["path"]).read_text()
    operations = yaml.safe_load(text)
    if not isinstance(operations, list):
        # A mapping would be a strategic-merge patch, which needs the schemas of every kind.
        raise KustomizeError(f"{path}: only JSON 6902 patches (a list of operations) are supported")
    target = patch.get("target")
    if not isinstance(target, Mapping) or not target:
        raise KustomizeError(f"{path}: a JSON 6902 patch needs a target")
    unknown = set(target) - _TARGET_FIELDS
    if unknown:
        raise KustomizeError(f"{path}: patch target fields {sorted(unknown)} are not supported")
    matched = [i for i, doc in enumerate(docs) if _selected(doc, target)]
    if not matched:
        # kustomize applies a patch to whatever matches, even nothing; a patch meant for an
        # object that is gone is a mistake worth hearing about, so this is an error here.
        raise KustomizeError(f"{path}: the patch target {dict(target)} matches no object")
    try:
        compiled = jsonpatch.JsonPatch(operations)
        for index in matched:
            docs[index] = compiled.apply(docs[index])
    except (jsonpatch.JsonPatchException, jsonpatch.JsonPointerException) as exc:
        raise KustomizeError(f"{path}: patch {operations} fails: {exc}") from exc


def _selected(doc: Mapping[str, Any], target: Mapping[str, Any]) -> bool:
    api_version = str(doc.get("apiVersion", ""))
    group, _, version = api_version.rpartition("/")
    actual = {"group": group, "version": version, "kind": doc.get("kind")}
    actual["name"] = doc["metadata"].get("name")
    # kustomize's selector fields are anchored regular expressions.
    return all(re.fullmatch(str(want), str(actual[key])) for key, want in target.items())


def _label(path: Path, spec: Mapping[str, Any], docs: list[Doc]) -> None:
    unknown = set(spec) - _LABEL_FIELDS
    if unknown or spec.get("includeSelectors") or spec.get("includeTemplates"):
        raise KustomizeError(
            f"{path}: labels with selectors or templates (or {sorted(unknown)}) are not supported"
        )
    pairs = {str(k): str(v) for k, v in (spec.get("pairs") or {}).items()}
    for doc in docs:
        doc["metadata"].setdefault("labels", {}).update(pairs)


def _image(path: Path, spec: Mapping[str, Any], docs: list[Doc]) -> None:
    unknown = set(spec) - _IMAGE_FIELDS
    if unknown or "name" not in spec:
        raise KustomizeError(f"{path}: images entries take {sorted(_IMAGE_FIELDS)}")
    for doc in docs:
        for container in _containers(doc):
            image = str(container.get("image", ""))
            name, tag = _split_image(image)
            if name != spec["name"]:
                continue
            name = str(spec.get("newName", name))
            if "digest" in spec:
                container["image"] = f"{name}@{spec['digest']}"
            else:
                tag = str(spec.get("newTag", tag or ""))
                container["image"] = f"{name}:{tag}" if tag else name


def _containers(node: Any) -> Iterable[dict[str, Any]]:
    """Every container at any depth (Services, JobSink jobs, Deployments alike)."""
    if isinstance(node, dict):
        for key, value in node.items():
            if key in ("containers", "initContainers") and isinstance(value, list):
                yield from (c for c in value if isinstance(c, dict))
            else:
                yield from _containers(value)
    elif isinstance(node, list):
        for item in node:
            yield from _containers(item)


def _split_image(image: str) -> tuple[str, str | None]:
    if "@" in image:
        return image.split("@", 1)[0], None
    name, colon, tag = image.rpartition(":")
    if colon and "/" not in tag:
        return name, tag
    return image, None
