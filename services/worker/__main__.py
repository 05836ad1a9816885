"""`python -m services.worker --stage NAME`: one stage per process."""

from __future__ import annotations

import argparse
import asyncio

from services.worker.runtime import run_worker
from services.worker.stages import known_stages
from shared.logging import configure_logging
from shared.runtime import install_event_loop_policy
from shared.security.startup_checks import enforce
from shared.settings import Settings


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="python -m services.worker", description=__doc__)
    parser.add_argument("--stage", default="default", choices=known_stages(), help="the stage this process runs")
    args = parser.parse_args(argv)
    settings = Settings.from_env()
    configure_logging(settings.service, process=f"worker:{args.stage}", secrets=settings.secret_values())
    enforce(settings, "worker")
    install_event_loop_policy()
    asyncio.run(run_worker(settings, args.stage))


if __name__ == "__main__":
    main()
