"""`taskmgr keys create|list|revoke`: API keys, managed with database access
(the trust anchor), never over the api itself."""

from __future__ import annotations

import argparse
import json
import re
import sys
from typing import Any

from shared.db.engine import create_engine
from shared.security.api_key_store import ApiKeyStore, KeyRecord
from shared.security.api_keys import parse_duration, parse_scopes
from shared.settings import Settings
from shared.task_request import KB_ID_PATTERN


async def run_keys_command(args: argparse.Namespace, settings: Settings) -> int:
    engine = create_engine(settings.postgres, pool_size=1)
    store = ApiKeyStore(engine)
    try:
        if args.keys_command == "create":
            return await _create(store, args)
        if args.keys_command == "list":
            print(json.dumps([_shown(r) for r in await store.list()], indent=2))
            return 0
        if await store.revoke(args.key_id):
            print(f"key {args.key_id} revoked (the api stops accepting it within API_KEY_CACHE_SECONDS)")
            return 0
        print(f"taskmgr: no active key with id {args.key_id!r}", file=sys.stderr)
        return 1
    finally:
        await engine.dispose()


async def _create(store: ApiKeyStore, args: argparse.Namespace) -> int:
    try:
        scopes = parse_scopes(args.scopes)
        expires = parse_duration(args.expires) if args.expires else None
        bad = [kb for kb in args.kb_ids or [] if not re.match(KB_ID_PATTERN, kb)]
        if bad:
            raise ValueError(f"invalid kb id(s): {', '.join(bad)}")
        key, record = await store.create(args.name, scopes, kb_ids=args.kb_ids, expires_in=expires)
    except ValueError as exc:
        print(f"taskmgr: {exc}", file=sys.stderr)
        return 1
    print(json.dumps({"key": key.token, **_shown(record)}, indent=2))
    print("Store the key now: it is shown only once (only its hash is kept).", file=sys.stderr)
    return 0


def _shown(record: KeyRecord) -> dict[str, Any]:
    return {
        "id": record.key_id, "name": record.name, "scopes": list(record.scopes),
        "kb_ids": list(record.kb_ids) if record.kb_ids is not None else None,
        "created_at": record.created_at.isoformat(),
        "expires_at": record.expires_at.isoformat() if record.expires_at else None,
        "revoked_at": record.revoked_at.isoformat() if record.revoked_at else None,
        "last_used_at": record.last_used_at.isoformat() if record.last_used_at else None,
    }
