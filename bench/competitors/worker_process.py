"""A framework's worker as a child process of a runner: started, watched for
memory (the process and its children), stopped."""

from __future__ import annotations

import signal
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path

import orjson
import psutil


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

    def stop(self) -> None:
        if self.popen.poll() is None:
            self.popen.send_signal(signal.SIGTERM)
            try:
                self.popen.wait(timeout=20)
            except subprocess.TimeoutExpired:
                self.popen.kill()
                self.popen.wait(timeout=10)
        self._log.close()


def emit(*, count: int, seconds: float, ready_seconds: float, worker: WorkerProcess) -> None:
    """The runner's answer: one JSON line on stdout."""
    sys.stdout.write(orjson.dumps({"count": count, "seconds": seconds, "ready_seconds": ready_seconds,
                                   "peak_rss": worker.peak_rss, "processes": worker.processes}).decode() + "\n")
    sys.stdout.flush()
