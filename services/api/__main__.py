"""`python -m services.api`: the REST api on PORT (default 8084)."""

from __future__ import annotations

from aiohttp import web
from loguru import logger

from services.api.app import create_app
from shared.logging import configure_logging
from shared.runtime import install_event_loop_policy
from shared.settings import Settings


def main() -> None:
    settings = Settings.from_env()
    configure_logging(settings.service, process="api", secrets=settings.secret_values())
    install_event_loop_policy()
    host, port = settings.service.http_host, settings.service.port
    if not settings.service.is_production:
        logger.warning("development mode: listening on {} only", host)
    logger.info("api listening on http://{}:{}", host, port)
    web.run_app(
        create_app(settings),
        host=host,
        port=port,
        access_log=None,
        print=None,
        shutdown_timeout=settings.worker.shutdown_grace_seconds,
        handle_signals=True,
    )


if __name__ == "__main__":
    main()
