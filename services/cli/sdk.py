"""The CLI's commands built on the Python SDK (`clients/python`, `tmclient`):
`submit --wait`, `ingest`, `top`."""

from __future__ import annotations

import asyncio
import sys
from collections.abc import Awaitable, Callable
from pathlib import Path
from types import ModuleType
from typing import Any

from shared.settings import Settings

# A source checkout runs the SDK from its tree when it is not installed.
_SOURCE_TREE = Path(__file__).resolve().parents[2] / "clients" / "python"


def _import_sdk() -> tuple[ModuleType, ModuleType]:
    try:
        import tmclient
        import tmclient.console
    except ImportError:
        if _SOURCE_TREE.is_dir() and str(_SOURCE_TREE) not in sys.path:
            sys.path.insert(0, str(_SOURCE_TREE))
        try:
            import tmclient
            import tmclient.console
        except ImportError as exc:
            raise SystemExit(f"taskmgr: this command needs the SDK: pip install './clients/python[cli]' ({exc})") \
                from None
    return tmclient, tmclient.console


def sdk_run(settings: Settings, command: Callable[[Any, Any], Awaitable[Any]]) -> Any:
    """Run `command(client, console_module)` with an AsyncClient for API_URL and TASKMGR_API_KEY."""
    tmclient, console = _import_sdk()
    key = settings.auth.cli_api_key

    async def run() -> Any:
        async with tmclient.AsyncClient(settings.service.api_url,
                                        api_key=key.get_secret_value() if key else "") as tm:
            return await command(tm, console)

    return asyncio.run(run())
