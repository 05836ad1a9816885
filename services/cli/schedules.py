"""`taskmgr schedules ...`: periodic schedules over REST (docs/scheduler.md)."""

from __future__ import annotations

import argparse
import json
from typing import Any

from services.cli.client import ApiClient

BASE = "/api/v1/schedules"


class ScheduleArgumentError(ValueError):
    """A command line the api would refuse anyway; said before calling it."""


def register(sub: Any) -> argparse.ArgumentParser:
    schedules = sub.add_parser("schedules", help="periodic schedules: create, list, show, pause, resume, delete")
    verbs = schedules.add_subparsers(dest="schedules_command", required=True)
    create = verbs.add_parser("create", help="create a schedule; prints it with its id")
    create.add_argument("--cron", required=True,
                        help="5 fields (min hour day month weekday), or 6 with seconds first")
    create.add_argument("--task", required=True, help='the task each firing submits, as JSON: {"task_type": ...}')
    create.add_argument("--timezone", default="UTC", help="IANA time zone of the cron expression")
    create.add_argument("--catch-up", choices=("none", "latest", "all"), default="none",
                        help="firings missed while the fleet was down: skip, run the latest once, or run all")
    create.add_argument("--name")
    verbs.add_parser("list", help="every schedule the key may see")
    for verb, text in (("show", "a schedule and its recent firings"), ("pause", "stop firing"),
                       ("resume", "fire again, from the next firing"), ("delete", "delete (its tasks stay)")):
        verbs.add_parser(verb, help=text).add_argument("schedule_id")
    return schedules  # type: ignore[no-any-return]


def run(args: argparse.Namespace, client: ApiClient) -> Any:
    """The api's answer to the command."""
    command = args.schedules_command
    if command == "create":
        try:
            task = json.loads(args.task)
        except ValueError as exc:
            raise ScheduleArgumentError(f"--task is not valid JSON: {exc}") from None
        body: dict[str, Any] = {"cron": args.cron, "timezone": args.timezone, "catch_up": args.catch_up,
                                "task": task}
        if args.name:
            body["name"] = args.name
        return client.request("POST", BASE, body)[1]
    if command == "list":
        return client.request("GET", BASE)[1]
    if command == "show":
        return client.request("GET", f"{BASE}/{args.schedule_id}")[1]
    if command in ("pause", "resume"):
        return client.request("POST", f"{BASE}/{args.schedule_id}/{command}")[1]
    client.request("DELETE", f"{BASE}/{args.schedule_id}")
    return {"deleted": args.schedule_id}
