"""Runs Dramatiq's worker, enqueues N no-op messages, waits until all N ran.
`python -m bench.competitors.dramatiq_bench --n N`"""

from __future__ import annotations

import argparse
import os
import sys
import time
from pathlib import Path

from bench.competitors.dramatiq_app import COUNTER, noop
from bench.competitors.worker_process import WorkerProcess, drain_and_emit

WARMUP = 20


def completed() -> int:
    try:
        return os.path.getsize(COUNTER)
    except FileNotFoundError:
        return 0


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--n", type=int, required=True)
    parser.add_argument("--timeout", type=float, required=True)
    args = parser.parse_args()
    if os.path.exists(COUNTER):
        os.remove(COUNTER)

    worker = WorkerProcess(
        [sys.executable, "-m", "dramatiq", "bench.competitors.dramatiq_app", "--processes", "2", "--threads", "8"],
        Path(os.environ["BENCH_LOG_DIR"]) / "dramatiq-worker.log",
    )
    try:
        for _ in range(WARMUP):  # also declares the queue
            noop.send()
        worker.wait_until(lambda: completed() >= WARMUP, timeout=60)
        ready_seconds = time.perf_counter() - worker.started  # start to first work done

        drain_and_emit(worker, send=noop.send, done=completed, already=WARMUP, n=args.n, timeout=args.timeout,
                       poll=0.02, ready_seconds=ready_seconds)
    finally:
        worker.stop()


if __name__ == "__main__":
    main()
