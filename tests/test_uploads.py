"""Safe file intake: uploads streamed into the store and used as `file_ref`,
tenant-bound, size-capped, cleaned up after their task ends; `file_path`
traversal and symlink escapes refused at submit time and at read time."""

from __future__ import annotations

import hashlib
import os
import uuid
from pathlib import Path

import aiohttp
import pytest

from tests.conftest import FleetFactory
from tests.support.api import ApiClient
from tests.support.fleet import Fleet


def _form(content: bytes | None, filename: str = "doc.txt") -> aiohttp.FormData:
    form = aiohttp.FormData(default_to_multipart=True)
    if content is not None:
        form.add_field("file", content, filename=filename, content_type="application/octet-stream")
    else:
        form.add_field("note", "no file here")
    return form


def _path(kb_id: str | None) -> str:
    return "/api/v1/uploads" + (f"?kb_id={kb_id}" if kb_id is not None else "")


async def _upload(api: ApiClient, kb_id: str, content: bytes, filename: str = "doc.txt") -> tuple[int, dict]:  # type: ignore[type-arg]
    return await api.call("POST", _path(kb_id), data=_form(content, filename))  # type: ignore[return-value]


def _roots(fleet: Fleet) -> Path:
    return Path(fleet.env()["UPLOAD_ROOTS"])


def _files_fleet(root: Path, **env: str):  # type: ignore[no-untyped-def]
    def configure(fleet: Fleet) -> None:
        common = {"UPLOAD_ROOTS": str(root), "MAX_FILE_BYTES": "200000", **env}
        fleet.environment.env.update(common)
        fleet.add_api()
        fleet.add_worker()
        fleet.add_dispatcher()
    return configure


@pytest.fixture
def upload_root(tmp_path: Path) -> Path:
    root = tmp_path / "uploads"
    root.mkdir()
    return root.resolve()


async def test_an_upload_is_streamed_hashed_sniffed_and_usable_as_file_ref(
    fleet_factory: FleetFactory, http: aiohttp.ClientSession, upload_root: Path
) -> None:
    # Larger than MAX_BODY_BYTES (1 MiB, the JSON body cap): uploads stream, uncapped by it.
    fleet = await fleet_factory(_files_fleet(upload_root, MAX_FILE_BYTES="2000000"))
    api = ApiClient(fleet.api_url, http)
    content = b"%PDF-1.4\n" + os.urandom(1_500_000)
    status, stored = await _upload(api, "kb_files", content, filename="../../etc/report.pdf")
    assert status == 201, stored
    assert stored["sha256"] == hashlib.sha256(content).hexdigest() and stored["size"] == len(content)
    assert stored["content_type"] == "application/pdf" and stored["filename"] == "report.pdf"
    ref = stored["file_ref"]
    on_disk = upload_root / ".uploads" / ref / "content"
    assert on_disk.read_bytes() == content and (on_disk.parent / "meta.json").is_file()

    task = await api.run({"task_type": "file_digest", "kb_id": "kb_files", "payload": {"file_ref": ref}})
    assert task["status"] == "completed", task
    assert task["result"] == {"size": len(content), "sha256": stored["sha256"]}

    # Another knowledge base cannot use it, and is told exactly what it would be told for a made-up ref.
    for other_ref in (ref, "upl_" + uuid.uuid4().hex):
        status, error = await api.call("POST", "/api/v1/tasks", json={
            "task_type": "file_digest", "kb_id": "kb_other", "payload": {"file_ref": other_ref}})
        assert status == 422 and error["error"]["details"][0]["field"] == "payload.file_ref"
        assert "not found" in error["error"]["message"]


@pytest.mark.parametrize(("form", "status", "field"), [
    ({"kb_id": None, "content": b"x"}, 422, "kb_id"),
    ({"kb_id": "kb_1", "content": None}, 422, "note"),
    ({"kb_id": "bad kb", "content": b"x"}, 422, "kb_id"),
    ({"kb_id": "kb_1", "content": b""}, 422, "file"),
])
async def test_a_bad_upload_is_refused_naming_the_field(
    api: ApiClient, form: dict, status: int, field: str  # type: ignore[type-arg]
) -> None:
    got, error = await api.call("POST", _path(form["kb_id"]), data=_form(form["content"]))
    assert got == status, error
    assert error["error"]["code"] == "validation_error"
    assert field in {d["field"] for d in error["error"]["details"]}


async def test_an_upload_over_the_cap_is_413_and_leaves_nothing_behind(
    fleet_factory: FleetFactory, http: aiohttp.ClientSession, upload_root: Path
) -> None:
    fleet = await fleet_factory(_files_fleet(upload_root))
    api = ApiClient(fleet.api_url, http)

    async def chunks():  # type: ignore[no-untyped-def]  # no Content-Length: the cap is enforced while streaming
        for _ in range(30):
            yield b"y" * 10_000

    form = aiohttp.FormData()
    form.add_field("file", chunks(), filename="big.bin")
    status, error = await api.call("POST", _path("kb_1"), data=form)
    assert status == 413 and error["error"]["code"] == "payload_too_large"
    store = upload_root / ".uploads"
    assert [p.name for p in store.iterdir() if p.name != ".incoming"] == []
    assert list((store / ".incoming").iterdir()) == []


async def test_an_upload_is_deleted_after_its_task_ends(
    fleet_factory: FleetFactory, http: aiohttp.ClientSession, upload_root: Path
) -> None:
    fleet = await fleet_factory(_files_fleet(upload_root, UPLOAD_RETENTION_SECONDS="0", RETENTION_SWEEP_INTERVAL="0.2",
                                             UPLOAD_UNUSED_TTL_SECONDS="3600"))
    api = ApiClient(fleet.api_url, http)
    _, used = await _upload(api, "kb_r", b"used by a task")
    _, unused = await _upload(api, "kb_r", b"not used yet")
    task = await api.run({"task_type": "file_digest", "kb_id": "kb_r", "payload": {"file_ref": used["file_ref"]}})
    assert task["status"] == "completed"
    store = upload_root / ".uploads"
    import asyncio
    import time

    deadline = time.monotonic() + 20
    while (store / used["file_ref"]).exists() and time.monotonic() < deadline:
        await asyncio.sleep(0.1)
    assert not (store / used["file_ref"]).exists(), "deleted once its task ended"
    assert (store / unused["file_ref"] / "content").exists(), "kept: no task ended with it and its TTL runs"
    status, error = await api.call("POST", "/api/v1/tasks", json={
        "task_type": "file_digest", "kb_id": "kb_r", "payload": {"file_ref": used["file_ref"]}})
    assert status == 422 and "not found" in error["error"]["message"]


async def test_file_paths_outside_the_roots_are_refused_at_submit_and_at_read(
    fleet_factory: FleetFactory, http: aiohttp.ClientSession, upload_root: Path, tmp_path: Path
) -> None:
    fleet = await fleet_factory(_files_fleet(upload_root))
    api = ApiClient(fleet.api_url, http)
    secret = tmp_path / "secret.txt"
    secret.write_text("not for tasks")
    (upload_root / "inside.txt").write_text("fine")
    (upload_root / "escape").symlink_to(secret)
    (upload_root / "dir-escape").symlink_to(tmp_path, target_is_directory=True)

    # Known at submit time: a 422 naming payload.file_path.
    for bad, reason in [(str(secret), "outside"), (f"{upload_root}/../secret.txt", "'..'"),
                        ("../secret.txt", "'..'"), ("inside\x00.txt", "NUL")]:
        status, error = await api.call("POST", "/api/v1/tasks", json={
            "task_type": "file_digest", "kb_id": "kb_p", "payload": {"file_path": bad}})
        assert status == 422, (bad, error)
        assert error["error"]["details"][0]["field"] == "payload.file_path" and reason in error["error"]["message"]

    # Known only when the worker reads: the task fails for good, with the reason, without retries.
    for bad in ("escape", "dir-escape/secret.txt", str(upload_root / "escape")):
        task = await api.run({"task_type": "file_digest", "kb_id": "kb_p", "payload": {"file_path": bad},
                              "retry_limit": 3})
        assert task["status"] == "failed" and task["attempts"] == 1, task
        assert "outside the allowed upload roots" in task["error"]["message"]
    ok = await api.run({"task_type": "file_digest", "kb_id": "kb_p", "payload": {"file_path": "inside.txt"}})
    assert ok["status"] == "completed" and ok["result"]["size"] == 4


async def test_an_upload_that_is_not_multipart_is_refused(api: ApiClient) -> None:
    status, error = await api.call("POST", _path("kb_1"), json={"file": "x"})
    assert status == 422 and error["error"]["details"][0]["field"] == "body"


async def test_a_key_for_another_kb_is_refused_before_anything_is_stored(
    fleet_factory: FleetFactory, http: aiohttp.ClientSession, upload_root: Path
) -> None:
    from shared.security.api_keys import Scope
    from tests.support.keys import bearer, create_key

    fleet = await fleet_factory(_files_fleet(upload_root, AUTH_REQUIRED="true"))
    key = await create_key(fleet.environment, "kb a", [Scope.TASKS_WRITE], kb_ids=["kb_a"])
    api = ApiClient(fleet.api_url, http)
    status, error = await api.call("POST", _path("kb_b"), data=_form(b"data"), headers=bearer(key))
    assert status == 403 and error["error"]["details"][0]["field"] == "kb_id"
    store = upload_root / ".uploads"
    assert [p.name for p in store.iterdir() if p.name != ".incoming"] == []
    status, stored = await api.call("POST", _path("kb_a"), data=_form(b"data"), headers=bearer(key))
    assert status == 201 and stored["kb_id"] == "kb_a"
