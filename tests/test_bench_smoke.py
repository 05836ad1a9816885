"""The benchmark harness runs end to end at tiny sizes, so `make bench` cannot
rot. Nothing here judges speed: benchmarks are not timed tests."""

from __future__ import annotations

import importlib.util
import re
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="module")
def quick_results(tmp_path_factory: pytest.TempPathFactory) -> str:
    output = tmp_path_factory.mktemp("bench") / "BENCHMARKS.md"
    run = subprocess.run([sys.executable, "-m", "bench", "--quick", "--output", str(output)],
                         cwd=ROOT, capture_output=True, text=True, timeout=240, check=False)
    assert run.returncode == 0, run.stdout[-3000:] + run.stderr[-3000:]
    return output.read_text()


def _row(results: str, starts_with: str) -> str:
    rows = [line for line in results.splitlines() if line.startswith(f"| {starts_with}")]
    assert rows, f"no row starting with {starts_with!r} in:\n{results}"
    return rows[0]


def test_the_quick_run_writes_every_section_with_the_machine(quick_results: str) -> None:
    for title in ("1. Ingress", "2. End to end", "3. Latency", "4. Resources", "5. Pipeline"):
        assert f"**{title}" in quick_results
    assert re.search(r"machine: \d+ cores .*GiB memory", quick_results)
    assert "bench:results:start" in quick_results and "bench:results:end" in quick_results


def test_our_fleet_completed_every_task_and_was_measured(quick_results: str) -> None:
    for label in ("ours, over REST (", "ours, over tm.submit ("):
        row = _row(quick_results, label)
        assert re.search(r"\| [\d,]+ tasks/s", row) and "time limit" not in row and "failed" not in row \
            and "refused" not in row, row
    assert re.search(r"api, concurrency 10 \| [\d,]+ req/s, .*, 0 errors", quick_results)
    assert "failed:" not in _row(quick_results, "raw limit")
    for process in ("api", "dispatcher", "worker"):
        assert re.search(rf"\| {process}: start to ready \| \d+\.\d\d s", quick_results)


@pytest.mark.parametrize(("label", "package"), [("Celery", "celery"), ("Dramatiq", "dramatiq")])
def test_a_competitor_is_measured_or_skipped_with_the_reason(quick_results: str, label: str, package: str) -> None:
    row = _row(quick_results, label)
    if importlib.util.find_spec(package) is None:
        assert f"skipped: {package} is not installed" in row, row
    else:
        assert re.search(r"\| [\d,]+ tasks/s; CPU per task [\d,]+ µs \(workers .*; worker ready in", row), row


def test_the_pipeline_section_is_pending_until_its_module_exists(quick_results: str) -> None:
    section = quick_results.split("| **5. Pipeline", 1)[1].split("\n| **", 1)[0]
    if not (ROOT / "bench" / "pipeline.py").exists():
        assert "pending: pipeline not merged" in section, section
    else:
        assert "pending" not in section, section
