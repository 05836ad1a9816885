"""Small pure pieces: retry tiers, signatures, ids, topology names, validation."""

from __future__ import annotations

import time
import uuid
from pathlib import Path

import pytest
from pydantic import BaseModel

from services.worker.retry_policy import RetryPolicy
from shared.errors import InvalidRequest
from shared.ids import new_task_id
from shared.task_request import RequestLimits, validate_task_request
from shared.task_types import TaskType, TaskTypeRegistry, default_registry
from shared.topology import RETRY_TIERS, Topology
from shared.webhooks import WebhookVerificationError, sign, verify

pytestmark = pytest.mark.fast  # no broker, database or child process (make test-fast)


def test_retry_delays_grow_and_pick_the_nearest_tier() -> None:
    policy = RetryPolicy(base_seconds=1, factor=2, jitter=0)
    assert [policy.tier_for(n).name for n in (1, 2, 3, 4, 5, 6, 7, 9, 13)] == [
        "1s", "1s", "5s", "5s", "30s", "30s", "2m", "2m", "1h"]


def test_retry_jitter_stays_within_its_band() -> None:
    policy = RetryPolicy(base_seconds=2, factor=3, jitter=0.2)
    delays = [policy.delay_seconds(3) for _ in range(200)]
    assert min(delays) >= 18 * 0.8 and max(delays) <= 18 * 1.2 and len(set(delays)) > 100


def test_retry_limit_counts_retries_after_the_first_attempt() -> None:
    policy = RetryPolicy(base_seconds=1, factor=2)
    assert [policy.should_retry(a, 2) for a in (1, 2, 3)] == [True, True, False]
    assert policy.should_retry(1, 0) is False


def test_a_signature_verifies_with_any_current_secret_and_rejects_tampering() -> None:
    body = b'{"task_id": "x"}'
    headers = sign(["old-secret", "new-secret"], "msg_1", body)
    verify(["new-secret"], headers, body)
    verify(["old-secret"], headers, body)
    with pytest.raises(WebhookVerificationError):
        verify(["other"], headers, body)
    with pytest.raises(WebhookVerificationError):
        verify(["new-secret"], headers, body + b" ")


def test_a_stale_signature_timestamp_is_rejected() -> None:
    body = b"{}"
    headers = sign(["s"], "msg_1", body, timestamp=int(time.time()) - 3600)
    with pytest.raises(WebhookVerificationError, match="tolerance"):
        verify(["s"], headers, body)


def test_task_ids_are_time_ordered_uuid7() -> None:
    first = new_task_id()
    time.sleep(0.002)
    second = new_task_id()
    assert uuid.UUID(first).version == 7 and uuid.UUID(first).variant == uuid.RFC_4122 and first < second


def test_task_ids_from_one_process_increase_even_within_a_millisecond() -> None:
    ids = [new_task_id() for _ in range(10_000)]
    assert ids == sorted(ids) and len(set(ids)) == len(ids)
    assert abs(int(ids[0][:13].replace("-", ""), 16) - time.time_ns() // 1_000_000) < 5_000


def test_topology_names_come_from_one_spec() -> None:
    topology = Topology(("default", "chunk"))
    names = [q.name for q in topology.queues]
    assert names[:2] == ["tm.stage.default", "tm.stage.chunk"]
    assert [t.queue for t in RETRY_TIERS] == [n for n in names if n.startswith("tm.retry.")]
    stage = dict(topology.queue("tm.stage.default").arguments)
    assert stage["x-max-priority"] == 10 and stage["x-overflow"] == "reject-publish"
    retry = dict(topology.queue("tm.retry.5s").arguments)
    assert retry == {"x-message-ttl": 5000, "x-dead-letter-exchange": "tm.tasks"}


class _KbPayload(BaseModel):
    path: str


async def _noop(payload: object, ctx: object) -> None:
    return None


def test_a_task_type_that_needs_a_kb_refuses_a_request_without_one() -> None:
    registry = TaskTypeRegistry([TaskType(name="index_kb", payload_model=_KbPayload, description="",
                                          requires_kb_id=True, handler=_noop)])
    with pytest.raises(InvalidRequest) as caught:
        validate_task_request({"task_type": "index_kb", "payload": {}}, registry, RequestLimits(3, 20))
    assert {e["field"] for e in caught.value.errors} == {"kb_id", "payload.path"}


def test_every_built_in_task_type_runs_on_the_default_stage_with_a_handler() -> None:
    registry = default_registry(demo=True)
    assert {"test", "echo", "sleep", "fail", "benchmark"} <= set(registry)
    for name in ("test", "echo", "sleep", "fail", "benchmark"):
        assert registry[name].stages == ("default",) and registry[name].handler is not None


def test_file_paths_must_stay_inside_the_upload_roots(tmp_path) -> None:  # type: ignore[no-untyped-def]
    from shared.file_access import FileAccessError, open_checked, resolve_within_roots

    root = tmp_path / "root"
    root.mkdir()
    (root / "doc.txt").write_text("hello")
    outside = tmp_path / "secret.txt"
    outside.write_text("secret")
    (root / "escape").symlink_to(outside)
    (root / "inside-link").symlink_to(root / "doc.txt")
    roots = [root.resolve()]

    assert resolve_within_roots(str(root / "doc.txt"), roots) == (root / "doc.txt").resolve()
    assert resolve_within_roots("doc.txt", roots) == (root / "doc.txt").resolve()
    assert resolve_within_roots(str(root / "inside-link"), roots) == (root / "doc.txt").resolve()
    for bad, reason in [(str(outside), "outside"), (str(root / "escape"), "outside"),
                        (f"{root}/../secret.txt", "'..'"), ("doc\x00.txt", "NUL"), (str(root / "nope"), "does not exist")]:
        with pytest.raises(FileAccessError, match=reason):
            resolve_within_roots(bad, roots)
    with open_checked((root / "doc.txt").resolve(), max_bytes=100) as handle:
        assert handle.read() == b"hello"
    with pytest.raises(FileAccessError, match="limit"):
        open_checked((root / "doc.txt").resolve(), max_bytes=2)
    with pytest.raises(FileAccessError, match="cannot be opened"):
        open_checked(root / "inside-link", max_bytes=100)  # a final symlink is never followed at open


def test_upload_roots_parse_from_a_path_list(monkeypatch) -> None:  # type: ignore[no-untyped-def]
    from shared.settings import FileSettings

    monkeypatch.setenv("UPLOAD_ROOTS", "/srv/a:/srv/b")
    assert FileSettings().upload_roots == [Path("/srv/a"), Path("/srv/b")]
    monkeypatch.setenv("UPLOAD_ROOTS", '["/srv/c"]')
    assert FileSettings().upload_roots == [Path("/srv/c")]


def test_env_example_documents_every_setting_and_parses(tmp_path, monkeypatch) -> None:  # type: ignore[no-untyped-def]
    from pydantic_settings import BaseSettings

    from shared.settings import Settings

    example = (Path(__file__).resolve().parents[1] / ".env.example").read_text()
    documented = {line.split("=", 1)[0].lstrip("# ").strip() for line in example.splitlines() if "=" in line}
    for field in Settings.model_fields.values():
        settings_class = field.default_factory  # type: ignore[assignment]
        assert isinstance(settings_class, type) and issubclass(settings_class, BaseSettings)
        for sub in settings_class.model_fields.values():
            assert sub.alias in documented, f"{sub.alias} is missing from .env.example"
    (tmp_path / ".env").write_text(example)
    monkeypatch.chdir(tmp_path)
    for name in list(__import__("os").environ):
        if name in documented:
            monkeypatch.delenv(name)
    settings = Settings()
    assert settings.service.port == 8084 and settings.worker.worker_pool_size == 10


def test_an_empty_variable_means_unset(monkeypatch) -> None:  # type: ignore[no-untyped-def]
    from shared.settings import CallbackSettings

    monkeypatch.setenv("KB_CALLBACK_URL", "")
    monkeypatch.setenv("CALLBACK_SECRET", "")
    monkeypatch.setenv("CALLBACK_TIMEOUT", "")
    settings = CallbackSettings()
    assert settings.kb_callback_url is None and settings.callback_secret is None and settings.timeout_seconds == 15
