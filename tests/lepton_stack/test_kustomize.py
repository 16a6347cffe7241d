"""The local stack's kustomize renderer: the same objects as `kubectl kustomize` for every target
under knative/, every construct knative/ uses handled, anything else refused loudly."""

from __future__ import annotations

import os
import shutil
import subprocess
import textwrap
from pathlib import Path
from typing import Any

import pytest
import yaml

from lepton_stack.kustomize import SUPPORTED_FIELDS, KustomizeError, render

REPO = Path(__file__).resolve().parents[2]
KNATIVE = REPO / "knative"
TARGETS = ("base", "overlays/aws", "overlays/minio")


def by_identity(docs: list[dict[str, Any]]) -> dict[tuple[str, str, str], dict[str, Any]]:
    return {(d["apiVersion"], d["kind"], d["metadata"]["name"]): d for d in docs}


def kubectl_kustomize(target: Path) -> list[dict[str, Any]]:
    """Real kustomize, as tests/knative uses it: a test fails (never skips) without it."""
    if shutil.which("kubectl"):
        command = ["kubectl", "kustomize", str(target)]
    elif shutil.which("kustomize"):
        command = ["kustomize", "build", str(target)]
    else:
        pytest.fail("kubectl or kustomize is needed to check the renderer against kustomize")
    result = subprocess.run(command, capture_output=True, text=True, check=False)
    assert result.returncode == 0, result.stderr
    return [d for d in yaml.safe_load_all(result.stdout) if d]


@pytest.mark.parametrize("target", TARGETS)
def test_every_target_renders_the_objects_kustomize_builds(target: str) -> None:
    ours = by_identity(render(KNATIVE / target))
    theirs = by_identity(kubectl_kustomize(KNATIVE / target))
    assert ours.keys() == theirs.keys()
    for identity, doc in theirs.items():
        assert ours[identity] == doc, identity


def test_every_kustomization_under_knative_uses_only_handled_fields() -> None:
    files = sorted(KNATIVE.rglob("kustomization.yaml"))
    assert len(files) >= 4  # base, the component, two overlays
    for path in files:
        spec = yaml.safe_load(path.read_text())
        assert set(spec) <= SUPPORTED_FIELDS, (path, set(spec) - SUPPORTED_FIELDS)


def overlay(tmp_path: Path, body: str, files: dict[str, str] | None = None) -> Path:
    folder = tmp_path / "overlay"
    folder.mkdir()
    (folder / "kustomization.yaml").write_text(textwrap.dedent(body))
    for name, text in (files or {}).items():
        (folder / name).write_text(textwrap.dedent(text))
    return folder


def test_images_as_knative_readme_tells_users_to_set_them(tmp_path: Path) -> None:
    minio = os.path.relpath(KNATIVE / "overlays" / "minio", tmp_path / "overlay")
    folder = overlay(
        tmp_path,
        f"""\
        apiVersion: kustomize.config.k8s.io/v1beta1
        kind: Kustomization
        resources:
          - {minio}
        images:
          - name: dev.local/lepton/infer
            newName: registry.example.com/lepton/infer
          - name: dev.local/lepton/train
            newName: registry.example.com/lepton/train
            newTag: "2.0"
        """,
    )
    ours = by_identity(render(folder))
    assert ours == by_identity(kubectl_kustomize(folder))
    job = ours[("sinks.knative.dev/v1alpha1", "JobSink", "lepton-train-job")]
    (container,) = job["spec"]["job"]["spec"]["template"]["spec"]["containers"]
    assert container["image"] == "registry.example.com/lepton/train:2.0"


@pytest.mark.parametrize(
    ("body", "files", "message"),
    [
        ("namePrefix: x-\nresources: [a.yaml]\n", {}, "namePrefix"),
        (
            "resources: [a.yaml]\npatches:\n  - target: {kind: ConfigMap}\n"
            "    patch: |-\n      data: {b: c}\n",
            {},
            "JSON 6902",
        ),
        (
            "resources: [a.yaml]\npatches:\n  - target: {kind: Secret}\n"
            "    patch: |-\n      - {op: add, path: /data/b, value: c}\n",
            {},
            "matches no object",
        ),
        (
            "resources: [a.yaml]\nlabels:\n  - pairs: {x: y}\n    includeSelectors: true\n",
            {},
            "selectors",
        ),
        ("resources: [https://example.com/k.yaml]\n", {}, "local paths"),
        ("resources: [missing.yaml]\n", {}, "does not exist"),
        ("resources: [/etc/a.yaml]\n", {}, "local paths"),
        ("components: [comp]\n", {"comp": None}, "Component"),
    ],
    ids=[
        "unknown field",
        "strategic merge",
        "patch without target",
        "selector labels",
        "remote",
        "missing",
        "absolute",
        "a folder that is no component",
    ],
)
def test_constructs_it_does_not_implement_are_refused(
    tmp_path: Path, body: str, files: dict[str, str | None], message: str
) -> None:
    config_map = "apiVersion: v1\nkind: ConfigMap\nmetadata: {name: a}\ndata: {a: b}\n"
    folder = overlay(tmp_path, body, {"a.yaml": config_map})
    for name in files:  # a folder holding a Kustomization where a Component is expected
        (folder / name).mkdir()
        (folder / name / "kustomization.yaml").write_text("resources: []\n")
    with pytest.raises(KustomizeError, match=message):
        render(folder)
