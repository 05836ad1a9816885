"""Start the real processes (api, workers, dispatcher, or `taskmgr up`) for a test."""

from __future__ import annotations

import asyncio
import os
import signal
import subprocess
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path

import aiohttp

from tests.support.environment import TestEnvironment, free_port


@dataclass
class Process:
    name: str
    argv: list[str]
    env: dict[str, str]
    log_path: Path
    ready_url: str | None
    popen: subprocess.Popen[bytes] | None = None

    def start(self) -> None:
        log = open(self.log_path, "ab")  # noqa: SIM115 - closed with the process
        self.popen = subprocess.Popen(self.argv, env=self.env, stdout=log, stderr=subprocess.STDOUT,
                                      start_new_session=True)

    @property
    def pid(self) -> int:
        assert self.popen is not None
        return self.popen.pid

    def alive(self) -> bool:
        return self.popen is not None and self.popen.poll() is None

    def signal(self, sig: int) -> None:
        if self.alive():
            assert self.popen is not None
            self.popen.send_signal(sig)

    def kill(self) -> None:
        self.signal(signal.SIGKILL)
        if self.popen is not None:
            self.popen.wait(timeout=10)

    def stop(self, timeout: float = 20) -> int | None:
        if self.popen is None:
            return None
        self.signal(signal.SIGTERM)
        try:
            return self.popen.wait(timeout=timeout)
        except subprocess.TimeoutExpired:
            self.popen.kill()
            return self.popen.wait(timeout=10)

    def log_tail(self, lines: int = 40) -> str:
        try:
            return "\n".join(self.log_path.read_text(errors="replace").splitlines()[-lines:])
        except FileNotFoundError:
            return ""


@dataclass
class Fleet:
    environment: TestEnvironment
    log_dir: Path
    api_port: int = field(default_factory=free_port)
    processes: list[Process] = field(default_factory=list)

    @property
    def api_url(self) -> str:
        return f"http://127.0.0.1:{self.api_port}"

    def env(self, **overrides: str) -> dict[str, str]:
        return self.environment.with_env(**{"PORT": str(self.api_port), "API_URL": self.api_url, **overrides})

    def add(self, name: str, argv: list[str], *, ready_url: str | None, **env: str) -> Process:
        process = Process(name, argv, self.env(**env), self.log_dir / f"{name}.log", ready_url)
        self.processes.append(process)
        return process

    def add_api(self, name: str = "api", port: int | None = None, **env: str) -> Process:
        """The fleet's api on `api_port`, or a replica on a `port` of its own."""
        port = port or self.api_port
        return self.add(name, [sys.executable, "-m", "services.api"],
                        ready_url=f"http://127.0.0.1:{port}/health/ready", METRICS_PORT="0", PORT=str(port), **env)

    def add_worker(self, stage: str = "default", name: str | None = None, **env: str) -> Process:
        port = free_port()
        return self.add(name or f"worker-{stage}", [sys.executable, "-m", "services.worker", "--stage", stage],
                        ready_url=f"http://127.0.0.1:{port}/health/ready", METRICS_PORT=str(port), **env)

    def add_dispatcher(self, name: str = "dispatcher", **env: str) -> Process:
        port = free_port()
        return self.add(name, [sys.executable, "-m", "services.dispatcher"],
                        ready_url=f"http://127.0.0.1:{port}/health/ready", METRICS_PORT=str(port), **env)

    async def start(self, *processes: Process, timeout: float = 30) -> None:
        targets = list(processes) or self.processes
        for process in targets:
            process.start()
        await asyncio.gather(*(wait_ready(p, timeout) for p in targets if p.ready_url))

    def stop(self) -> None:
        # api first, dispatcher last: the order `taskmgr up` uses.
        order = sorted(self.processes, key=lambda p: {"api": 0, "dispatcher": 2}.get(p.name.split("-")[0], 1))
        for process in order:
            started = time.monotonic()
            process.stop()
            if time.monotonic() - started > 5:
                print(f"slow stop: {process.name} took {time.monotonic() - started:.1f}s\n{process.log_tail(15)}")

    def process(self, name: str) -> Process:
        return next(p for p in self.processes if p.name == name)

    def logs(self) -> str:
        return "\n".join(f"--- {p.name} ---\n{p.log_tail()}" for p in self.processes)


async def wait_ready(process: Process, timeout: float) -> None:
    deadline = time.monotonic() + timeout
    async with aiohttp.ClientSession() as session:
        while time.monotonic() < deadline:
            if not process.alive():
                raise RuntimeError(f"{process.name} exited early:\n{process.log_tail()}")
            try:
                async with session.get(process.ready_url, timeout=aiohttp.ClientTimeout(total=2)) as r:
                    if r.status == 200:
                        return
            except (aiohttp.ClientError, TimeoutError, OSError):
                pass
            await asyncio.sleep(0.1)
    raise TimeoutError(f"{process.name} not ready after {timeout}s:\n{process.log_tail()}")


def standard(fleet: Fleet, **worker_env: str) -> None:
    """The usual fleet: api, one default worker (with `worker_env`), dispatcher."""
    fleet.add_api()
    fleet.add_worker(**worker_env)
    fleet.add_dispatcher()


def one_slot(fleet: Fleet) -> None:
    """A worker that runs one task at a time, so the rest visibly wait in the queue."""
    standard(fleet, WORKER_POOL_SIZE="1")


def log_dir(base: Path) -> Path:
    path = base / f"logs-{os.getpid()}"
    path.mkdir(parents=True, exist_ok=True)
    return path
