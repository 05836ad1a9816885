"""`taskmgr`: run the fleet (`up`), prepare it (`migrate`, `topology`, `db`),
and operate it (`submit`, `status`, `cancel`)."""

from __future__ import annotations

import argparse
import asyncio
import json
import sys
import time
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

from loguru import logger

from services.cli import schedules as schedules_cli
from services.cli.client import ApiClient, ApiError, ApiUnreachable
from services.cli.supervisor import Supervisor, fleet
from services.worker.stages import known_stages
from shared.db.local_server import LocalPostgres, LocalPostgresError, wait_until_accepting
from shared.logging import configure_logging
from shared.settings import AmqpSettings, Settings
from shared.status import TaskStatus
from shared.task_types import default_registry
from shared.topology import Topology, declare_topology, verify_topology


def main(argv: list[str] | None = None) -> None:
    parser = _parser()
    args = parser.parse_args(argv)
    settings = Settings.from_env()
    configure_logging(settings.service, process="taskmgr", secrets=settings.secret_values())
    try:
        code = args.func(args, settings)
    except ApiError as exc:
        print(json.dumps(exc.body, indent=2, ensure_ascii=False), file=sys.stderr)
        code = 1
    except (ApiUnreachable, LocalPostgresError, PreflightError) as exc:
        print(f"taskmgr: {exc}", file=sys.stderr)
        code = 1
    except OSError as exc:  # a connection or file the command itself needed; named, never "the api"
        print(f"taskmgr {args.command}: {exc}", file=sys.stderr)
        code = 1
    sys.exit(code)


class PreflightError(RuntimeError):
    pass


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="taskmgr", description=__doc__)
    sub = parser.add_subparsers(dest="command", required=True)

    up = sub.add_parser("up", help="run api + one worker per stage + dispatcher in the foreground")
    up.add_argument("--stages", default=",".join(_fleet_stages()), help="comma-separated stages to run")
    up.set_defaults(func=cmd_up)

    migrate = sub.add_parser("migrate", help="create the database if needed and apply migrations")
    migrate.set_defaults(func=cmd_migrate)

    topology = sub.add_parser("topology", help="declare the AMQP topology and verify it")
    topology.add_argument("--verify-only", action="store_true", help="only check that everything exists")
    topology.set_defaults(func=cmd_topology)

    bootstrap = sub.add_parser("bootstrap", help="generate the callback secret and the first API key if missing")
    bootstrap.add_argument("--api-key-file", type=Path, help="where a generated first API key is written (0600)")
    bootstrap.set_defaults(func=cmd_bootstrap)

    db = sub.add_parser("db", help="the local PostgreSQL used when POSTGRES_HOST is not set")
    db.add_argument("action", choices=["start", "stop", "status"])
    db.set_defaults(func=cmd_db)

    submit = sub.add_parser("submit", help="submit a task over REST")
    submit.add_argument("task_type")
    submit.add_argument("--kb", dest="kb_id")
    submit.add_argument("--payload", default="{}", help="JSON object")
    submit.add_argument("--priority", choices=["high", "normal", "low"])
    submit.add_argument("--retry-limit", type=int)
    submit.add_argument("--callback-url")
    submit.add_argument("--idempotency-key")
    submit.add_argument("--wait", action="store_true", help="show its progress live, then print it when it ends")
    submit.set_defaults(func=cmd_submit)

    ingest = sub.add_parser("ingest", help="upload and submit every file of a folder; resumable")
    ingest.add_argument("folder")
    ingest.add_argument("--kb", dest="kb_id", required=True)
    ingest.add_argument("--task-type", default="document_processing")
    ingest.add_argument("--state", help="where to remember what was done (default: FOLDER/.taskmgr-ingest.json)")
    ingest.add_argument("--retry-failed", action="store_true", help="retry files whose task failed last time")
    ingest.set_defaults(func=cmd_ingest)

    top = sub.add_parser("top", help="live view of workers and queues (admin key)")
    top.add_argument("--interval", type=float, default=2.0)
    top.add_argument("--once", action="store_true", help="draw once and exit")
    top.set_defaults(func=cmd_top)

    status = sub.add_parser("status", help="show a task")
    status.add_argument("task_id")
    status.set_defaults(func=cmd_status)

    cancel = sub.add_parser("cancel", help="cancel a queued or running task")
    cancel.add_argument("task_id")
    cancel.set_defaults(func=cmd_cancel)

    dlq = sub.add_parser("dlq", help="the dead-letter queue: list, show, replay, purge")
    dlq_sub = dlq.add_subparsers(dest="dlq_command", required=True)
    dlq_list = dlq_sub.add_parser("list", help="dead letters with their reasons")
    dlq_list.add_argument("--limit", type=int, default=100)
    dlq_show = dlq_sub.add_parser("show", help="the dead letters of one task")
    dlq_show.add_argument("task_id")
    for name, verb in (("replay", "replay (fresh attempt series, back to queued)"), ("purge", "drop for good")):
        action = dlq_sub.add_parser(name, help=f"{verb}: the given tasks, or --all")
        action.add_argument("task_ids", nargs="*")
        action.add_argument("--all", action="store_true")
    dlq.set_defaults(func=cmd_dlq)

    schedules_cli.register(sub).set_defaults(func=cmd_schedules)

    keys = sub.add_parser("keys", help="API keys: create (shown once), list, revoke")
    keys_sub = keys.add_subparsers(dest="keys_command", required=True)
    create = keys_sub.add_parser("create", help="create a key and print it once")
    create.add_argument("--name", required=True)
    create.add_argument("--scopes", required=True, help="comma-separated: tasks:read,tasks:write[,admin]")
    create.add_argument("--kb", dest="kb_ids", action="append", metavar="KB_ID",
                        help="restrict the key to this knowledge base (repeatable); default: all")
    create.add_argument("--expires", help="lifetime such as 90d, 12h, 2w, 1y; default: never")
    keys_sub.add_parser("list", help="every key (never the secret)")
    revoke = keys_sub.add_parser("revoke", help="revoke a key by its id")
    revoke.add_argument("key_id")
    keys.set_defaults(func=cmd_keys)

    search = sub.add_parser("search", help="search a knowledge base (hybrid: vector + keyword)")
    search.add_argument("kb_id")
    search.add_argument("query")
    search.add_argument("--top-k", type=int, default=5)
    search.add_argument("--mode", choices=["hybrid", "vector", "keyword"], default="hybrid")
    search.add_argument("--document", action="append", dest="document_ids", help="only this document (repeatable)")
    search.add_argument("--json", action="store_true", help="print the raw JSON answer")
    search.set_defaults(func=cmd_search)

    documents = sub.add_parser("documents", help="list a knowledge base's documents")
    documents.add_argument("kb_id")
    documents.add_argument("--status", help="only these statuses, comma-separated (queued,processing,ready,failed,"
                           "cancelled)")
    documents.set_defaults(func=cmd_documents)

    reembed = sub.add_parser("reembed", help="re-embed every stored document of a knowledge base (as tasks)")
    reembed.add_argument("kb_id")
    reembed.set_defaults(func=cmd_reembed)

    chunks = sub.add_parser("chunks", help="page through a document's chunks (text, pages, section, ocr)")
    chunks.add_argument("kb_id")
    chunks.add_argument("document_id")
    chunks.add_argument("--cursor", help="next_cursor of the previous page")
    chunks.add_argument("--limit", type=int, default=50)
    chunks.set_defaults(func=cmd_chunks)

    reprocess = sub.add_parser("reprocess", help="run a document again with new parameters (runs as a task)")
    reprocess.add_argument("kb_id")
    reprocess.add_argument("document_id")
    reprocess.add_argument("--payload", default="{}", help='JSON object, e.g. {"chunk_size": 500}')
    reprocess.add_argument("--wait", action="store_true", help="wait until the task ends")
    reprocess.set_defaults(func=cmd_reprocess)

    delete_doc = sub.add_parser("delete-document", help="delete a document's chunks (runs as a task)")
    delete_doc.add_argument("kb_id")
    delete_doc.add_argument("document_id")
    delete_doc.add_argument("--wait", action="store_true", help="wait until the deletion task ends")
    delete_doc.set_defaults(func=cmd_delete_document)
    return parser


def _fleet_stages() -> tuple[str, ...]:
    """Every stage some task type uses and this build implements (demo types included: they
    run on `default`, which file_digest needs anyway, so the fleet is the same either way)."""
    return tuple(s for s in default_registry(demo=True).stages() if s in known_stages())


# --- running the fleet ---------------------------------------------------------------


def cmd_up(args: argparse.Namespace, settings: Settings) -> int:
    stages = tuple(s for s in args.stages.split(",") if s)
    unknown = [s for s in stages if s not in known_stages()]
    if unknown:
        raise PreflightError(f"unknown stage(s): {', '.join(unknown)}; known: {', '.join(known_stages())}")
    _ensure_postgres(settings)
    _check_broker(settings.amqp)
    children = fleet(stages, metrics_port_base=settings.service.metrics_port)
    url = f"http://{settings.service.http_host}:{settings.service.port}"
    logger.info("task manager starting: api at {} , stages: {} (Ctrl-C to stop)", url, ", ".join(stages))
    print(f"\n  Task manager API: {url}\n  Try: curl -X POST {url}/api/v1/tasks -H 'Content-Type: application/json' "
          "-d '{\"task_type\":\"test\",\"payload\":{\"message\":\"hello\"}}'\n", flush=True)
    return Supervisor(children, grace_seconds=settings.worker.shutdown_grace_seconds).run()


def cmd_migrate(args: argparse.Namespace, settings: Settings) -> int:
    from shared.db.migrate import upgrade

    _ensure_postgres(settings)
    upgrade(settings.postgres)
    print(f"database {settings.postgres.describe()} is at the latest schema")
    return 0


def cmd_topology(args: argparse.Namespace, settings: Settings) -> int:
    _check_broker(settings.amqp)
    return asyncio.run(_topology(settings, verify_only=args.verify_only))


async def _topology(settings: Settings, *, verify_only: bool) -> int:
    import aio_pika

    topology = Topology(default_registry(demo=True).stages(), settings.amqp.stage_queue_max_length)
    connection = await aio_pika.connect(settings.amqp.connection_url())
    try:
        channel = await connection.channel()
        if not verify_only:
            await declare_topology(channel, topology)
        try:
            depths = await verify_topology(channel, topology)
        except aio_pika.exceptions.ChannelClosed as exc:
            print(f"topology incomplete: {exc}", file=sys.stderr)
            return 1
    finally:
        await connection.close()
    print("topology OK (" + ("verified" if verify_only else "declared and verified") + ")")
    for name, ready in depths.items():
        print(f"  {name:<28} {ready:>8} ready")
    return 0


def cmd_bootstrap(args: argparse.Namespace, settings: Settings) -> int:
    from services.cli.bootstrap import run_bootstrap

    _ensure_postgres(settings)
    return asyncio.run(run_bootstrap(args, settings))


def cmd_db(args: argparse.Namespace, settings: Settings) -> int:
    if not settings.postgres.uses_local_server:
        print(f"POSTGRES_HOST is set ({settings.postgres.describe()}); the local server is not used")
        return 0 if args.action == "status" else 1
    server = LocalPostgres(settings.postgres)
    if args.action == "start":
        _ensure_postgres(settings)
    elif args.action == "stop":
        server.stop()
        print("local PostgreSQL stopped")
    else:
        print(f"local PostgreSQL {'running' if server.is_running() else 'stopped'}: {settings.postgres.describe()},"
              f" data in {server.data_dir}")
    return 0


def _ensure_postgres(settings: Settings) -> None:
    if not settings.postgres.uses_local_server:
        return
    server = LocalPostgres(settings.postgres)
    if server.ensure_running():
        logger.info("started local PostgreSQL 16 + pgvector on 127.0.0.1:{} (data: {})",
                    settings.postgres.local_port, server.data_dir)
    asyncio.run(wait_until_accepting(settings.postgres))


def _check_broker(settings: AmqpSettings) -> None:
    import logging

    import aio_pika

    # One clear line below is the whole story; the client library's own error log is noise here.
    for name in ("aio_pika", "aiormq"):
        logging.getLogger(name).setLevel(logging.CRITICAL)

    async def probe() -> None:
        connection = await aio_pika.connect(settings.connection_url(), timeout=5)
        await connection.close()

    try:
        asyncio.run(probe())
    except Exception as exc:  # noqa: BLE001 - any failure means the same thing to a newcomer
        parts = urlsplit(settings.url.get_secret_value())
        where = f"{parts.hostname or 'localhost'}:{parts.port or 5672}"
        raise PreflightError(
            f"RabbitMQ is not reachable at {where} ({type(exc).__name__}); start it with "
            "`rabbitmq-server -detached` (or point AMQP_URL at a running broker)"
        ) from None


# --- operating -------------------------------------------------------------------------


def cmd_submit(args: argparse.Namespace, settings: Settings) -> int:
    try:
        payload = json.loads(args.payload)
    except ValueError as exc:
        raise PreflightError(f"--payload is not valid JSON: {exc}") from None
    body: dict[str, Any] = {"task_type": args.task_type, "payload": payload}
    for key in ("kb_id", "priority", "retry_limit", "callback_url"):
        if getattr(args, key) is not None:
            body[key] = getattr(args, key)
    if args.wait:  # a live progress bar from the event stream (the SDK)
        from services.cli.sdk import sdk_run

        task = sdk_run(settings, lambda tm, console: console.submit_and_follow(
            tm, body, idempotency_key=args.idempotency_key))
        _print(task.model_dump(mode="json"))
        return 0 if task.status == "completed" else 2
    client = _client(settings)
    created = client.submit(body, args.idempotency_key)
    return _print_or_wait(client, created, wait=False)


def cmd_ingest(args: argparse.Namespace, settings: Settings) -> int:
    from services.cli.sdk import sdk_run

    folder = Path(args.folder)
    if not folder.is_dir():
        raise PreflightError(f"{folder} is not a folder")
    return sdk_run(settings, lambda tm, console: console.ingest(  # type: ignore[no-any-return]
        tm, folder, args.kb_id, task_type=args.task_type, state_path=Path(args.state) if args.state else None,
        retry_failed=args.retry_failed))


def cmd_top(args: argparse.Namespace, settings: Settings) -> int:
    from services.cli.sdk import sdk_run

    return sdk_run(settings, lambda tm, console: console.top(  # type: ignore[no-any-return]
        tm, interval=args.interval, iterations=1 if args.once else None))


def cmd_status(args: argparse.Namespace, settings: Settings) -> int:
    _print(_client(settings).status(args.task_id))
    return 0


def cmd_cancel(args: argparse.Namespace, settings: Settings) -> int:
    _print(_client(settings).cancel(args.task_id))
    return 0


def cmd_dlq(args: argparse.Namespace, settings: Settings) -> int:
    client = _client(settings)
    if args.dlq_command == "list":
        _print(client.request("GET", f"/api/v1/dlq?limit={args.limit}")[1])
    elif args.dlq_command == "show":
        _print(client.request("GET", f"/api/v1/dlq/{args.task_id}")[1])
    else:
        if bool(args.task_ids) == args.all:
            raise PreflightError(f"dlq {args.dlq_command}: give task ids or --all (not both)")
        body = {"all": True} if args.all else {"task_ids": args.task_ids}
        _print(client.request("POST", f"/api/v1/dlq/{args.dlq_command}", body)[1])
    return 0


def cmd_schedules(args: argparse.Namespace, settings: Settings) -> int:
    try:
        _print(schedules_cli.run(args, _client(settings)))
    except schedules_cli.ScheduleArgumentError as exc:
        raise PreflightError(str(exc)) from None
    return 0


def cmd_keys(args: argparse.Namespace, settings: Settings) -> int:
    from services.cli.keys import run_keys_command

    _ensure_postgres(settings)
    return asyncio.run(run_keys_command(args, settings))


def _client(settings: Settings) -> ApiClient:
    key = settings.auth.cli_api_key
    return ApiClient(settings.service.api_url, api_key=key.get_secret_value() if key else None)


def cmd_search(args: argparse.Namespace, settings: Settings) -> int:
    body: dict[str, Any] = {"query": args.query, "top_k": args.top_k, "mode": args.mode}
    if args.document_ids:
        body["document_ids"] = args.document_ids
    answer = _client(settings).search(args.kb_id, body)
    if args.json:
        _print(answer)
        return 0
    print(f"{len(answer['results'])} result(s) for {answer['query']!r} in {answer['kb_id']} "
          f"({answer['mode']}, {answer['took_ms']} ms)")
    for warning in answer["warnings"]:
        print(f"  ! {warning}")
    for hit in answer["results"]:
        where = " > ".join(hit["heading_path"]) or hit["metadata"].get("source") or ""
        pages = f" p.{','.join(map(str, hit['pages']))}" if hit["pages"] else ""
        print(f"\n#{hit['rank']}  score {hit['score']:.4f}  {hit['document_id']}[{hit['chunk_index']}]{pages}  {where}")
        text = " ".join(hit["content"].split())
        print(f"    {text[:400]}{'...' if len(text) > 400 else ''}")
    return 0


def cmd_documents(args: argparse.Namespace, settings: Settings) -> int:
    _print(_client(settings).documents(args.kb_id, args.status))
    return 0


def cmd_reembed(args: argparse.Namespace, settings: Settings) -> int:
    _print(_client(settings).reembed(args.kb_id))
    return 0


def cmd_chunks(args: argparse.Namespace, settings: Settings) -> int:
    _print(_client(settings).chunks(args.kb_id, args.document_id, args.cursor, args.limit))
    return 0


def cmd_reprocess(args: argparse.Namespace, settings: Settings) -> int:
    client = _client(settings)
    created = client.reprocess(args.kb_id, args.document_id, json.loads(args.payload))
    return _print_or_wait(client, created, wait=args.wait)


def cmd_delete_document(args: argparse.Namespace, settings: Settings) -> int:
    client = _client(settings)
    created = client.delete_document(args.kb_id, args.document_id)
    return _print_or_wait(client, created, wait=args.wait)


def _print_or_wait(client: ApiClient, created: dict[str, Any], *, wait: bool) -> int:
    """Print the created task, or wait for its end and print that (exit 2 unless completed)."""
    if not wait:
        _print(created)
        return 0
    while True:
        task = client.status(created["task_id"])
        if TaskStatus(task["status"]).is_terminal:
            _print(task)
            return 0 if task["status"] == "completed" else 2
        time.sleep(0.2)


def _print(body: Any) -> None:
    print(json.dumps(body, indent=2, ensure_ascii=False))


if __name__ == "__main__":
    main()
