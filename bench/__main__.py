"""`python -m bench`: measure, print the table, write BENCHMARKS.md."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from bench.run import STEPS, Options, run


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench", description=__doc__)
    parser.add_argument("--quick", action="store_true", help="tiny sizes: proves the harness works (the smoke test)")
    parser.add_argument("--output", type=Path, default=None,
                        help="write the results into this file (default: BENCHMARKS.md for a full run, "
                             "nothing for --quick)")
    parser.add_argument("--skip", default="", help=f"comma-separated steps to leave out: {', '.join(STEPS)}")
    parser.add_argument("--profile", type=Path, default=None,
                        help="record py-spy profiles of the fleet during the REST end-to-end run into this folder")
    parser.add_argument("--set", action="append", default=[], metavar="NAME=VALUE",
                        help="a setting for our fleet's processes (e.g. WORKER_POOL_SIZE=20), for experiments")
    parser.add_argument("--time-limit", type=float, default=570.0, help="seconds for the whole run")
    args = parser.parse_args(argv)

    skip = frozenset(s.strip() for s in args.skip.split(",") if s.strip())
    unknown = skip - set(STEPS)
    if unknown:
        parser.error(f"unknown step(s) in --skip: {', '.join(sorted(unknown))}; known: {', '.join(STEPS)}")
    fleet_env = {}
    for item in args.set:
        name, sep, value = item.partition("=")
        if not sep or not name:
            parser.error(f"--set takes NAME=VALUE, got {item!r}")
        fleet_env[name] = value
    output = args.output if args.output is not None else (None if args.quick else Path("BENCHMARKS.md"))
    options = Options(quick=args.quick, output=output, time_limit=args.time_limit, skip=skip,
                      profile=args.profile, fleet_env=fleet_env,
                      command=" ".join(["python -m bench", *(argv if argv is not None else sys.argv[1:])]))

    import uvloop

    print(uvloop.run(run(options)))
    return 0


if __name__ == "__main__":
    sys.exit(main())
