"""The cluster files a user deploys (cluster/): the KubeRay RayJob and RayCluster manifests,
the Ray cluster launcher file and the image's Dockerfile. Nothing here can start a cloud
cluster; what can be checked is that they parse, that every command they run is one the
`orchestrate` CLI accepts, and that their Ray, Python, image tag and install match
pyproject.toml, so a release that moves a pin cannot leave them behind."""
from __future__ import annotations

import re
import shlex
import tomllib
from pathlib import Path

import click
import pytest
import yaml
from packaging.requirements import Requirement
from packaging.specifiers import SpecifierSet

from orchestrator.cli import main

CLUSTER = Path(__file__).resolve().parents[1] / "cluster"
PYPROJECT = tomllib.loads((CLUSTER.parent / "pyproject.toml").read_text())
VERSION = PYPROJECT["project"]["version"]
RAY_PIN = next(Requirement(r) for r in PYPROJECT["project"]["dependencies"] if r.startswith("ray"))
KUBERAY = ("rayjob.yaml", "raycluster.yaml")


def manifest(name: str) -> dict:
    return yaml.safe_load((CLUSTER / name).read_text())


def containers(doc: dict) -> list[dict]:
    """Every container spec anywhere in a manifest."""
    found = []

    def walk(node: object) -> None:
        if isinstance(node, dict):
            found.extend(c for c in node.get("containers", []) if isinstance(c, dict))
            for value in node.values():
                walk(value)
        elif isinstance(node, list):
            for value in node:
                walk(value)

    walk(doc)
    return found


def accepts(command: str) -> None:
    """Parse an `orchestrate ...` command line with the CLI's own parser (nothing runs)."""
    argv = shlex.split(command)
    assert argv[0] == "orchestrate", f"not an orchestrate command: {command}"
    sub = main.get_command(click.Context(main), argv[1])
    assert sub is not None, f"unknown command in {command!r}"
    try:
        sub.make_context(argv[1], argv[2:])
    except click.UsageError as e:
        raise AssertionError(f"{command!r}: {e}") from e


@pytest.mark.parametrize("name", KUBERAY)
def test_kuberay_manifests_match_the_project(name):
    doc = manifest(name)
    assert doc["apiVersion"] == "ray.io/v1" and doc["kind"] == {"rayjob.yaml": "RayJob"}.get(name, "RayCluster")
    cluster = doc["spec"]["rayClusterSpec"] if doc["kind"] == "RayJob" else doc["spec"]
    assert RAY_PIN.specifier.contains(cluster["rayVersion"]), (cluster["rayVersion"], str(RAY_PIN))
    images = {c["image"] for c in containers(doc)}
    assert images == {f"your-registry/orchestrate:{VERSION}"}, images
    for c in containers(doc):  # token authentication on every pod, never switched off
        env = {e["name"]: e for e in c.get("env", [])}
        assert "RAY_AUTH_TOKEN" in env and "secretKeyRef" in env["RAY_AUTH_TOKEN"]["valueFrom"], c["name"]
        assert env.get("RAY_AUTH_MODE", {}).get("value") != "disabled"


def test_the_rayjob_entrypoint_is_a_command_the_cli_accepts():
    entrypoint = manifest("rayjob.yaml")["spec"]["entrypoint"]
    accepts(entrypoint)
    with pytest.raises(AssertionError):  # the check can fail
        accepts(entrypoint.replace("--no-progress", "--no-progres"))


def test_the_launcher_installs_the_project_and_keeps_the_dashboard_private():
    doc = manifest("ray-cluster.yaml")
    assert any('pip install -e "~/orchestrate[gpu]"' in c for c in doc["setup_commands"])
    head = " ".join(doc["head_start_ray_commands"])
    assert "--dashboard-host=127.0.0.1" in head and "RAY_AUTH_MODE=disabled" not in head
    for line in (CLUSTER / "ray-cluster.yaml").read_text().splitlines():
        if "orchestrate submit" in line:
            accepts(re.search(r"orchestrate submit[^`)]*", line).group(0).strip())  # type: ignore[union-attr]


def test_the_image_is_rays_own_at_the_pinned_version_and_python():
    text = (CLUSTER / "Dockerfile").read_text()
    base = re.search(r"^FROM rayproject/ray:(\d+\.\d+\.\d+)-py(\d)(\d+)-gpu$", text, re.M)
    assert base, "the image builds on rayproject/ray:<version>-py<python>-gpu"
    ray_version, python = base.group(1), f"{base.group(2)}.{base.group(3)}"
    assert RAY_PIN.specifier.contains(ray_version), (ray_version, str(RAY_PIN))
    assert SpecifierSet(PYPROJECT["project"]["requires-python"]).contains(python), python
    assert 'pip install --no-cache-dir -e ".[gpu]"' in text
    for folder in ("orchestrator", "actors", "jobs", "cluster", "organisms"):
        assert re.search(rf"^COPY .* {folder} {folder}$", text, re.M), f"the image lacks {folder}/"
    for name in KUBERAY:
        ray_version_in_manifest = str(yaml.safe_load((CLUSTER / name).read_text()).get("spec", {}).get(
            "rayVersion") or manifest(name)["spec"]["rayClusterSpec"]["rayVersion"])
        assert ray_version_in_manifest == ray_version, (name, ray_version_in_manifest, ray_version)
