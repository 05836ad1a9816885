"""The task-length limits are stated once (docs/task-length-limits.md) and every
other place agrees with that table and with shared/task_limits.py."""

from __future__ import annotations

import re
from pathlib import Path

import yaml

from shared.settings import ApiSettings
from shared.task_limits import (
    OUTCOME_PUBLISH_MAX_SECONDS,
    STOCK_CONSUMER_TIMEOUT_MS,
    TIMEOUT_SECONDS_CEILING,
    largest_task_timeout,
    smallest_consumer_timeout_ms,
)
from shared.task_request import RequestLimits

ROOT = Path(__file__).resolve().parents[1]
DOC = ROOT / "docs" / "task-length-limits.md"


def _number(text: str) -> int:
    return int(re.search(r"[\d,]+", text).group().replace(",", ""))  # type: ignore[union-attr]


def _table() -> dict[str, tuple[int, int]]:
    """Row label -> (consumer_timeout ms, largest timeout_seconds)."""
    rows = {}
    for line in DOC.read_text().splitlines():
        cells = [c.strip() for c in line.strip().strip("|").split("|")]
        if len(cells) == 4 and " ms" in cells[1]:
            rows[cells[0]] = (_number(cells[1]), _number(cells[2]))
    return rows


def _rabbitmq_conf_consumer_timeout() -> int:
    conf = (ROOT / "deploy" / "rabbitmq" / "rabbitmq.conf").read_text()
    [value] = re.findall(r"^consumer_timeout\s*=\s*(\d+)", conf, re.MULTILINE)
    return int(value)


def test_every_row_of_the_table_follows_the_formula() -> None:
    rows = _table()
    assert len(rows) == 3, rows
    for label, (consumer_timeout_ms, largest) in rows.items():
        assert largest == largest_task_timeout(consumer_timeout_ms), label
        assert smallest_consumer_timeout_ms(largest) <= consumer_timeout_ms, label
    assert largest_task_timeout(10**12) == TIMEOUT_SECONDS_CEILING
    assert str(OUTCOME_PUBLISH_MAX_SECONDS) in DOC.read_text()


def test_the_stock_row_is_the_default_and_the_deploy_rows_are_the_deploy_files() -> None:
    rows = list(_table().values())
    stock, deploy, cluster = rows
    assert stock == (STOCK_CONSUMER_TIMEOUT_MS, ApiSettings().max_task_timeout_seconds)
    assert RequestLimits(0, 0).max_timeout_seconds == stock[1]
    assert deploy[0] == cluster[0] == _rabbitmq_conf_consumer_timeout()
    compose = yaml.safe_load((ROOT / "docker-compose.yml").read_text())
    assert int(compose["services"]["api"]["environment"]["MAX_TASK_TIMEOUT"]) == deploy[1] == cluster[1]


def test_readme_env_example_and_decision_0021_state_the_same_figures() -> None:
    stock, deploy, _ = _table().values()
    # The README's operator reference lives in docs/delivery.md since the README was split (issue 12).
    readme = (ROOT / "docs" / "delivery.md").read_text()
    env_example = (ROOT / ".env.example").read_text()
    decision = (ROOT / "docs" / "decisions" / "0021-rabbitmq-settings.md").read_text()
    assert f"{stock[1]:,} s" in readme and f"{deploy[1]:,} s" in readme
    assert re.search(rf"^MAX_TASK_TIMEOUT={stock[1]}\s", env_example, re.MULTILINE)
    assert str(deploy[1]) in env_example
    assert f"{stock[1]:,} s" in decision and f"{deploy[1]:,} s" in decision
    for text in (readme, env_example, decision, (ROOT / "deploy/rabbitmq/rabbitmq.conf").read_text()):
        assert "task-length-limits.md" in text
        assert not re.search(r"\b1,?740 s", text), "the old limit, which ignored the outcome publishes"
