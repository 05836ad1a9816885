"""The code is strictly typed (STYLE.md, principle 9): the contracts every process shares,
and the processes themselves."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]


@pytest.mark.parametrize("package", ["shared", "services"])
def test_passes_mypy_strict(package: str) -> None:
    run = subprocess.run([sys.executable, "-m", "mypy", "--strict", package], cwd=ROOT, capture_output=True,
                         text=True, timeout=600, check=False)
    assert run.returncode == 0, run.stdout[-5000:] + run.stderr[-2000:]
