"""TLS by configuration: `amqps://` with a CA file through the same connect path
the processes use (a TLS terminator on loopback in front of the real broker),
and PostgreSQL's SSL context from POSTGRES_SSLROOTCERT."""

from __future__ import annotations

import asyncio
import ssl
from collections.abc import AsyncIterator
from pathlib import Path
from urllib.parse import urlsplit

import aio_pika
import pytest
import pytest_asyncio
import trustme

from shared.amqp.connection import connect
from shared.settings import AmqpSettings, PostgresSettings
from tests.support.environment import TestEnvironment, free_port


async def _pipe(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
    try:
        while data := await reader.read(65536):
            writer.write(data)
            await writer.drain()
    except (ConnectionError, OSError):
        pass
    finally:
        writer.close()


@pytest_asyncio.fixture(loop_scope="session")
async def tls_broker(environment: TestEnvironment, tmp_path: Path) -> AsyncIterator[tuple[str, Path]]:
    """`amqps://` on a loopback port, terminated here and forwarded to the broker."""
    ca = trustme.CA()
    cert = ca.issue_cert("localhost")
    context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    cert.configure_cert(context)
    ca_file = tmp_path / "ca.pem"
    ca.cert_pem.write_to_path(str(ca_file))
    broker = urlsplit(environment.amqp_url)

    async def forward(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        up_reader, up_writer = await asyncio.open_connection(broker.hostname, broker.port or 5672)
        await asyncio.gather(_pipe(reader, up_writer), _pipe(up_reader, writer))

    port = free_port()
    server = await asyncio.start_server(forward, "127.0.0.1", port, ssl=context)
    base = f"amqps://{broker.username}:{broker.password}@localhost:{port}{broker.path}"
    yield base, ca_file
    server.close()


async def test_amqps_with_a_ca_file_connects_through_the_process_connect_path(tls_broker: tuple[str, Path]) -> None:
    base, ca_file = tls_broker
    settings = AmqpSettings(AMQP_URL=f"{base}?cafile={ca_file}")
    assert settings.uses_tls and "heartbeat=" in settings.connection_url()
    connection = await connect(settings, name="tls-test")
    try:
        channel = await connection.channel()
        queue = await channel.declare_queue(exclusive=True)
        await channel.default_exchange.publish(aio_pika.Message(b"over tls"), routing_key=queue.name)
        message = await queue.get(timeout=5)
        assert message is not None and message.body == b"over tls"
    finally:
        await connection.close()


async def test_amqps_refuses_a_server_it_cannot_verify(tls_broker: tuple[str, Path]) -> None:
    base, _ = tls_broker
    with pytest.raises((ssl.SSLError, ConnectionError, OSError, aio_pika.exceptions.AMQPConnectionError)):
        await aio_pika.connect(base, timeout=5)  # no cafile: the test CA is not trusted


def test_postgres_verifies_against_the_configured_ca(tmp_path: Path) -> None:
    ca_file = tmp_path / "pg-ca.pem"
    trustme.CA().cert_pem.write_to_path(str(ca_file))
    full = PostgresSettings(POSTGRES_HOST="db.internal", POSTGRES_SSLMODE="verify-full", POSTGRES_SSLROOTCERT=str(ca_file))
    context = full.ssl_context()
    assert context is not None and context.check_hostname and context.verify_mode == ssl.CERT_REQUIRED
    assert "ssl=" not in full.sqlalchemy_url(), "the context, not the URL, carries TLS then"
    ca_only = PostgresSettings(POSTGRES_HOST="db", POSTGRES_SSLMODE="verify-ca", POSTGRES_SSLROOTCERT=str(ca_file))
    assert ca_only.ssl_context().check_hostname is False  # type: ignore[union-attr]
    plain = PostgresSettings(POSTGRES_HOST="db", POSTGRES_SSLMODE="require")
    assert plain.ssl_context() is None and "ssl=require" in plain.sqlalchemy_url()
