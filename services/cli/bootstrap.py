"""`taskmgr bootstrap`: the secrets a fresh production deployment cannot start
without, created once and never overwritten (a one-off compose service or
Kubernetes Job; safe to run on every deploy).

- The callback secret: with CALLBACK_SECRET unset and CALLBACK_SECRET_FILE set
  to a missing file, a new `whsec_` secret is written there (mode 0600). The
  dispatcher reads it; the KB service needs the same value to verify signatures.
- The first API key: when no active key exists, TASKMGR_API_KEY (a `tmk_` key
  the operator chose) is registered, or else one is generated and written to
  `--api-key-file` (mode 0600). Keys are never printed: the operator reads the file.
"""

from __future__ import annotations

import argparse
import base64
import os
import secrets
import sys
from pathlib import Path

from shared.db.engine import create_engine
from shared.security.api_key_store import ApiKeyStore
from shared.security.api_keys import KEY_PREFIX, NewKey, Scope, parse_key
from shared.settings import Settings

FIRST_KEY_NAME = "bootstrap"
SECRET_BYTES = 32  # Standard Webhooks allows 24 to 64 bytes of key material


def new_callback_secret() -> str:
    return "whsec_" + base64.b64encode(secrets.token_bytes(SECRET_BYTES)).decode()


def _write_private(path: Path, text: str) -> None:
    """Create `path` readable by its owner only; an existing file is an error (never overwritten)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    with os.fdopen(fd, "w") as handle:
        handle.write(text + "\n")


def ensure_callback_secret(settings: Settings) -> str:
    callbacks = settings.callbacks
    if callbacks.callback_secret is not None:
        return "callback secret: CALLBACK_SECRET is set, nothing to generate"
    path = callbacks.callback_secret_file
    if path is None:
        return "callback secret: neither CALLBACK_SECRET nor CALLBACK_SECRET_FILE is set, nothing generated"
    if callbacks.secrets():
        return f"callback secret: {path} exists, kept"
    if path.exists():  # present but empty: an operator's mistake, not ours to overwrite
        raise ValueError(f"CALLBACK_SECRET_FILE {path} exists but is empty: put a whsec_ secret in it or delete it")
    _write_private(path, new_callback_secret())
    return f"callback secret: generated in {path} (give the KB service the same value to verify signatures)"


async def ensure_first_api_key(settings: Settings, api_key_file: Path | None) -> str:
    engine = create_engine(settings.postgres, pool_size=1)
    store = ApiKeyStore(engine)
    scopes = [Scope.ADMIN, Scope.TASKS_READ, Scope.TASKS_WRITE]
    try:
        if await store.count_active():
            return "API key: an active key exists, nothing created"
        chosen = settings.auth.cli_api_key
        if chosen is not None:
            token = chosen.get_secret_value()
            parsed = parse_key(token)
            if parsed is None:
                raise ValueError(f"TASKMGR_API_KEY is not a valid key ({KEY_PREFIX}<16 hex>_<43 base64url>); "
                                 "create one with `taskmgr keys create` or leave it unset to generate one")
            await store.create(FIRST_KEY_NAME, scopes, key=NewKey(parsed[0], token))
            return f"API key: TASKMGR_API_KEY registered as {parsed[0]} (scopes: {', '.join(scopes)})"
        if api_key_file is None:
            raise ValueError("no active API key and nowhere to put a new one: set TASKMGR_API_KEY or pass --api-key-file")
        if api_key_file.exists():
            raise ValueError(f"{api_key_file} exists but no active key matches it: delete the file to generate a new key")
        key, record = await store.create(FIRST_KEY_NAME, scopes)
        _write_private(api_key_file, key.token)
        return f"API key: generated {record.key_id} (scopes: {', '.join(scopes)}) in {api_key_file}"
    finally:
        await engine.dispose()


async def run_bootstrap(args: argparse.Namespace, settings: Settings) -> int:
    try:
        print(ensure_callback_secret(settings))
        print(await ensure_first_api_key(settings, args.api_key_file))
    except (ValueError, OSError) as exc:
        print(f"taskmgr bootstrap: {exc}", file=sys.stderr)
        return 1
    return 0
