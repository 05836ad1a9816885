"""py-spy on our processes while they work (`python -m bench --profile DIR`):
one collapsed-stack file per process (`DIR/<name>.folded`, the input of
flamegraph.pl and speedscope) and a summary of where the time goes."""

from __future__ import annotations

import shutil
import signal
import subprocess
import sys
from collections import Counter
from pathlib import Path

from bench.fleet import FleetProcess

RATE = 100  # samples per second; --nonblocking keeps py-spy from pausing the process


class Profiler:
    def __init__(self, directory: Path) -> None:
        self.directory = directory
        self._running: list[subprocess.Popen[bytes]] = []

    @staticmethod
    def executable() -> str | None:
        """py-spy from the bench extra (beside this interpreter) or from PATH."""
        beside = Path(sys.executable).parent / "py-spy"
        return str(beside) if beside.exists() else shutil.which("py-spy")

    @classmethod
    def available(cls) -> bool:
        return cls.executable() is not None

    def start(self, processes: list[FleetProcess]) -> None:
        self.directory.mkdir(parents=True, exist_ok=True)
        for process in processes:
            self._running.append(subprocess.Popen(
                [str(self.executable()), "record", "--pid", str(process.pid), "--rate", str(RATE), "--nonblocking",
                 "--format", "raw", "--output", str(self.directory / f"{process.name}.folded")],
                stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
            ))

    def stop(self) -> None:
        for proc in self._running:
            proc.send_signal(signal.SIGINT)  # py-spy writes its file on SIGINT
        for proc in self._running:
            try:
                proc.wait(timeout=30)
            except subprocess.TimeoutExpired:
                proc.kill()
        self._running.clear()


def summarize(folded: Path, top: int = 25) -> str:
    """Self and inclusive sample shares per function of one collapsed-stack file."""
    own: Counter[str] = Counter()
    inclusive: Counter[str] = Counter()
    total = 0
    for line in folded.read_text().splitlines():
        stack, _, count_text = line.rpartition(" ")
        if not stack:
            continue
        count = int(count_text)
        frames = stack.split(";")
        total += count
        own[frames[-1]] += count
        for frame in set(frames):
            inclusive[frame] += count
    if not total:
        return f"{folded.name}: no samples"
    lines = [f"{folded.name}: {total} samples", "  self%  incl%  function"]
    for frame, count in own.most_common(top):
        lines.append(f"  {100 * count / total:5.1f}  {100 * inclusive[frame] / total:5.1f}  {frame}")
    return "\n".join(lines)


if __name__ == "__main__":
    import sys

    for path in sys.argv[1:]:
        print(summarize(Path(path)))
