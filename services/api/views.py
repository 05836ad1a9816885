"""How task rows look to API clients (the seed's response shapes)."""

from __future__ import annotations

from typing import Any

from services.api.task_repository import TaskRow


def task_created_view(row: TaskRow) -> dict[str, Any]:
    return {"task_id": str(row["id"]), "status": row["status"], "created_at": row["created_at"]}


def task_view(row: TaskRow) -> dict[str, Any]:
    view = {
        "task_id": str(row["id"]),
        "task_type": row["task_type"],
        "kb_id": row["kb_id"],
        "status": row["status"],
        "progress": row["progress"],
        "stage": row["stage"],
        "priority": row["priority"],
        "attempts": row["attempts"],
        "retry_limit": row["retry_limit"],
        "created_at": row["created_at"],
        "started_at": row["started_at"],
        "estimated_completion": row["estimated_completion"],
        "finished_at": row["finished_at"],
        "next_attempt_at": row["next_attempt_at"],
        "result": row["result"],
        "error": row["error"],
    }
    if "callback_state" in row.keys() and row["callback_state"] is not None:
        view["callback"] = {
            "state": row["callback_state"],
            "attempts": row["callback_attempts"],
            "last_error": row["callback_last_error"],
        }
    return view
