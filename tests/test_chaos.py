"""The chaos soak, short: workers killed and RabbitMQ restarted while mixed
tasks flow; nothing lost, stuck or called back twice. (`make chaos` runs the
long one.)"""

from __future__ import annotations

from pathlib import Path

from tests.chaos import ChaosConfig, run_chaos


async def test_a_short_chaos_run_loses_nothing(tmp_path: Path) -> None:
    report = await run_chaos(
        ChaosConfig(tasks=300, workers=2, kill_every_seconds=2.0, restart_broker=True, timeout_seconds=240, seed=7),
        tmp_path,
    )
    print(report.line())
    assert report.accepted == 300
    assert report.workers_killed >= 1 and report.broker_restarts == 1
    assert (report.lost, report.stuck, report.duplicated_callbacks, report.missing_callbacks, report.unexpected) == (
        0, 0, 0, 0, 0), report.details
    assert report.completed + report.failed_as_expected + report.cancelled == 300
