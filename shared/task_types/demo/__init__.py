"""Demonstration task types: `test` (the seed's example), `echo`, `sleep`, `fail`,
`benchmark` and `cpu`. They show the fleet working and drive the tests, the chaos
soak and the benchmarks, and do nothing a KB service needs: `cpu` burns up to 600 s
of a core and `sleep` holds a slot for an hour. So they are registered only when
`DEMO_TASK_TYPES` is on (by default in development, not in production)."""
