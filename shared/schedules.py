"""Periodic schedules: what a client sends, and when a schedule fires (pure
functions of time, so the rules are unit-tested without a fleet; decision 0090).

A cron expression has 5 fields (`min hour day month weekday`) or 6 with the
seconds first (`sec min hour day month weekday`), read in the schedule's time
zone (croniter does the calendar arithmetic, daylight saving included).
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from enum import StrEnum
from typing import Any
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

from croniter import CroniterBadDateError, croniter  # type: ignore[import-untyped]  # no stubs shipped
from pydantic import BaseModel, ConfigDict, Field, ValidationInfo, field_validator

# At most this many missed firings are created per schedule per pass with `catch_up: all`;
# the rest follow on the next passes.
MAX_FIRINGS_PER_PASS = 100


class CatchUp(StrEnum):
    """What to do with firings missed while no dispatcher ran."""

    NONE = "none"  # skip them
    LATEST = "latest"  # run the most recent one, once
    ALL = "all"  # run every one, oldest first


class ScheduleRequest(BaseModel):
    """The body of `POST /api/v1/schedules`."""

    model_config = ConfigDict(extra="forbid", frozen=True, str_strip_whitespace=True)

    name: str | None = Field(default=None, min_length=1, max_length=200, pattern=r"^[^\x00]*$",
                             description="A label for people.")
    # Before cron: the cron check reads it.
    timezone: str = Field(default="UTC", min_length=1, max_length=64, description="IANA name, e.g. Europe/Paris.")
    cron: str = Field(min_length=1, max_length=200, description=(
        "5 fields (min hour day month weekday) or 6 with seconds first (sec min hour day month weekday)."))
    catch_up: CatchUp = Field(default=CatchUp.NONE, description="Firings missed while the fleet was down: "
                                                                "none (skip), latest (run one), all.")
    task: dict[str, Any] = Field(description="The task each firing submits: a `POST /api/v1/tasks` body "
                                             "(without run_at, delay_seconds).")

    @field_validator("cron")
    @classmethod
    def _cron(cls, value: str, info: ValidationInfo) -> str:
        fields = value.split()
        if len(fields) not in (5, 6) or not croniter.is_valid(value, second_at_beginning=True):
            raise ValueError("must be a cron expression of 5 fields, or 6 with seconds first")
        try:
            next_fire_time(value, info.data.get("timezone", "UTC"), datetime.now(UTC))
        except (CroniterBadDateError, OverflowError, ValueError):
            raise ValueError("never fires (no such date)") from None
        return " ".join(fields)

    @field_validator("timezone")
    @classmethod
    def _timezone(cls, value: str) -> str:
        zone(value)
        return value


def zone(name: str) -> ZoneInfo:
    try:
        return ZoneInfo(name)
    except (ZoneInfoNotFoundError, ValueError):
        raise ValueError(f"unknown time zone {name!r}; use an IANA name such as Europe/Paris") from None


def next_fire_time(cron: str, timezone: str, after: datetime) -> datetime:
    """The first firing strictly after `after`, in UTC."""
    fire = croniter(cron, after.astimezone(zone(timezone)), second_at_beginning=True).get_next(datetime)
    return fire.astimezone(UTC)  # type: ignore[no-any-return]


@dataclass(frozen=True)
class Firings:
    """What one pass does for one schedule: the firing times to submit, and the
    first firing still to come."""

    fire_times: tuple[datetime, ...]
    next_fire_at: datetime


def due_firings(
    cron: str, timezone: str, next_fire_at: datetime, now: datetime, catch_up: CatchUp, grace: timedelta
) -> Firings:
    """Firings due at `now`, starting from `next_fire_at`. A firing is on time if
    at most `grace` old; older ones were missed, and `catch_up` decides about them."""
    due: list[datetime] = []
    fire = next_fire_at
    while fire <= now and len(due) < MAX_FIRINGS_PER_PASS:
        due.append(fire)
        fire = next_fire_time(cron, timezone, fire)
    if fire <= now and catch_up is not CatchUp.ALL:  # a long outage: skip ahead cheaply
        last = _last_before(cron, timezone, now)
        due = [last] if last is not None else due
        fire = next_fire_time(cron, timezone, now)
    on_time = [f for f in due if now - f <= grace]
    missed = [f for f in due if now - f > grace]
    if not missed or catch_up is CatchUp.ALL:
        chosen = due
    elif catch_up is CatchUp.LATEST:
        chosen = due[-1:]
    else:
        chosen = on_time
    return Firings(tuple(chosen), fire)


def _last_before(cron: str, timezone: str, now: datetime) -> datetime | None:
    """The latest firing at or before `now`."""
    previous = croniter(cron, now.astimezone(zone(timezone)), second_at_beginning=True).get_prev(datetime)
    return previous.astimezone(UTC) if previous is not None else None
