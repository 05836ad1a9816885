"""When a periodic schedule fires (shared/schedules.py): pure rules, no fleet."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

import pytest
from pydantic import ValidationError

from shared.schedules import CatchUp, ScheduleRequest, due_firings, next_fire_time

T0 = datetime(2026, 11, 29, 8, 0, 0, tzinfo=UTC)
EVERY_5_S = "*/5 * * * * *"
GRACE = timedelta(seconds=1)


def test_six_fields_put_seconds_first() -> None:
    assert next_fire_time(EVERY_5_S, "UTC", T0) == T0 + timedelta(seconds=5)
    assert next_fire_time("0 2 * * *", "UTC", T0) == datetime(2026, 11, 30, 2, 0, tzinfo=UTC)


def test_a_time_zone_moves_the_firing() -> None:
    # 02:00 in Paris is 01:00 UTC in winter.
    assert next_fire_time("0 2 * * *", "Europe/Paris", T0) == datetime(2026, 11, 30, 1, 0, tzinfo=UTC)


def test_an_on_time_firing_runs_whatever_the_catch_up_mode() -> None:
    for mode in CatchUp:
        firings = due_firings(EVERY_5_S, "UTC", T0, T0 + timedelta(seconds=0.3), mode, GRACE)
        assert firings.fire_times == (T0,)
        assert firings.next_fire_at == T0 + timedelta(seconds=5)


@pytest.mark.parametrize("mode, expected", [
    (CatchUp.ALL, [0, 5, 10, 15, 20]),
    (CatchUp.LATEST, [20]),
    (CatchUp.NONE, [20]),  # 20 s is on time (0.5 s old): only the missed ones are skipped
])
def test_catch_up_after_an_outage(mode: CatchUp, expected: list[int]) -> None:
    now = T0 + timedelta(seconds=20.5)
    firings = due_firings(EVERY_5_S, "UTC", T0, now, mode, GRACE)
    assert firings.fire_times == tuple(T0 + timedelta(seconds=s) for s in expected)
    assert firings.next_fire_at == T0 + timedelta(seconds=25)


def test_none_skips_every_missed_firing() -> None:
    now = T0 + timedelta(seconds=22)
    firings = due_firings(EVERY_5_S, "UTC", T0, now, CatchUp.NONE, GRACE)
    assert firings.fire_times == ()
    assert firings.next_fire_at == T0 + timedelta(seconds=25)


def test_a_long_outage_does_not_walk_every_missed_firing() -> None:
    now = T0 + timedelta(days=30, seconds=2)
    latest = due_firings(EVERY_5_S, "UTC", T0, now, CatchUp.LATEST, GRACE)
    assert latest.fire_times == (T0 + timedelta(days=30),)
    assert latest.next_fire_at == T0 + timedelta(days=30, seconds=5)
    everything = due_firings(EVERY_5_S, "UTC", T0, now, CatchUp.ALL, GRACE)
    assert len(everything.fire_times) == 100 and everything.next_fire_at == T0 + timedelta(seconds=500)


@pytest.mark.parametrize("body, field", [
    ({"cron": "every day", "task": {}}, "cron"),
    ({"cron": "* * * *", "task": {}}, "cron"),
    ({"cron": "0 2 * * *", "timezone": "Mars/Olympus", "task": {}}, "timezone"),
    ({"cron": "0 2 * * *", "catch_up": "some", "task": {}}, "catch_up"),
    ({"cron": "0 2 * * *"}, "task"),
])
def test_bad_schedules_name_the_field(body: dict[str, object], field: str) -> None:
    with pytest.raises(ValidationError) as caught:
        ScheduleRequest.model_validate(body)
    assert [e["loc"][0] for e in caught.value.errors()] == [field]
