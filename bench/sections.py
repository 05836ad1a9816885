"""Turning measurements into the table's sections, with their ratios and
targets; and the hook for the pipeline section.

The pipeline hook: when `bench/pipeline.py` exists it must define

    async def measure(ctx: bench.context.BenchContext) -> bench.report.Section

and is called with our fleet stopped. It starts the processes it needs with
`ctx.fleet` (`ctx.fleet.api()`, `ctx.fleet.worker("embed")`, ...; `await
process.start()` also records start-to-ready), stops them, and keeps within
`ctx.time_left()`; `ctx.sizes.quick` asks for the tiny smoke-test sizes. Its
section title starts with "5. Pipeline". Its section should report
documents/s and chunks/s through `document_processing` on the corpus beside
embedding-only chunks/s of the same model on the same chunks (target: ≥ 85%),
and the embedding worker's RSS. Until then the table says it is pending.
"""

from __future__ import annotations

import importlib

from bench.competitors import CompetitorResult
from bench.context import BenchContext
from bench.end_to_end import EndToEnd
from bench.fleet import MB, Fleet
from bench.measures import Throughput
from bench.report import Row, Section, number, ratio, verdict

# Issue 13's targets, each a ratio to a baseline measured in the same run.
RAW_RATE_FACTOR_TARGET = 0.5  # ours ≥ 0.5× the raw one-hop msg/s
RAW_CPU_FACTOR_TARGET = 2.0  # ours ≤ 2× the raw one-hop CPU per message
CELERY_FACTOR_TARGET = 3.0
LATENCY_P99_TARGET_MS = 25.0
RSS_TARGET_MB = 80.0
READY_TARGET_SECONDS = 1.0


def _rate(result: Throughput, unit: str = "tasks/s") -> str:
    text = f"{number(result.rate)} {unit}"
    if result.errors:
        text += f", {result.errors:,} failed"
    if not result.complete:
        text += f" ({result.note})"
    return text


def _cpu_text(cpu: dict[str, float], names: dict[str, str]) -> str:
    parts = ", ".join(f"{label} {cpu.get(key, 0.0):,.0f}" for key, label in names.items())
    return f"{sum(cpu.values()):,.0f} µs ({parts})"


def end_to_end(
    n: int,
    rest: EndToEnd,
    amqp: EndToEnd,
    raw: tuple[Throughput, dict[str, float]] | str,
    celery: CompetitorResult | str,
    dramatiq: CompetitorResult | str,
) -> Section:
    section = Section(f"2. End to end: {n:,} no-op tasks until all are completed in PostgreSQL")
    ours_names = {"api": "api", "worker": "worker", "dispatcher": "dispatcher", "postgres": "PostgreSQL",
                  "rabbitmq": "RabbitMQ"}
    raw_rate = raw[0].rate if not isinstance(raw, str) else None
    raw_cpu = sum(raw[1].values()) if not isinstance(raw, str) else None
    celery_rate = celery.throughput.rate if isinstance(celery, CompetitorResult) else None
    for label, run, unit in (("ours, over REST", rest, "req/s"), ("ours, over tm.submit", amqp, "msg/s")):
        refused = f", {run.submission.errors:,} refused" if run.submission.errors else ""
        rate = run.result.rate
        rate_ok = run.result.complete and (raw_rate is None or rate >= RAW_RATE_FACTOR_TARGET * raw_rate) and (
            celery_rate is None or rate >= CELERY_FACTOR_TARGET * celery_rate)
        versus = "; ".join(x for x in (
            f"{ratio(rate, raw_rate)} raw" if raw_rate else "",
            f"{ratio(rate, celery_rate)} Celery" if celery_rate else "") if x)
        section.rows.append(Row(f"{label} (submitted at {number(run.submission.rate)} {unit}{refused})",
                                _rate(run.result), "raw limit, Celery (below)" if versus else "", versus,
                                target=f"≥ {RAW_RATE_FACTOR_TARGET}× raw and ≥ {CELERY_FACTOR_TARGET:.0f}× Celery",
                                verdict=verdict(rate_ok)))
        cpu = sum(run.cpu_us_per_task.values())
        section.rows.append(Row(
            f"{label}: CPU per task, service side", _cpu_text(run.cpu_us_per_task, ours_names),
            f"raw limit: {raw_cpu:,.0f} µs per message" if raw_cpu else "",
            f"{cpu / raw_cpu:.2f}× raw" if raw_cpu else "",
            target=f"≤ {RAW_CPU_FACTOR_TARGET:.1f}× raw",
            verdict=verdict(raw_cpu is not None and cpu <= RAW_CPU_FACTOR_TARGET * raw_cpu) if raw_cpu else ""))
    best = max((rest, amqp), key=lambda run: run.result.rate)
    ours_rate, ours_cpu = best.result.rate, sum(best.cpu_us_per_task.values())
    ours_text = f"ours, best of the two: {number(ours_rate)} tasks/s, {ours_cpu:,.0f} µs CPU per task"

    def compare(label: str, other: tuple[Throughput, dict[str, float]] | CompetitorResult | str,
                names: dict[str, str], unit: str = "tasks/s", target: str = "", factor: float | None = None) -> None:
        if isinstance(other, str):
            section.rows.append(Row(label, other, target=target))
            return
        if isinstance(other, CompetitorResult):
            theirs, cpu = other.throughput, other.cpu_us_per_task
            extra = (f"; worker ready in {other.ready_seconds:.2f} s, peak RSS {other.peak_rss_mb:.0f} MB "
                     f"({other.processes} processes)")
        else:
            (theirs, cpu), extra = other, ""
        their_cpu = sum(cpu.values())
        cpu_ratio = f"theirs uses {their_cpu / ours_cpu:.2f}× our CPU per task" if ours_cpu and their_cpu else "n/a"
        section.rows.append(Row(
            label, f"{_rate(theirs, unit)}; CPU per task {_cpu_text(cpu, names)}{extra}",
            compared_with=ours_text, ratio=f"{ratio(ours_rate, theirs.rate)} tasks/s; {cpu_ratio}",
            target=target, verdict=verdict(ours_rate >= factor * theirs.rate) if factor else "",
        ))

    compare("raw limit: aio-pika publish (confirms) + consume, one process", raw,
            {"client": "the process", "rabbitmq": "RabbitMQ"}, unit="msg/s")
    compare("Celery: RabbitMQ, PostgreSQL result backend, acks_late, prefork 2", celery,
            {"worker": "workers", "postgres": "PostgreSQL", "rabbitmq": "RabbitMQ"},
            target=f"ours ≥ {CELERY_FACTOR_TARGET:.0f}× Celery", factor=CELERY_FACTOR_TARGET)
    compare("Dramatiq: RabbitMQ (no confirms, its default), 2 processes × 8 threads", dramatiq,
            {"worker": "workers", "rabbitmq": "RabbitMQ"})
    section.notes += [
        ("Ours: the api admits each task (row committed, persistent message confirmed), the default worker runs it "
         "and publishes its completion (confirmed) before acking, the dispatcher commits the state in batches."),
        ("The clock runs from the first submission until the database shows the last task completed "
         "(Celery: its result rows SUCCESS; Dramatiq keeps no results, its actor appends a byte to a file)."),
        ("CPU per task, service side: user + system time during the measured window, divided by the tasks "
         "completed, of everything but the client that submits: for ours the api, worker and dispatcher; for "
         "Celery and Dramatiq their worker processes (their clients enqueue straight to the broker, uncounted, "
         "which favours them); PostgreSQL as the backends of this run's database; RabbitMQ as the whole node, "
         "shared with anyone using it at the time. Throughput ratios move with the machine's load between two "
         "measurements a minute apart; the CPU ratio hardly does, and tells what the throughput ratio would be "
         "on a machine that each had to itself."),
    ]
    return section


def latency(completed: Throughput, accepted: Throughput) -> Section:
    section = Section(f"3. Latency at low load: {completed.count} tasks, one at a time over REST")
    section.rows.append(Row("submit → completed in PostgreSQL",
                            f"p50 {completed.p50_ms:.1f} ms, p99 {completed.p99_ms:.1f} ms"
                            + (f", {completed.errors} failed" if completed.errors else ""),
                            target=f"p99 < {LATENCY_P99_TARGET_MS:.0f} ms",
                            verdict=verdict(completed.p99_ms < LATENCY_P99_TARGET_MS and not completed.errors)))
    section.rows.append(Row("submit → 201 (row committed, message confirmed)",
                            f"p50 {accepted.p50_ms:.1f} ms, p99 {accepted.p99_ms:.1f} ms"))
    return section


def resources(fleet: Fleet) -> Section:
    section = Section("4. Resources: RSS (process and its children) and start-to-ready (spawn to 200 on /health/ready)")
    for name in ("api", "dispatcher", "worker"):
        process = fleet.processes.get(name)
        if process is None or process.ready_seconds is None:
            continue
        idle, peak, own = (process.idle_rss or 0) / MB, process.peak_rss / MB, (process.idle_uss or 0) / MB
        section.rows.append(Row(f"{name}: RSS idle / peak under end-to-end load",
                                f"{idle:.0f} MB / {peak:.0f} MB (own memory at idle, USS: {own:.0f} MB)",
                                target=f"< {RSS_TARGET_MB:.0f} MB under load", verdict=verdict(peak < RSS_TARGET_MB)))
        section.rows.append(Row(f"{name}: start to ready", f"{process.ready_seconds:.2f} s",
                                target=f"< {READY_TARGET_SECONDS:.0f} s",
                                verdict=verdict(process.ready_seconds < READY_TARGET_SECONDS)))
    section.notes += [
        "Processes start one at a time, so each start-up has the CPU to itself (as far as a shared machine allows).",
        ("RSS counts shared library pages too (the target is stated in RSS); USS is what one more such process "
         "really costs."),
    ]
    return section


async def pipeline(ctx: BenchContext) -> Section:
    try:
        module = importlib.import_module("bench.pipeline")
    except ModuleNotFoundError as exc:
        if exc.name != "bench.pipeline":
            raise
        return Section("5. Pipeline: document_processing on the corpus", [Row(
            "documents/s and chunks/s, beside embedding-only chunks/s", "pending: pipeline not merged",
            target="chunks/s ≥ 85% of embedding-only", verdict="pending",
        )])
    return await module.measure(ctx)  # type: ignore[no-any-return]


SHARDING_TARGET = 3.0


async def sharding(ctx: BenchContext) -> Section:
    """6. A 304-page PDF, sharded against unsharded (bench/sharded_documents.py, decision 0170)."""
    from bench import sharded_documents

    title = "6. Sharded documents: a 304-page PDF, time to searchable"
    if ctx.sizes.quick:
        return Section(title, [Row("sharded against unsharded", skipped("--quick"))])
    found = await sharded_documents.measure(rounds=1, latency=0.5)  # a remote model answering in 0.5 s
    return Section(title, [Row(
        f"{found['shard_pages']} pages per shard, {found['embed_workers']} embed workers × "
        f"{found['slots_per_worker']} slots, {found['backend']}",
        f"{found['sharded_s']:.1f} s sharded", f"unsharded: {found['unsharded_s']:.1f} s",
        f"{found['speedup']:.2f}× faster", f"≥ {SHARDING_TARGET:.0f}× faster",
        verdict(found["speedup"] >= SHARDING_TARGET))],
        notes=[("Parsing a PDF is CPU-bound: the shards' parses share this machine's cores, so the speed-up is "
               "bounded by the cores the preprocess workers get, not by the embed workers.")])


def skipped(reason: str) -> str:
    return f"skipped: {reason}"
