"""Tell workers which task runs just ended (committed), one `tm.control`
broadcast per batch, so they refuse an unmarked copy of a finished run
(services/worker/finished_tasks.py)."""

from __future__ import annotations

import contextlib
from collections.abc import Sequence

from services.dispatcher.state_writer import Ended
from shared.amqp.publisher import Publisher
from shared.errors import Unavailable
from shared.finished_tasks import FinishedRuns
from shared.messages import TaskEvent
from shared.status import TaskStatus
from shared.topology import CONTROL_EXCHANGE

_ANNOUNCED = (TaskStatus.COMPLETED, TaskStatus.FAILED)  # a cancelled run is skipped by the cancel set


async def announce_finished(publisher: Publisher, events: Sequence[TaskEvent], ended: Sequence[Ended]) -> None:
    runs_of = {e.task_id: e.run for e in events}
    runs = {t.task_id: runs_of[t.task_id] for t in ended if t.status in _ANNOUNCED and t.task_id in runs_of}
    if not runs:
        return
    body = FinishedRuns(runs=runs).model_dump_json().encode()
    # Best effort, like cancels: a worker that misses it runs the copy, and the
    # frozen record ignores that run's events (decision 0071 says why that is enough).
    with contextlib.suppress(Unavailable):
        await publisher.publish(CONTROL_EXCHANGE, "", body, persistent=False, mandatory=False)
