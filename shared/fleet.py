"""The fleet a deployment runs: the api, one worker service per stage, the dispatcher.

Deployment files (`docker-compose.yml`, `deploy/k8s`, `deploy/prometheus`,
`deploy/grafana`) name every stage in `STAGES`; `tests/test_deploy_files.py`
checks them against this list, and checks that every stage the code
implements (`services.worker.stages.known_stages()`) or a task type routes to
is in it. Adding a stage means adding it here and to those files.
"""

from __future__ import annotations

DEFAULT_STAGE = "default"
# The document pipeline, in order (see PIPELINE.md): convert to text, split,
# embed, store, build the indexes.
PIPELINE_STAGES: tuple[str, ...] = ("preprocess", "chunk", "embed", "store", "index")
STAGES: tuple[str, ...] = (DEFAULT_STAGE, *PIPELINE_STAGES)

API_SERVICE = "api"
DISPATCHER_SERVICE = "dispatcher"


def worker_service(stage: str) -> str:
    """The compose service / Kubernetes Deployment that runs `stage`."""
    return f"worker-{stage}"


def services() -> tuple[str, ...]:
    """Every long-running process kind a deployment runs, by its service name."""
    return (API_SERVICE, *(worker_service(s) for s in STAGES), DISPATCHER_SERVICE)
