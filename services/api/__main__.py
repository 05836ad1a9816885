"""`python -m services.api`: the REST api on PORT (default 8084)."""

from __future__ import annotations

from aiohttp import web
from loguru import logger

from services.api.app import create_app
from services.api.resources import StartupRefused
from shared.logging import configure_logging
from shared.runtime import install_event_loop_policy
from shared.security.startup_checks import enforce
from shared.settings import Settings


def main() -> None:
    settings = Settings.from_env()
    configure_logging(settings.service, process="api", secrets=settings.secret_values())
    enforce(settings, "api")
    install_event_loop_policy()
    host, port = settings.service.http_host, settings.service.port
    if not settings.service.is_production:
        logger.warning("development mode: listening on {} only", host)
    if not settings.auth_required:
        logger.warning("AUTH NOT REQUIRED: any caller that reaches {}:{} may submit, read and cancel every task "
                       "(set AUTH_REQUIRED=true to enforce API keys)", host, port)
    logger.info("api listening on http://{}:{}", host, port)
    try:
        run(settings, host, port)
    except StartupRefused as exc:
        logger.error("refusing to start: {}", exc)
        raise SystemExit(2) from None


def run(settings: Settings, host: str, port: int) -> None:
    web.run_app(
        create_app(settings),
        host=host,
        port=port,
        access_log=None,
        print=None,
        shutdown_timeout=settings.worker.shutdown_grace_seconds,
        # Also ends slow-header (slowloris) connections: no request has started on them.
        keepalive_timeout=settings.api.keepalive_timeout_seconds,
        handle_signals=True,
    )


if __name__ == "__main__":
    main()
