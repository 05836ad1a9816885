"""Hostile file paths: no task reaches the upload store by spelling a path
(another tenant's upload is named only by a kb-checked file_ref), a FIFO never
holds a worker thread, and errors never show the server's absolute paths."""

from __future__ import annotations

import asyncio
import os
import threading
from pathlib import Path

import aiohttp
import pytest

from shared.file_access import (
    FileAccessError,
    check_path_syntax,
    open_checked,
    resolve_within_roots,
)
from tests.conftest import FleetFactory
from tests.support.api import ApiClient
from tests.test_uploads import _files_fleet, _upload, upload_root  # noqa: F401 - the fixture is used

REF = "0" * 32


@pytest.fixture
def root(tmp_path: Path) -> Path:
    root = (tmp_path / "root").resolve()
    (root / ".uploads" / REF).mkdir(parents=True)
    (root / ".uploads" / REF / "content").write_text("tenant b's text")
    return root


@pytest.mark.parametrize("spelling", [f".uploads/{REF}/content", f"./.uploads/{REF}/content",
                                      f".uploads//{REF}/content", ".uploads"])
def test_a_relative_path_into_the_upload_store_is_refused(root: Path, spelling: str) -> None:
    with pytest.raises(FileAccessError, match="inside the upload store"):
        check_path_syntax(spelling, [root], store=root / ".uploads")


def test_an_absolute_path_or_a_symlink_into_the_upload_store_is_refused(root: Path) -> None:
    store = root / ".uploads"
    with pytest.raises(FileAccessError, match="inside the upload store"):
        check_path_syntax(str(store / REF / "content"), [root], store=store)
    (root / "innocent").symlink_to(store / REF / "content")
    with pytest.raises(FileAccessError, match="inside the upload store"):
        resolve_within_roots("innocent", [root], store=store)


def test_errors_name_the_path_sent_never_the_server_roots(root: Path, tmp_path: Path) -> None:
    with pytest.raises(FileAccessError) as caught:
        check_path_syntax("/etc/passwd", [root])
    assert str(root) not in caught.value.message and "UPLOAD_ROOTS" in caught.value.message
    (root / "dir").mkdir()
    with pytest.raises(FileAccessError) as caught:
        open_checked(root / "dir", max_bytes=10)
    assert str(root) not in caught.value.message


def test_a_fifo_is_refused_without_blocking(root: Path) -> None:
    fifo = root / "pipe"
    os.mkfifo(fifo)
    outcome: list[BaseException | None] = []

    def read() -> None:
        try:
            open_checked(fifo, max_bytes=10)
            outcome.append(None)
        except BaseException as exc:  # noqa: BLE001 - handed to the test thread
            outcome.append(exc)

    reader = threading.Thread(target=read, daemon=True)
    reader.start()
    reader.join(10)
    if reader.is_alive():  # blocked in open(2): release it so the test fails instead of hanging
        os.close(os.open(fifo, os.O_WRONLY | os.O_NONBLOCK))
        reader.join()
        pytest.fail("open_checked blocked on a FIFO")
    assert isinstance(outcome[0], FileAccessError) and "not a regular file" in outcome[0].message


async def test_a_tenant_cannot_read_another_tenants_upload_by_its_path(
    fleet_factory: FleetFactory, http: aiohttp.ClientSession, upload_root: Path  # noqa: F811
) -> None:
    fleet = await fleet_factory(_files_fleet(upload_root))
    api = ApiClient(fleet.api_url, http)
    status, stored = await _upload(api, "kb_b", b"tenant b's text")
    assert status == 201, stored
    ref = stored["file_ref"]
    status, error = await api.call("POST", "/api/v1/tasks", json={
        "task_type": "file_digest", "kb_id": "kb_a", "payload": {"file_path": f".uploads/{ref}/content"}})
    assert status == 422, error
    assert error["error"]["details"][0]["field"] == "payload.file_path"
    assert "upload store" in error["error"]["message"] and str(upload_root) not in error["error"]["message"]

    # A symlink in a root that points into the store is caught when the worker reads.
    (upload_root / "innocent.txt").symlink_to(upload_root / ".uploads" / ref / "content")
    task = await api.run({"task_type": "file_digest", "kb_id": "kb_a", "payload": {"file_path": "innocent.txt"}})
    assert task["status"] == "failed" and "upload store" in task["error"]["message"], task

    # A FIFO fails its task at once; the worker's threads stay free for the next one.
    os.mkfifo(upload_root / "pipe")
    task = await api.run({"task_type": "file_digest", "kb_id": "kb_a", "payload": {"file_path": "pipe"}})
    assert task["status"] == "failed" and "not a regular file" in task["error"]["message"], task
    own = await api.run({"task_type": "file_digest", "kb_id": "kb_b", "payload": {"file_ref": ref}})
    assert own["status"] == "completed", own


async def test_a_tenant_keeps_at_most_its_upload_quota_in_files_and_bytes(
    fleet_factory: FleetFactory, http: aiohttp.ClientSession, upload_root: Path  # noqa: F811
) -> None:
    fleet = await fleet_factory(_files_fleet(upload_root, UPLOAD_QUOTA_FILES="3", UPLOAD_QUOTA_BYTES="5000"))
    api = ApiClient(fleet.api_url, http)
    status, body = await _upload(api, "kb_q", b"y" * 6000)  # more than the 5000-byte quota
    assert status == 413 and "UPLOAD_QUOTA_BYTES" in body["error"]["message"], body
    answers = await asyncio.gather(*(_upload(api, "kb_q", b"x" * 1000) for _ in range(5)))  # in parallel
    statuses = sorted(status for status, _ in answers)
    assert statuses == [201, 201, 201, 413, 413], answers
    refused = [body for status, body in answers if status == 413]
    assert all("UPLOAD_QUOTA_FILES" in body["error"]["message"] for body in refused), refused
    stored = [p for p in (upload_root / ".uploads").iterdir() if not p.name.startswith(".")]
    assert len(stored) == 3


async def test_an_upload_that_would_fill_the_disk_is_507(
    fleet_factory: FleetFactory, http: aiohttp.ClientSession, upload_root: Path  # noqa: F811
) -> None:
    fleet = await fleet_factory(_files_fleet(upload_root, UPLOAD_MIN_FREE_BYTES=str(2**62)))
    api = ApiClient(fleet.api_url, http)
    status, body = await _upload(api, "kb_full", b"z" * 100)
    assert status == 507 and "UPLOAD_MIN_FREE_BYTES" in body["error"]["message"], body
    assert not [p for p in (upload_root / ".uploads").iterdir() if not p.name.startswith(".")]
