"""Migrations may run from several replicas at once (Kubernetes init containers)."""

from __future__ import annotations

import asyncio
import os
import sys
import uuid

from shared.db.local_server import LocalPostgres, drop_database, wait_until_accepting
from shared.settings import PostgresSettings


async def test_concurrent_migrations_of_a_new_database_all_succeed() -> None:
    settings = PostgresSettings()
    if settings.uses_local_server:
        LocalPostgres(settings).ensure_running()
    await wait_until_accepting(settings)
    name = f"tm_m_{uuid.uuid4().hex[:8]}"
    env = {**os.environ, "POSTGRES_DB": name}
    try:
        processes = [
            await asyncio.create_subprocess_exec(sys.executable, "-m", "services.cli.main", "migrate", env=env,
                                                 stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.STDOUT)
            for _ in range(4)
        ]
        outputs = await asyncio.wait_for(asyncio.gather(*(p.communicate() for p in processes)), 120)
        failures = [out.decode() for p, (out, _) in zip(processes, outputs, strict=True) if p.returncode != 0]
        assert failures == []
    finally:
        await drop_database(settings, name)
