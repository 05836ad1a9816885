"""`taskmgr submit --wait`, `ingest` and `top`: the CLI commands built on the
SDK, run as a user would against the real fleet."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import uuid
from pathlib import Path

from tests.support.api import ApiClient
from tests.support.fleet import Fleet

TASKMGR = os.path.join(os.path.dirname(sys.executable), "taskmgr")


def _taskmgr(fleet: Fleet, *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([TASKMGR, *args], env={**fleet.env(), "COLUMNS": "160"}, capture_output=True, text=True,
                          timeout=120, check=False)


def test_submit_wait_shows_progress_and_prints_the_task(fleet: Fleet) -> None:
    out = _taskmgr(fleet, "submit", "sleep", "--payload", '{"seconds": 1}', "--wait")
    assert out.returncode == 0, out.stderr
    task = json.loads(out.stdout)
    assert task["status"] == "completed" and task["task_type"] == "sleep"
    assert "sleep" in out.stderr and "completed" in out.stderr, "the progress bar went to stderr"
    failed = _taskmgr(fleet, "submit", "fail", "--payload", '{"permanent": true}', "--retry-limit", "0", "--wait")
    assert failed.returncode == 2 and json.loads(failed.stdout)["status"] == "failed"


async def test_ingest_submits_each_file_once_and_resumes(fleet: Fleet, api: ApiClient, tmp_path: Path) -> None:
    kb = f"kb_ingest_{uuid.uuid4().hex[:8]}"
    folder = tmp_path / "docs"
    (folder / "sub").mkdir(parents=True)
    for name in ("a.txt", "b.txt", "sub/c.txt"):
        (folder / name).write_text(f"content of {name}\n")

    first = _taskmgr(fleet, "ingest", str(folder), "--kb", kb, "--task-type", "file_digest")
    assert first.returncode == 0, first.stdout + first.stderr
    assert "3 of 3 completed (0 done before)" in first.stdout
    assert "sub/c.txt" in first.stdout and "completed" in first.stdout

    (folder / "d.txt").write_text("a late file\n")
    second = _taskmgr(fleet, "ingest", str(folder), "--kb", kb, "--task-type", "file_digest")
    assert second.returncode == 0, second.stdout + second.stderr
    assert "4 of 4 completed (3 done before)" in second.stdout and "done before" in second.stdout

    status, page = await api.call("GET", f"/api/v1/tasks?kb_id={kb}&limit=50")
    assert status == 200 and len(page["items"]) == 4, "finished files were not submitted again"

    # Interrupted after submitting a.txt but before saving its task: the rerun gets the same task back.
    state_file = folder / ".taskmgr-ingest.json"
    state = json.loads(state_file.read_text())
    before = state["files"]["a.txt"]["task_id"]
    state["files"]["a.txt"].update(task_id=None, status=None)
    state_file.write_text(json.dumps(state))
    third = _taskmgr(fleet, "ingest", str(folder), "--kb", kb, "--task-type", "file_digest")
    assert third.returncode == 0, third.stdout + third.stderr
    assert json.loads(state_file.read_text())["files"]["a.txt"]["task_id"] == before
    status, page = await api.call("GET", f"/api/v1/tasks?kb_id={kb}&limit=50")
    assert len(page["items"]) == 4


def test_ingest_reports_failures_in_its_table(fleet: Fleet, tmp_path: Path) -> None:
    (tmp_path / "x.txt").write_text("x\n")
    out = _taskmgr(fleet, "ingest", str(tmp_path), "--kb", f"kb_ingest_{uuid.uuid4().hex[:8]}",
                   "--task-type", "no_such_type")
    assert out.returncode == 2
    assert "x.txt" in out.stdout and "422" in out.stdout and "0 of 1 completed" in out.stdout


def test_top_draws_workers_and_queues(fleet: Fleet) -> None:
    out = _taskmgr(fleet, "top", "--once")
    assert out.returncode == 0, out.stderr
    assert "workers" in out.stdout and "queues" in out.stdout
    assert "tm.stage.default" in out.stdout and "default" in out.stdout
