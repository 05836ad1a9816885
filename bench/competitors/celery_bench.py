"""Runs Celery's worker, submits N no-op tasks, waits until N results are
SUCCESS in its PostgreSQL backend. `python -m bench.competitors.celery_bench --n N`"""

from __future__ import annotations

import argparse
import os
import sys
import time
from pathlib import Path

import psycopg2

from bench.competitors.celery_app import app, noop
from bench.competitors.worker_process import WorkerProcess, drain_and_emit

WARMUP = 20


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--n", type=int, required=True)
    parser.add_argument("--timeout", type=float, required=True)
    args = parser.parse_args()

    # Create the result tables here: two prefork children would race to do it.
    app.backend.ResultSession().close()
    db = psycopg2.connect(os.environ["BENCH_DATABASE_URL"])
    db.autocommit = True

    def succeeded() -> int:
        with db.cursor() as cur:
            cur.execute("SELECT count(*) FROM celery_taskmeta WHERE status = 'SUCCESS'")
            return int(cur.fetchone()[0])

    worker = WorkerProcess(
        [sys.executable, "-m", "celery", "-A", "bench.competitors.celery_app", "worker", "--pool", "prefork",
         "--concurrency", "2", "--without-gossip", "--without-mingle", "--without-heartbeat", "--loglevel", "WARNING"],
        Path(os.environ["BENCH_LOG_DIR"]) / "celery-worker.log",
    )
    try:
        worker.wait_until(lambda: bool(app.control.ping(timeout=0.2)), timeout=60)
        ready_seconds = time.perf_counter() - worker.started
        for _ in range(WARMUP):
            noop.delay()
        worker.wait_until(lambda: succeeded() >= WARMUP, timeout=60)

        drain_and_emit(worker, send=noop.delay, done=succeeded, already=WARMUP, n=args.n, timeout=args.timeout,
                       poll=0.1, ready_seconds=ready_seconds)
    finally:
        worker.stop()
        db.close()


if __name__ == "__main__":
    main()
