"""A framework's worker as a child process of a runner: started, watched for
memory (the process and its children), stopped."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path

import orjson
import psutil

from bench.fleet import server_cpu_seconds


class WorkerProcess:
    def __init__(self, argv: list[str], log_path: Path) -> None:
        self._log = open(log_path, "ab")  # noqa: SIM115 - closed in stop()
        self.started = time.perf_counter()
        self.popen = subprocess.Popen(argv, stdout=self._log, stderr=subprocess.STDOUT, start_new_session=True)
        self.peak_rss = 0
        self.processes = 1

    def sample(self) -> None:
        try:
            proc = psutil.Process(self.popen.pid)
            family = [proc, *proc.children(recursive=True)]
            self.processes = len(family)
            self.peak_rss = max(self.peak_rss, sum(p.memory_info().rss for p in family))
        except psutil.Error:
            pass

    def wait_until(self, condition: Callable[[], bool], timeout: float, poll: float = 0.05) -> bool:
        deadline = time.perf_counter() + timeout
        while time.perf_counter() < deadline:
            if self.popen.poll() is not None:
                raise RuntimeError(f"the worker exited ({self.popen.returncode})")
            if condition():
                return True
            self.sample()
            time.sleep(poll)
        return condition()

    def cpu_seconds(self) -> float:
        """CPU time so far of the worker and its children (the pool)."""
        try:
            proc = psutil.Process(self.popen.pid)
            return sum(p.cpu_times().user + p.cpu_times().system for p in (proc, *proc.children(recursive=True)))
        except psutil.Error:
            return 0.0

    def stop(self) -> None:
        if self.popen.poll() is None:
            self.popen.send_signal(signal.SIGTERM)
            try:
                self.popen.wait(timeout=20)
            except subprocess.TimeoutExpired:
                self.popen.kill()
                self.popen.wait(timeout=10)
        self._log.close()


class CpuWindow:
    """Service-side CPU of a measured window: the framework's worker processes,
    PostgreSQL backends of the run's database, the RabbitMQ node. The client
    that enqueues is not counted (for our fleet the api is, which favours them)."""

    def __init__(self, worker: WorkerProcess, database: str) -> None:
        self._worker, self._database = worker, database
        self._before = {"worker": worker.cpu_seconds(), **server_cpu_seconds(database)}

    def seconds(self) -> dict[str, float]:
        after = {"worker": self._worker.cpu_seconds(), **server_cpu_seconds(self._database)}
        return {name: after[name] - self._before[name] for name in after}


def drain_and_emit(worker: WorkerProcess, *, send: Callable[[], object], done: Callable[[], int], already: int,
                   n: int, timeout: float, poll: float, ready_seconds: float) -> None:
    """The measured window of a competitor: enqueue `n` no-ops, wait until
    `done()` counts them beyond the `already` done (warm-up), emit the answer."""
    window = CpuWindow(worker, os.environ["BENCH_DATABASE_NAME"])
    started = time.perf_counter()
    for _ in range(n):
        send()
    worker.wait_until(lambda: done() >= already + n, timeout=timeout, poll=poll)
    elapsed = time.perf_counter() - started
    emit(count=done() - already, seconds=elapsed, ready_seconds=ready_seconds, worker=worker, cpu=window.seconds())


def emit(*, count: int, seconds: float, ready_seconds: float, worker: WorkerProcess, cpu: dict[str, float]) -> None:
    """The runner's answer: one JSON line on stdout."""
    sys.stdout.write(orjson.dumps({"count": count, "seconds": seconds, "ready_seconds": ready_seconds,
                                   "peak_rss": worker.peak_rss, "processes": worker.processes,
                                   "cpu_seconds": cpu}).decode() + "\n")
    sys.stdout.flush()
