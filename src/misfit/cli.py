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
    commands.choices["audit"].set_defaults(handler=audit_with_status)
    return parser


def audit_with_status(args: argparse.Namespace) -> int:
    """`misfit audit` as misfit.audit.main runs it, but exiting with the status its Facts give
    (non-zero when a checkpoint here is not the file its record hashed). misfit.audit.main
    returns 0 whenever it prints; once it returns `facts.exit_status` this can go."""
    from misfit.audit import AuditError, audit_facts
    from misfit.audit.render import render_json, render_text

    try:
        facts = audit_facts(args.root, args.query, args.seed, args.draw)
    except AuditError as error:
        print(f"error: {error}", file=sys.stderr)
        return 1
    print(render_json(facts) if args.json else render_text(facts), end="")
    return facts.exit_status


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    return int(args.handler(args) or 0)


if __name__ == "__main__":
    sys.exit(main())
