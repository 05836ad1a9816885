"""The benchmark harness: `make bench` (or `python -m bench`).

Measures, in one run on the local RabbitMQ and PostgreSQL, our fleet beside
the limits of its own tools and beside Celery and Dramatiq on the same broker,
then prints one table with the ratios and writes BENCHMARKS.md. Absolute
figures drift on a shared machine; ratios taken in the same run do not.

Never imported by the product (`shared`, `services`).

Sections (one module each): `ingress`, `end_to_end`, `raw_limit`,
`competitors`, `latency`, `resources` (measured by the fleet itself), and
`pipeline` (plugged in when `bench/pipeline.py` exists; see `bench.sections`).

Two measurements run on their own: `python -m bench.process_footprint` (memory and
CPU per process, behind the deploy figures) and `python -m bench.security_overhead`
(the api with auth off and on).
"""
