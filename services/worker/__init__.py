"""The worker process: one stage per process, consuming tm.stage.<stage>."""
