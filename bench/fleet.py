"""Our three processes as the benchmark runs them: started one at a time so
each start-to-ready time is its own, watched for RSS while they work."""

from __future__ import annotations

import asyncio
import contextlib
import signal
import subprocess
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path

import aiohttp
import psutil

from bench.environment import BenchEnvironment
from tests.support.environment import free_port

READY_POLL_SECONDS = 0.01  # start-to-ready is reported in milliseconds
MB = 1024 * 1024


@dataclass
class FleetProcess:
    name: str
    argv: list[str]
    env: dict[str, str]
    ready_url: str
    log_path: Path
    popen: subprocess.Popen[bytes] | None = None
    ready_seconds: float | None = None  # from spawn to the first 200 on /health/ready
    idle_rss: int | None = None
    idle_uss: int | None = None  # memory only this process holds (no shared libraries)
    peak_rss: int = 0

    async def start(self, timeout: float = 30.0) -> float:
        # Blocking calls in a coroutine, on purpose: both return at once, and the
        # clock must start right before the spawn.
        log = open(self.log_path, "ab")  # noqa: SIM115, ASYNC230 - lives as long as the process
        started = time.perf_counter()
        self.popen = subprocess.Popen(self.argv, env=self.env, stdout=log, stderr=subprocess.STDOUT,  # noqa: ASYNC220
                                      start_new_session=True)
        deadline = started + timeout
        async with aiohttp.ClientSession() as session:
            while time.perf_counter() < deadline:
                if self.popen.poll() is not None:
                    raise RuntimeError(f"{self.name} exited early:\n{self.log_tail()}")
                with contextlib.suppress(aiohttp.ClientError, OSError, TimeoutError):
                    async with session.get(self.ready_url, timeout=aiohttp.ClientTimeout(total=1)) as response:
                        if response.status == 200:
                            self.ready_seconds = time.perf_counter() - started
                            return self.ready_seconds
                await asyncio.sleep(READY_POLL_SECONDS)
        raise TimeoutError(f"{self.name} not ready after {timeout}s:\n{self.log_tail()}")

    @property
    def pid(self) -> int:
        assert self.popen is not None
        return self.popen.pid

    def rss(self) -> int:
        """Resident memory of the process and any children it started (CPU pool)."""
        try:
            proc = psutil.Process(self.pid)
            return proc.memory_info().rss + sum(c.memory_info().rss for c in proc.children(recursive=True))
        except psutil.Error:
            return 0

    def uss(self) -> int:
        try:
            proc = psutil.Process(self.pid)
            return sum(p.memory_full_info().uss for p in (proc, *proc.children(recursive=True)))
        except psutil.Error:
            return 0

    def read_idle_memory(self) -> None:
        self.idle_rss, self.idle_uss = self.rss(), self.uss()

    def cpu_seconds(self) -> float:
        """User + system CPU time of the process and its children so far."""
        try:
            proc = psutil.Process(self.pid)
            return sum(_cpu(p) for p in (proc, *proc.children(recursive=True)))
        except psutil.Error:
            return 0.0

    def stop(self, timeout: float = 20.0) -> None:
        if self.popen is None or self.popen.poll() is not None:
            return
        self.popen.send_signal(signal.SIGTERM)
        try:
            self.popen.wait(timeout=timeout)
        except subprocess.TimeoutExpired:
            self.popen.kill()
            self.popen.wait(timeout=10)

    def log_tail(self, lines: int = 30) -> str:
        with contextlib.suppress(FileNotFoundError):
            return "\n".join(self.log_path.read_text(errors="replace").splitlines()[-lines:])
        return ""


def _cpu(process: psutil.Process) -> float:
    times = process.cpu_times()
    return float(times.user + times.system)


def server_cpu_seconds(database: str) -> dict[str, float]:
    """CPU time so far of PostgreSQL backends serving `database` (ours alone) and
    of the RabbitMQ node (shared by everyone on this machine)."""
    totals = {"postgres": 0.0, "rabbitmq": 0.0}
    for proc in psutil.process_iter(["name", "cmdline"]):
        try:
            name = proc.info["name"] or ""
            cmdline = " ".join(proc.info["cmdline"] or ())
            if "beam" in name and "-s rabbit boot" in cmdline:  # the node, not a rabbitmqctl run
                totals["rabbitmq"] += _cpu(proc)
            elif name.startswith("postgres") and f" {database} " in cmdline:
                totals["postgres"] += _cpu(proc)
        except psutil.Error:
            continue
    return totals


@dataclass
class Fleet:
    environment: BenchEnvironment
    log_dir: Path
    api_port: int = field(default_factory=free_port)
    processes: dict[str, FleetProcess] = field(default_factory=dict)
    _sampler: asyncio.Task[None] | None = None

    @property
    def api_url(self) -> str:
        return f"http://127.0.0.1:{self.api_port}"

    def _add(self, name: str, module: str, ready_url: str, *args: str, **env: str) -> FleetProcess:
        process = FleetProcess(
            name, [sys.executable, "-m", module, *args],
            self.environment.process_env(PORT=str(self.api_port), API_URL=self.api_url, **env),
            ready_url, self.log_dir / f"{name}.log",
        )
        self.processes[name] = process
        return process

    def api(self, **env: str) -> FleetProcess:
        return self._add("api", "services.api", f"{self.api_url}/health/ready", METRICS_PORT="0", **env)

    def dispatcher(self, **env: str) -> FleetProcess:
        port = free_port()
        return self._add("dispatcher", "services.dispatcher", f"http://127.0.0.1:{port}/health/ready",
                         METRICS_PORT=str(port), **env)

    def worker(self, stage: str = "default", **env: str) -> FleetProcess:
        """The default stage's worker is "worker" in the table; another stage's is "worker-<stage>"."""
        port = free_port()
        name = "worker" if stage == "default" else f"worker-{stage}"
        return self._add(name, "services.worker", f"http://127.0.0.1:{port}/health/ready",
                         "--stage", stage, METRICS_PORT=str(port), **env)

    def start_sampling(self, interval: float = 0.1) -> None:
        """Track each running process's peak RSS from now on."""
        for process in self.processes.values():
            process.peak_rss = 0

        async def sample() -> None:
            while True:
                for process in self.processes.values():
                    if process.popen is not None and process.popen.poll() is None:
                        process.peak_rss = max(process.peak_rss, process.rss())
                await asyncio.sleep(interval)

        self._sampler = asyncio.create_task(sample(), name="rss-sampler")

    async def stop_sampling(self) -> None:
        if self._sampler is not None:
            self._sampler.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._sampler
            self._sampler = None

    def cpu_seconds(self) -> dict[str, float]:
        """Per process of ours, and per server (see `server_cpu_seconds`)."""
        found = {name: p.cpu_seconds() for name, p in self.processes.items() if p.popen is not None}
        return {**found, **server_cpu_seconds(self.environment.postgres.db)}

    def stop(self) -> None:
        # api first, dispatcher last: the order `taskmgr up` uses.
        order = {"api": 0, "worker": 1, "dispatcher": 2}
        for process in sorted(self.processes.values(), key=lambda p: order.get(p.name, 1)):
            process.stop()
