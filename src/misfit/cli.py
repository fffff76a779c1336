"""`misfit`: the project's command line (audit, reproduce, restore-runs, ui, run, profile, predict). Each subcommand lives in its own module."""
from __future__ import annotations

import argparse
import sys


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="misfit", description=__doc__)
    commands = parser.add_subparsers(dest="command", required=True)
    # each module adds its subcommand: register(commands) sets a `handler` default
    for module_name in ("audit", "run.reproduce", "track.restore", "track.ui", "run.parallel",
                        "run.profile", "run.predict"):
        module = __import__(f"misfit.{module_name}", fromlist=["register"])
        module.register(commands)
    return parser


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    return int(args.handler(args) or 0)


if __name__ == "__main__":
    sys.exit(main())
