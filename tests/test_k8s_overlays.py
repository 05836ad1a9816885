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

import jsonschema
import kubernetes_validate
import pytest
import yaml

from shared.fleet import STAGES, worker_service

ROOT = Path(__file__).resolve().parents[1]
OVERLAYS = ROOT / "deploy" / "k8s" / "overlays"
K8S_VERSION = "1.30"
KEDA_CRDS = Path(__file__).parent / "k8s" / "keda"


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
            _validate_keda(overlay, doc)
            continue
        try:
            kubernetes_validate.validate(doc, K8S_VERSION, strict=True)
        except kubernetes_validate.ValidationError as exc:
            raise AssertionError(f"{overlay}: {doc['kind']} {doc['metadata']['name']}: {exc.message}") from None
    return objects


def _strict(schema: Any) -> Any:
    """A CRD's structural schema as strict field validation applies it: an object that
    lists its properties and keeps no unknown fields refuses any other."""
    if isinstance(schema, list):
        return [_strict(s) for s in schema]
    if not isinstance(schema, dict):
        return schema
    strict = {k: _strict(v) for k, v in schema.items()}
    if ("properties" in schema and "additionalProperties" not in schema
            and not schema.get("x-kubernetes-preserve-unknown-fields")):
        strict["additionalProperties"] = False
    return strict


def _keda_schemas() -> dict[tuple[str, str], Any]:
    """(apiVersion, kind) -> the schema KEDA's CRD serves for it (tests/k8s/keda, Apache-2.0)."""
    schemas = {}
    for path in KEDA_CRDS.glob("*.yaml"):
        crd = yaml.safe_load(path.read_text())
        for version in crd["spec"]["versions"]:
            if version.get("served"):
                key = (f"{crd['spec']['group']}/{version['name']}", crd["spec"]["names"]["kind"])
                schemas[key] = _strict(version["schema"]["openAPIV3Schema"])
    return schemas


def _validate_keda(overlay: str, doc: dict[str, Any]) -> None:
    schema = _keda_schemas().get((doc["apiVersion"], doc["kind"]))
    assert schema is not None, f"{overlay}: KEDA serves no {doc['kind']} at {doc['apiVersion']}"
    body = {k: v for k, v in doc.items() if k != "metadata"}  # metadata is the API server's (ObjectMeta)
    errors = sorted(jsonschema.Draft7Validator(schema).iter_errors(body), key=lambda e: list(e.path))
    assert not errors, f"{overlay}: {doc['kind']} {doc['metadata']['name']}: " + "; ".join(
        f"{'.'.join(map(str, e.path)) or 'body'}: {e.message}" for e in errors)


def test_keda_objects_are_checked_against_the_crd() -> None:
    """The check can fail: a misspelt field and a wrong type are refused."""
    good = {"apiVersion": "keda.sh/v1alpha1", "kind": "ScaledObject", "metadata": {"name": "x"},
            "spec": {"scaleTargetRef": {"name": "worker-default"},
                     "triggers": [{"type": "rabbitmq", "metadata": {"queueName": "tm.stage.default"}}]}}
    _validate_keda("test", good)
    for bad in ({**good, "spec": {**good["spec"], "maxReplicas": 3}},
                {**good, "spec": {**good["spec"], "maxReplicaCount": "three"}}):
        with pytest.raises(AssertionError):
            _validate_keda("test", bad)


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
