"""The code is strictly typed (STYLE.md, principle 9): the contracts every process shares,
and the processes themselves."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def test_passes_mypy_strict() -> None:
    # One run: services imports shared, so checking them apart analysed shared twice.
    run = subprocess.run([sys.executable, "-m", "mypy", "--strict", "shared", "services"], cwd=ROOT,
                         capture_output=True, text=True, timeout=600, check=False)
    assert run.returncode == 0, run.stdout[-5000:] + run.stderr[-2000:]
