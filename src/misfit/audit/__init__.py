"""`misfit audit`: where a number came from, how to make it again, and whether the
records and the current tree still agree about it.

A query names a cell (`binary-softmax-ce`, optionally `--seed N`), an MLflow run
(parent or seed run; a unique prefix of 8+ hex characters, as the report prints them,
is enough) or a digest (config digest of one seed run, cell digest of all of them; full
or a unique prefix of 8+ hex characters).

A clone is enough: the answer comes from what git holds (records/<cell>.json,
metrics/<cell>.json, reports/results.json, dvc.lock, params.yaml). What the clone lacks
(checkpoints and data: DVC outputs; the MLflow runs) is listed with the command that
gets it. Where they are present, they are checked too, as is every point where the
files disagree with each other or with the working tree.

Read-only: the store is opened only when it exists, and nothing is written to it.

Modules: sources (the files) and store (MLflow) read, either into the typed cell of
`cell`; resolve finds what the query names; checks compare; build assembles the Facts
(facts); render prints them.
"""
from __future__ import annotations

import argparse
import sys
from pathlib import Path

from misfit.audit.build import build
from misfit.audit.facts import Facts
from misfit.audit.render import render_json, render_text
from misfit.audit.resolve import MIN_PREFIX, AuditError, resolve
from misfit.audit.sources import Project, RecordError
from misfit.audit.store import open_store

__all__ = ["AuditError", "audit", "audit_facts", "open_store", "register", "main", "render_text"]


def audit_facts(root: Path, query: str, seed: int | None = None, draw: int | None = None) -> Facts:
    project = Project(Path(root))
    store = open_store(project.root)
    try:
        subject = resolve(query.strip(), seed, project, store, draw)
    except RecordError as error:
        raise AuditError(str(error)) from error
    return build(project, store, query, subject)


def audit(root: Path, query: str, seed: int | None = None, draw: int | None = None) -> dict:
    """The audit as JSON-ready data (what `misfit audit --json` prints)."""
    return audit_facts(root, query, seed, draw).to_json()


def register(commands) -> None:
    parser = commands.add_parser(
        "audit", help="where a number came from and how to reproduce it (a clone is enough)",
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("query", help="cell id, MLflow run id, config digest or cell digest "
                        f"(full, or a unique prefix of at least {MIN_PREFIX} hex characters)")
    parser.add_argument("--seed", type=int, default=None, help="one seed of the cell (on the main data draw)")
    parser.add_argument("--draw", type=int, default=None,
                        help="with --seed: the run on this further data draw (its data.subset_seed)")
    parser.add_argument("--json", action="store_true", help="print JSON instead of text")
    parser.add_argument("-C", "--root", type=Path, default=Path("."), help="project root (default: .)")
    parser.set_defaults(handler=main)


def main(args: argparse.Namespace) -> int:
    try:
        facts = audit_facts(args.root, args.query, args.seed, args.draw)
    except AuditError as error:
        print(f"error: {error}", file=sys.stderr)
        return 1
    print(render_json(facts) if args.json else render_text(facts), end="")
    return facts.exit_status  # non-zero when a checkpoint here is not the file its record hashed
