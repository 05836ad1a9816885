"""The kustomize overlays build (`kubectl kustomize`, offline) into objects that
pass the Kubernetes schemas, and give what each target needs: a single-node dev
cluster (one replica, no budget that would block draining its only node) and
production (two api and two dispatcher replicas, a disruption budget selecting
exactly one component's pods, pods spread over nodes)."""

from __future__ import annotations

import os
import shutil
import subprocess
from pathlib import Path
from typing import Any

import kubernetes_validate
import pytest
import yaml

from shared.fleet import STAGES, worker_service

ROOT = Path(__file__).resolve().parents[1]
OVERLAYS = ROOT / "deploy" / "k8s" / "overlays"
K8S_VERSION = "1.30"


def _build(overlay: str) -> list[dict[str, Any]]:
    kubectl = shutil.which("kubectl")
    if kubectl is None:
        if os.environ.get("CI"):
            pytest.fail("kubectl is not installed (it builds kustomize overlays offline)")
        pytest.skip("kubectl not installed")
    done = subprocess.run([kubectl, "kustomize", str(OVERLAYS / overlay)], capture_output=True, text=True,
                          timeout=120, check=False)
    assert done.returncode == 0, done.stderr
    objects = [doc for doc in yaml.safe_load_all(done.stdout) if doc]
    for doc in objects:
        if doc["apiVersion"].startswith("keda.sh/"):
            continue  # KEDA's CRDs: the base's fields are checked in test_deploy_files.py
        try:
            kubernetes_validate.validate(doc, K8S_VERSION, strict=True)
        except kubernetes_validate.ValidationError as exc:
            raise AssertionError(f"{overlay}: {doc['kind']} {doc['metadata']['name']}: {exc.message}") from None
    return objects


def _of(objects: list[dict[str, Any]], kind: str) -> dict[str, dict[str, Any]]:
    return {o["metadata"]["name"]: o for o in objects if o["kind"] == kind}


def _pod_labels(deployment: dict[str, Any]) -> dict[str, str]:
    return deployment["spec"]["template"]["metadata"]["labels"]  # type: ignore[no-any-return]


def _selected(pdb: dict[str, Any], deployments: dict[str, dict[str, Any]]) -> set[str]:
    wanted = pdb["spec"]["selector"]["matchLabels"].items()
    return {name for name, d in deployments.items() if wanted <= _pod_labels(d).items()}


def test_the_dev_overlay_runs_one_of_everything_on_one_node() -> None:
    objects = _build("dev")
    assert {o["metadata"].get("namespace") for o in objects} == {"taskmgr-dev"}
    deployments = _of(objects, "Deployment")
    assert deployments["api"]["spec"]["replicas"] == 1 and deployments["dispatcher"]["spec"]["replicas"] == 1
    assert not _of(objects, "PodDisruptionBudget"), "a budget on a single replica blocks draining the only node"
    for scaled in _of(objects, "ScaledObject").values():
        assert scaled["spec"]["maxReplicaCount"] <= 2


def test_the_production_overlay_runs_replicas_with_budgets_and_spread() -> None:
    objects = _build("production")
    assert {o["metadata"].get("namespace") for o in objects} == {"taskmgr"}
    deployments = _of(objects, "Deployment")
    assert deployments["api"]["spec"]["replicas"] >= 2
    assert deployments["dispatcher"]["spec"]["replicas"] == 2

    budgets = _of(objects, "PodDisruptionBudget")
    covered: dict[str, str] = {}
    for name, pdb in budgets.items():
        selected = _selected(pdb, deployments)
        assert len(selected) == 1, f"PodDisruptionBudget {name} selects {sorted(selected)}: one Deployment each"
        [deployment] = selected
        assert deployment not in covered, f"{deployment} has two budgets ({covered[deployment]}, {name})"
        covered[deployment] = name
        spec = pdb["spec"]
        if "minAvailable" in spec:
            # Below the replica count, or no voluntary disruption could ever proceed.
            assert spec["minAvailable"] < deployments[deployment]["spec"]["replicas"], name
    assert set(covered) == {"api", "dispatcher", *(worker_service(s) for s in STAGES)}

    for name, deployment in deployments.items():
        constraints = deployment["spec"]["template"]["spec"].get("topologySpreadConstraints", [])
        keys = {c["topologyKey"]: c for c in constraints}
        assert keys.get("kubernetes.io/hostname", {}).get("whenUnsatisfiable") == "DoNotSchedule", name
        assert "topology.kubernetes.io/zone" in keys, name
        for constraint in constraints:
            assert constraint["labelSelector"]["matchLabels"].items() <= _pod_labels(deployment).items(), name
            assert "pod-template-hash" in constraint["matchLabelKeys"], f"{name}: spread its own pods only"
