"""`taskmgr up`: the whole fleet as child processes, supervised like a
process manager. A child that dies is restarted with backoff; Ctrl-C or
SIGTERM stops the api first (no new work), then the workers (in-flight tasks
finish within the grace period or are requeued), then the dispatcher (which
records the last events)."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from dataclasses import dataclass, field

from loguru import logger

RESTART_BACKOFF_MAX_SECONDS = 30.0
HEALTHY_AFTER_SECONDS = 60.0


@dataclass
class Child:
    name: str
    argv: list[str]
    env: dict[str, str]
    process: subprocess.Popen[bytes] | None = None
    started_at: float = 0.0
    failures: int = 0
    restart_at: float | None = None
    restarts: int = field(default=0)

    def start(self) -> None:
        # Own process group: a terminal's Ctrl-C reaches only the supervisor, which
        # then stops the children in order; the children die with the supervisor.
        self.process = subprocess.Popen(self.argv, env=self.env, process_group=0, preexec_fn=_die_with_parent)  # noqa: PLW1509 - the supervisor starts no threads
        self.started_at = time.monotonic()
        self.restart_at = None
        logger.info("started {} (pid {})", self.name, self.process.pid)

    @property
    def running(self) -> bool:
        return self.process is not None and self.process.poll() is None


class Supervisor:
    def __init__(self, children: list[Child], *, grace_seconds: float) -> None:
        self.children = children
        self.grace_seconds = grace_seconds
        self._stopping = False

    def run(self) -> int:
        signal.signal(signal.SIGINT, self._request_stop)
        signal.signal(signal.SIGTERM, self._request_stop)
        for child in self.children:
            child.start()
        while not self._stopping:
            self._supervise()
            time.sleep(0.2)
        self.stop()
        return 0

    def _request_stop(self, signum: int, _frame: object) -> None:
        if not self._stopping:
            logger.info("received {}; stopping the fleet gracefully", signal.Signals(signum).name)
        self._stopping = True

    def _supervise(self) -> None:
        now = time.monotonic()
        for child in self.children:
            if child.running:
                if child.failures and now - child.started_at > HEALTHY_AFTER_SECONDS:
                    child.failures = 0
                continue
            if child.restart_at is None:
                code = child.process.returncode if child.process else None
                child.failures += 1
                delay = min(RESTART_BACKOFF_MAX_SECONDS, 0.5 * 2 ** (child.failures - 1))
                child.restart_at = now + delay
                logger.error("{} exited with code {}; restarting in {:.1f}s (failure {} in a row)",
                             child.name, code, delay, child.failures)
            elif now >= child.restart_at:
                child.restarts += 1
                child.start()

    def stop(self) -> None:
        groups = [
            [c for c in self.children if c.name == "api"],
            [c for c in self.children if c.name.startswith("worker")],
            [c for c in self.children if c.name == "dispatcher"],
        ]
        for group in groups:
            self._terminate(group)

    def _terminate(self, group: list[Child]) -> None:
        live = [c for c in group if c.running]
        for child in live:
            assert child.process is not None
            child.process.send_signal(signal.SIGTERM)
        deadline = time.monotonic() + self.grace_seconds + 5
        for child in live:
            assert child.process is not None
            try:
                child.process.wait(timeout=max(0.1, deadline - time.monotonic()))
                logger.info("{} stopped", child.name)
            except subprocess.TimeoutExpired:
                logger.warning("{} did not stop within the grace period; killing it", child.name)
                child.process.kill()
                child.process.wait()


def _die_with_parent() -> None:
    """Linux: deliver SIGTERM to this child when the supervisor dies, even by SIGKILL."""
    if sys.platform.startswith("linux"):
        import ctypes

        pr_set_pdeathsig = 1
        ctypes.CDLL("libc.so.6", use_errno=True).prctl(pr_set_pdeathsig, signal.SIGTERM)


def fleet(stages: tuple[str, ...], *, metrics_port_base: int, env: dict[str, str] | None = None) -> list[Child]:
    """The children of `taskmgr up`: api, one worker per stage, dispatcher."""
    base_env = dict(os.environ if env is None else env)
    python = sys.executable
    children = [Child("api", [python, "-m", "services.api"], base_env)]
    for i, stage in enumerate(stages, start=1):
        port = metrics_port_base + i if metrics_port_base else 0
        children.append(
            Child(f"worker:{stage}", [python, "-m", "services.worker", "--stage", stage],
                  {**base_env, "METRICS_PORT": str(port)})
        )
    children.append(Child("dispatcher", [python, "-m", "services.dispatcher"],
                          {**base_env, "METRICS_PORT": str(metrics_port_base)}))
    return children
