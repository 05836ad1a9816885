"""`python -m services.dispatcher`: task state writer and callback sender."""

from __future__ import annotations

import asyncio

from services.dispatcher.runtime import run_dispatcher
from shared.logging import configure_logging
from shared.runtime import install_event_loop_policy
from shared.security.startup_checks import enforce
from shared.settings import Settings


def main() -> None:
    settings = Settings.from_env()
    configure_logging(settings.service, process="dispatcher", secrets=settings.secret_values())
    enforce(settings, "dispatcher")
    install_event_loop_policy()
    asyncio.run(run_dispatcher(settings))


if __name__ == "__main__":
    main()
