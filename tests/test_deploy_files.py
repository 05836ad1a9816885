"""The deployment files agree with the code and with each other.

Every stage in `shared.fleet.STAGES` (which covers every stage the code runs)
has its compose service, Kubernetes Deployment, KEDA ScaledObject on its queue
and Prometheus target; settings named in deploy files exist; PromQL in the
dashboard and alerts parses and names real metrics; Kubernetes objects pass
the Kubernetes schemas; docker-compose validates offline (docker-compose 1.29).
"""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import kubernetes_validate
import promql_parser
import pytest
import yaml
from prometheus_client import Counter, Gauge, Histogram

from services.worker.consumer import OUTCOME_PUBLISH_MAX_SECONDS
from services.worker.stages import known_stages
from shared import metrics as metrics_module
from shared.fleet import STAGES, services, worker_service
from shared.settings import AmqpSettings, Settings, WorkerSettings
from shared.task_request import TIMEOUT_SECONDS_CEILING
from shared.task_types import default_registry
from shared.topology import RETRY_TIERS, Topology, stage_queue

ROOT = Path(__file__).resolve().parents[1]
DEPLOY = ROOT / "deploy"
K8S_BASE = DEPLOY / "k8s" / "base"
K8S_VERSION = "1.30"
METRICS_PORT = 9100
API_PORT = 8084


# --- the stage list ------------------------------------------------------------------------


def test_the_fleet_covers_every_stage_the_code_runs() -> None:
    assert set(known_stages()) <= set(STAGES), "a stage the worker implements has no deployment"
    assert set(default_registry(demo=True).stages()) <= set(STAGES), "a task type routes to a stage with no deployment"
    assert len(set(STAGES)) == len(STAGES)


# --- helpers -------------------------------------------------------------------------------------


def _setting_names() -> set[str]:
    names = set()
    for field in Settings.model_fields.values():
        for sub in field.default_factory.model_fields.values():  # type: ignore[union-attr]
            names.add(sub.alias)
    return names


def _metric_names() -> set[str]:
    """Every sample name our processes can expose."""
    names = set()
    for value in vars(metrics_module).values():
        if isinstance(value, Counter | Gauge | Histogram):
            for family in value.describe():
                if family.type == "counter":
                    names |= {f"{family.name}_total", f"{family.name}_created"}
                elif family.type == "histogram":
                    names |= {f"{family.name}{s}" for s in ("_bucket", "_count", "_sum", "_created")}
                else:
                    names.add(family.name)
    return names


def _promql_metrics(expr: str) -> set[str]:
    """Parse (raises on a syntax error) and answer the metric names used."""
    for variable, value in (("$__rate_interval", "5m"), ("$__interval", "1m"), ("$__range", "1h")):
        expr = expr.replace(variable, value)
    ast = promql_parser.parse(expr)
    found: set[str] = set()

    def visit(node: Any) -> bool:
        if isinstance(node, promql_parser.VectorSelector) and node.name:
            found.add(node.name)
        return True

    promql_parser.walk(ast, visit)
    return found


def _check_promql(where: str, expr: str) -> set[str]:
    try:
        used = _promql_metrics(expr)
    except ValueError as exc:
        raise AssertionError(f"{where}: invalid PromQL {expr!r}: {exc}") from None
    unknown = {m for m in used if not m.startswith("rabbitmq_") and m != "up"} - _metric_names()
    assert not unknown, f"{where}: no such metric {sorted(unknown)} in {expr!r}"
    return used


def _compose() -> dict[str, Any]:
    return yaml.safe_load((ROOT / "docker-compose.yml").read_text())  # type: ignore[no-any-return]


def _k8s_objects() -> Iterator[tuple[str, dict[str, Any]]]:
    kustomization = yaml.safe_load((K8S_BASE / "kustomization.yaml").read_text())
    for resource in kustomization["resources"]:
        for doc in yaml.safe_load_all((K8S_BASE / resource).read_text()):
            if doc:
                yield resource, doc


def _k8s(kind: str, name: str) -> dict[str, Any]:
    found = [d for _, d in _k8s_objects() if d["kind"] == kind and d["metadata"]["name"] == name]
    assert len(found) == 1, f"expected one {kind} {name!r} in the kustomize base, found {len(found)}"
    return found[0]


# --- docker-compose ------------------------------------------------------------------------


def test_docker_compose_validates_offline() -> None:
    tool = shutil.which("docker-compose")
    if tool is None:
        if os.environ.get("CI"):
            pytest.fail("docker-compose is not installed (.ci/run installs Debian's package)")
        pytest.skip("docker-compose not installed (apt-get install docker-compose)")
    result = subprocess.run([tool, "-f", str(ROOT / "docker-compose.yml"), "config", "-q"], capture_output=True, check=False,
                            text=True, cwd=ROOT, timeout=120, env={**os.environ, "COMPOSE_PROJECT_NAME": "taskmgr"})
    assert result.returncode == 0, result.stderr


def test_compose_runs_every_process_scalable_with_the_right_command() -> None:
    compose = _compose()["services"]
    for name in services():
        assert name in compose, f"docker-compose.yml has no service {name}"
    assert {n for n in compose if n.startswith("worker-")} == {worker_service(s) for s in STAGES}
    for stage in STAGES:
        service = compose[worker_service(stage)]
        assert service["command"][-2:] == ["--stage", stage]
        assert service["command"][:3] == ["python", "-m", "services.worker"]
    for name in [*(worker_service(s) for s in STAGES), "dispatcher"]:
        # `--scale` needs services without fixed host ports or container names.
        assert "ports" not in compose[name] and "container_name" not in compose[name], name
        assert "9100/health/ready" in " ".join(compose[name]["healthcheck"]["test"]), name
    assert compose["api"]["command"] == ["python", "-m", "services.api"]
    assert compose["dispatcher"]["command"] == ["python", "-m", "services.dispatcher"]
    assert compose["migrate"]["command"] == ["taskmgr", "migrate"]
    assert compose["api"]["depends_on"]["migrate"]["condition"] == "service_completed_successfully"


def test_compose_settings_exist_and_mounted_files_are_in_the_repository() -> None:
    compose = _compose()["services"]
    known = _setting_names()
    for name in services():
        unknown = set(compose[name]["environment"]) - known
        assert not unknown, f"{name} sets unknown settings {sorted(unknown)}"
        assert compose[name]["environment"]["METRICS_PORT"] == str(METRICS_PORT)
        assert compose[name]["environment"]["ENVIRONMENT"] == "production"
    for name, service in compose.items():
        for volume in service.get("volumes", []):
            source = volume.split(":", 1)[0]
            if source.startswith("./"):
                assert (ROOT / source).exists(), f"{name} mounts {source}, which does not exist"
    rabbitmq = compose["rabbitmq"]
    assert "management" in rabbitmq["image"] and "15672:15672" in rabbitmq["ports"]
    assert "15692:15692" in rabbitmq["ports"], "the Prometheus plugin's endpoint"
    assert compose["postgres"]["image"].startswith("pgvector/pgvector")


# --- Prometheus and Grafana ------------------------------------------------------------------


def test_prometheus_scrapes_every_process_and_rabbitmq() -> None:
    config = yaml.safe_load((DEPLOY / "prometheus" / "prometheus.yml").read_text())
    targets: dict[str, int] = {}
    for job in config["scrape_configs"]:
        for sd in job.get("dns_sd_configs", []):
            for name in sd["names"]:
                targets[name] = sd["port"]
        for static in job.get("static_configs", []):
            for target in static["targets"]:
                host, port = target.rsplit(":", 1)
                targets[host] = int(port)
    expected = {worker_service(s): METRICS_PORT for s in STAGES} | {"dispatcher": METRICS_PORT, "api": API_PORT}
    assert {n: targets.get(n) for n in expected} == expected
    assert targets["rabbitmq"] == 15692
    assert set(targets) <= set(_compose()["services"]), "every target is a compose service"
    for rule_file in config["rule_files"]:
        assert (DEPLOY / "prometheus" / Path(rule_file).name).exists()


def test_alert_rules_parse_and_use_real_metrics() -> None:
    rules = yaml.safe_load((DEPLOY / "prometheus" / "alerts.yml").read_text())
    alerts = [rule for group in rules["groups"] for rule in group["rules"]]
    assert len({a["alert"] for a in alerts}) == len(alerts)
    used = set()
    for alert in alerts:
        assert alert["labels"]["severity"] in {"warning", "critical"} and alert["annotations"]["summary"]
        used |= _check_promql(alert["alert"], alert["expr"])
    for needed in ("task_queue_consumers", "tasks_dead_lettered_total", "callback_failures_total",
                   "dispatcher_event_lag_seconds_bucket", "worker_processes_live"):
        assert needed in used, f"no alert on {needed}"


def test_the_grafana_dashboard_shows_what_operators_need_with_valid_queries() -> None:
    dashboard = json.loads((DEPLOY / "grafana" / "dashboards" / "taskmgr.json").read_text())
    panels = [p for p in dashboard["panels"] if p["type"] != "row"]
    used: set[str] = set()
    for panel in panels:
        assert panel["datasource"]["uid"] == "${datasource}", panel["title"]
        assert panel["targets"], panel["title"]
        for target in panel["targets"]:
            used |= _check_promql(panel["title"], target["expr"])
    for needed in (
        "task_success_total", "task_failure_total",  # throughput per task type
        "task_queue_size",  # queue depth per stage, dead letters
        "task_processing_duration_seconds_bucket",  # duration percentiles
        "tasks_retried_total", "tasks_dead_lettered_total",  # failures and retries
        "worker_pool_active_count", "worker_pool_idle_count",  # worker pools
        "callback_failures_total", "callback_attempts_total",  # callbacks
        "embedding_batch_duration_seconds_bucket",  # embedding latency
        "dispatcher_event_lag_seconds_bucket", "http_request_duration_seconds_bucket",
    ):
        assert needed in used, f"the dashboard does not show {needed}"
    exprs = " ".join(t["expr"] for p in panels for t in p["targets"])
    assert 'queue="tm.dead"' in exprs and "histogram_quantile(0.99" in exprs

    provisioning = yaml.safe_load((DEPLOY / "grafana/provisioning/dashboards/taskmgr.yml").read_text())
    path = provisioning["providers"][0]["options"]["path"]
    mounts = _compose()["services"]["grafana"]["volumes"]
    assert f"./deploy/grafana/dashboards:{path}:ro" in mounts
    datasource = yaml.safe_load((DEPLOY / "grafana/provisioning/datasources/prometheus.yml").read_text())
    assert datasource["datasources"][0]["url"] == "http://prometheus:9090"


# --- Kubernetes ------------------------------------------------------------------------------


def test_the_kustomize_base_lists_every_manifest_and_core_objects_pass_the_kubernetes_schemas() -> None:
    kustomization = yaml.safe_load((K8S_BASE / "kustomization.yaml").read_text())
    listed = set(kustomization["resources"])
    present = {p.name for p in K8S_BASE.glob("*.yaml")} - {"kustomization.yaml"}
    assert listed == present, f"unlisted: {present - listed}, missing: {listed - present}"
    for resource, doc in _k8s_objects():
        if doc["apiVersion"].startswith("keda.sh/"):
            continue  # CRDs: checked field by field below
        try:
            kubernetes_validate.validate(doc, K8S_VERSION, strict=True)
        except kubernetes_validate.ValidationError as exc:
            raise AssertionError(f"{resource}: {doc['kind']} {doc['metadata']['name']}: {exc.message}") from None


def _container(deployment: dict[str, Any]) -> dict[str, Any]:
    [container] = deployment["spec"]["template"]["spec"]["containers"]
    return container  # type: ignore[no-any-return]


def _probe_port(container: dict[str, Any], probe: str) -> tuple[str, int]:
    get = container[probe]["httpGet"]
    ports = {p["name"]: p["containerPort"] for p in container["ports"]}
    return get["path"], ports.get(get["port"], get["port"])


def _check_process_pod(deployment: dict[str, Any], port: int) -> None:
    name = deployment["metadata"]["name"]
    pod = deployment["spec"]["template"]["spec"]
    container = _container(deployment)
    assert _probe_port(container, "livenessProbe") == ("/health/live", port), name
    assert _probe_port(container, "readinessProbe") == ("/health/ready", port), name
    assert _probe_port(container, "startupProbe") == ("/health/live", port), name
    requests = container["resources"]["requests"]
    assert requests.get("cpu") and requests.get("memory") and container["resources"]["limits"].get("memory"), name
    assert {"configMapRef": {"name": "taskmgr-config"}} in container["envFrom"], name
    assert {"secretRef": {"name": "taskmgr-secrets"}} in container["envFrom"], name
    assert pod["securityContext"]["runAsNonRoot"] is True and pod["securityContext"]["runAsUser"] == _image_uid()
    grace = float(_k8s("ConfigMap", "taskmgr-config")["data"]["SHUTDOWN_GRACE_SECONDS"])
    assert pod["terminationGracePeriodSeconds"] >= grace + 10, f"{name}: a stopping pod must finish its tasks"
    annotations = deployment["spec"]["template"]["metadata"]["annotations"]
    assert annotations["prometheus.io/port"] == str(port) and annotations["prometheus.io/path"] == "/metrics"
    selector = deployment["spec"]["selector"]["matchLabels"]
    assert selector.items() <= deployment["spec"]["template"]["metadata"]["labels"].items(), name


def test_every_stage_has_a_deployment_and_a_scaled_object_on_its_queue() -> None:
    auth = {d["metadata"]["name"] for _, d in _k8s_objects() if d["kind"] == "TriggerAuthentication"}
    deployments = {d["metadata"]["name"] for _, d in _k8s_objects() if d["kind"] == "Deployment"}
    assert deployments == {"api", "dispatcher", *(worker_service(s) for s in STAGES)}
    for stage in STAGES:
        deployment = _k8s("Deployment", worker_service(stage))
        container = _container(deployment)
        assert container["command"] == ["python", "-m", "services.worker", "--stage", stage]
        assert "replicas" not in deployment["spec"], "KEDA owns the replica count of workers"
        _check_process_pod(deployment, METRICS_PORT)

        scaled = _k8s("ScaledObject", worker_service(stage))
        spec = scaled["spec"]
        assert spec["scaleTargetRef"]["name"] == worker_service(stage)
        assert 1 <= spec["minReplicaCount"] <= spec["maxReplicaCount"]
        [trigger] = spec["triggers"]
        assert trigger["type"] == "rabbitmq" and trigger["authenticationRef"]["name"] in auth
        assert trigger["metadata"]["queueName"] == stage_queue(stage)
        assert trigger["metadata"]["mode"] == "QueueLength" and int(trigger["metadata"]["value"]) >= 1
        assert set(trigger["metadata"]) <= {"protocol", "queueName", "mode", "value", "activationValue",
                                             "vhostName", "excludeUnacknowledged", "unsafeSsl"}


def test_the_api_and_dispatcher_deployments_probe_their_health_and_migrate_first() -> None:
    for name, port in (("api", API_PORT), ("dispatcher", METRICS_PORT)):
        deployment = _k8s("Deployment", name)
        _check_process_pod(deployment, port)
        [init] = deployment["spec"]["template"]["spec"]["initContainers"]
        assert init["command"] == ["taskmgr", "migrate"]
    service = _k8s("Service", "api")
    assert service["spec"]["selector"].items() <= _k8s("Deployment", "api")["spec"]["template"]["metadata"][
        "labels"].items()


def test_kubernetes_settings_exist_and_every_secret_key_is_documented() -> None:
    config = _k8s("ConfigMap", "taskmgr-config")["data"]
    assert set(config) <= _setting_names(), f"unknown settings: {sorted(set(config) - _setting_names())}"
    assert config["METRICS_PORT"] == str(METRICS_PORT) and config["PORT"] == str(API_PORT)
    example = yaml.safe_load((DEPLOY / "k8s" / "secret.example.yaml").read_text())
    assert example["metadata"]["name"] == "taskmgr-secrets"
    secret_keys = set(example["stringData"])
    for _, doc in _k8s_objects():
        if doc["kind"] == "TriggerAuthentication":
            for ref in doc["spec"]["secretTargetRef"]:
                assert ref["name"] == "taskmgr-secrets" and ref["key"] in secret_keys
    assert secret_keys - {"KEDA_RABBITMQ_HOST"} <= _setting_names()
    for name in ("AMQP_URL", "POSTGRES_PASSWORD", "CALLBACK_SECRET"):
        assert name not in config, f"{name} is a secret, not configuration"
    for _, doc in _k8s_objects():
        for container in doc.get("spec", {}).get("template", {}).get("spec", {}).get("containers", []):
            assert {e["name"] for e in container.get("env", [])} <= _setting_names()


# --- the image ---------------------------------------------------------------------------------


def _image_uid() -> int:
    users = re.findall(r"^USER\s+(\d+)", (ROOT / "Dockerfile").read_text(), re.MULTILINE)
    assert users, "the image runs as a numeric non-root user"
    return int(users[-1].split(":")[0])


def test_the_image_is_built_in_two_stages_and_runs_as_a_non_root_user() -> None:
    dockerfile = (ROOT / "Dockerfile").read_text()
    stages = re.findall(r"^FROM\s+\S+\s+AS\s+(\w+)", dockerfile, re.MULTILINE | re.IGNORECASE)
    assert stages == ["build", "runtime"]
    build, runtime = dockerfile.split("AS runtime", 1)
    assert "pip wheel" in build and "--no-index" in runtime, "wheels built first, installed offline after"
    assert "build-essential" not in runtime, "no compiler in the runtime image"
    assert _image_uid() != 0
    ignored = (ROOT / ".dockerignore").read_text().split()
    assert {".git", ".venv", ".env", "tests"} <= set(ignored)
    for copied in re.findall(r"^COPY\s+(?:--\S+\s+)*(\S+)", dockerfile, re.MULTILINE):
        assert (ROOT / copied).exists(), copied


def test_the_image_takes_torch_from_the_cpu_index_at_the_pinned_version() -> None:
    """PyPI's Linux torch wheel depends on the CUDA libraries (GBs no process uses)."""
    dockerfile = (ROOT / "Dockerfile").read_text()
    build = dockerfile.split("AS runtime", 1)[0]
    assert "ARG TORCH_INDEX_URL=https://download.pytorch.org/whl/cpu" in dockerfile
    torch_step, project_step = build.index('--index-url "${TORCH_INDEX_URL}"'), build.index("--constraint")
    assert torch_step < project_step, "torch is built from the CPU index before the project resolves"
    assert "'+cpu'" in build, "the build fails rather than fall back to a CUDA build"
    assert re.search(r'"torch==[^"]+"', (ROOT / "pyproject.toml").read_text()), "the pin the image reads"


# --- RabbitMQ --------------------------------------------------------------------------------


def _policy_for(queue: str, policies: list[dict[str, Any]]) -> dict[str, Any] | None:
    matching = [p for p in policies if re.search(p["pattern"], queue)]
    return max(matching, key=lambda p: p["priority"]) if matching else None


def test_every_queue_has_a_policy_that_agrees_with_its_declared_arguments() -> None:
    definitions = json.loads((DEPLOY / "rabbitmq" / "definitions.json").read_text())
    policies = definitions["policies"]
    topology = Topology(STAGES, AmqpSettings.model_fields["stage_queue_max_length"].default)
    for spec in topology.queues:
        policy = _policy_for(spec.name, policies)
        assert policy is not None, f"no policy for {spec.name}"
        arguments = dict(spec.arguments)
        for key, value in policy["definition"].items():
            assert key != "max-priority", "x-max-priority can only be a queue argument"
            if f"x-{key}" in arguments:
                assert arguments[f"x-{key}"] == value, f"{spec.name}: policy {key}={value}, argument {arguments}"
    retry_ttls = {t.queue: _policy_for(t.queue, policies)["definition"]["message-ttl"] for t in RETRY_TIERS}  # type: ignore[index]
    assert retry_ttls == {t.queue: int(t.seconds * 1000) for t in RETRY_TIERS}


def test_consumer_timeout_outlasts_the_longest_attempt_a_task_may_ask_for() -> None:
    conf = (DEPLOY / "rabbitmq" / "rabbitmq.conf").read_text()
    [timeout_ms] = re.findall(r"^consumer_timeout\s*=\s*(\d+)", conf, re.MULTILINE)
    limit = TIMEOUT_SECONDS_CEILING
    assert int(timeout_ms) >= (limit + OUTCOME_PUBLISH_MAX_SECONDS) * 1000
    assert WorkerSettings.model_fields["task_timeout"].default <= limit
    plugins = (DEPLOY / "rabbitmq" / "enabled_plugins").read_text()
    assert "rabbitmq_management" in plugins and "rabbitmq_prometheus" in plugins
