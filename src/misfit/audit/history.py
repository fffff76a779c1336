"""The checks of where a record came from: the git history behind it (the commit it names,
the train code changed since) and params.yaml against the values the run used."""
from __future__ import annotations

from pathlib import Path

import yaml

from misfit.audit.cell import AuditedCell
from misfit.audit.checks import Audit
from misfit.audit.facts import ABSENT
from misfit.audit.sources import (
    Project,
    record_path,
)
from misfit.core.layout import PARAMS_FILE
from misfit.core.record import TrainRecord

# -- git -------------------------------------------------------------------------------

def check_record_source(audit: Audit) -> bool:
    """Whether the record is the one git holds: True when the audit is traced from git alone."""
    path = record_path(audit.cell)
    if audit.from_store:
        on_disk = audit.root / path
        audit.disagree("record", f"{path} does not name this run"
                       + (" (the file is absent)" if not on_disk.exists() else
                          ": the cell's record in git comes from another train run")
                       + "; the values below come from the MLflow store")
        return False
    if not audit.project.committed_unchanged(path):
        audit.notes.append(f"{path} is not committed as it is here (new, or changed since HEAD): "
                           "the audit reads the working copy")
        return False
    return True


def check_commit(audit: Audit) -> None:
    commit, project = audit.tags.get("git_commit", "unknown"), audit.project
    if commit == "unknown":
        audit.disagree("commit", "the run recorded no git commit: the code version rests on the dep md5s alone")
    elif not project.has_commit(commit):
        audit.disagree("commit", f"the run's commit {commit} is not in this repository "
                       "(fetch it from where the run was made)", recorded=commit, head=project.head)
    elif project.head != commit:
        changed = train_files_changed_since(project, commit)
        since = ("; of the files the train stage depends on, none changed between them" if changed == [] else
                 f"; the train stage's files changed between them: {', '.join(changed)}" if changed else "")
        audit.disagree("commit", f"the run was made at commit {commit[:12]}, HEAD is "
                       f"{(project.head or 'unknown')[:12]}{since}", recorded=commit, head=project.head,
                       train_files_changed=changed)
    if audit.tags.get("git_dirty") == "true":
        # a dvc.lock or records file that the running `dvc repro` rewrote counts as well
        audit.disagree("dirty", "the run was made from a tree with uncommitted changes to tracked files "
                       "(dvc.lock rewritten by the same `dvc repro` counts too): the commit alone may not "
                       "hold its code; the dep md5s say what ran")


def train_files_changed_since(project: Project, commit: str) -> list[str] | None:
    """The train stage's file deps that differ between `commit` and HEAD (None: unknown)."""
    from misfit.audit.sources import git
    from misfit.core.provenance import train_code_files

    try:
        paths = train_code_files(project.root)
    except (OSError, KeyError, TypeError, yaml.YAMLError):
        return None
    diff = git(project.root, "diff", "--name-only", commit, "HEAD", "--", *paths)
    if diff is None or diff.returncode != 0:
        return None
    return diff.stdout.split()


# -- params.yaml -------------------------------------------------------------------------

def _flat_diff(prefix: str, recorded: dict, current: dict) -> list[dict]:
    differing = []
    for key in [*recorded, *(k for k in current if k not in recorded)]:
        was, now = recorded.get(key, ABSENT), current.get(key, ABSENT)
        if was != now:
            differing.append({"field": f"{prefix}.{key}", "recorded": was, "current": now})
    return differing


def params_diff(audit: Audit, params) -> list[dict]:
    """The fields of `params` (validated) that differ from what the run recorded."""
    return record_params_diff(audit.record, audit.cell, params)


def record_params_diff(record: AuditedCell | TrainRecord, cell: str, params) -> list[dict]:
    """The fields of `params` that differ from what `record` (a cell's record: the audit's, or the
    train record `misfit reproduce` reads; both name these fields alike) holds; also what
    `misfit reproduce` names when it trains with params.yaml."""
    differing = []
    if cell not in params.cells:
        differing.append({"field": f"cells.{cell}", "recorded": record.cell, "current": ABSENT})
        seeds = params.seeds  # what the cell would get back, without seeds of its own
    else:
        differing += _flat_diff(f"cells.{cell}", record.cell, params.cells[cell].model_dump())
        seeds = params.seeds_of(cell)
    differing += _flat_diff("protocol", record.protocol, params.protocol.model_dump())
    differing += _flat_diff("data", record.data.get("config", {}), params.data.model_dump())
    if record.seeds != seeds:
        differing.append({"field": "seeds", "recorded": record.seeds, "current": seeds})
    experiment = record.experiment
    if experiment and experiment != params.tracking.experiment:
        differing.append({"field": "tracking.experiment", "recorded": experiment,
                          "current": params.tracking.experiment})
    return differing


def listing(differing: list[dict], where: str = "params.yaml") -> str:
    return "; ".join(f"{d['field']}: recorded {d['recorded']!r}, {where} {d['current']!r}" for d in differing)


def check_params(audit: Audit):
    """params.yaml against the record; returns the validated params (None if unreadable)."""
    from misfit.core.config import ConfigError, load_params

    try:
        params = load_params(audit.root / PARAMS_FILE)
    except ConfigError as error:
        audit.disagree("params", f"params.yaml cannot be read as this project's parameters: {error}")
        return None
    differing = params_diff(audit, params)
    if differing:
        audit.disagree("params", "params.yaml differs from what the run recorded: " + listing(differing),
                       fields=differing)
    return params


def params_at_commit(audit: Audit, commit: str) -> list[dict]:
    """What params.yaml at the run's commit would change: a dirty tree's run had other values."""
    from misfit.audit.sources import git
    from misfit.core.config import ConfigError, parse_params

    shown = git(audit.root, "show", f"{commit}:{PARAMS_FILE}")
    if shown is None or shown.returncode != 0:
        return []
    source = Path(f"{commit[:12]}:{PARAMS_FILE}")
    try:
        params = parse_params(yaml.safe_load(shown.stdout), source)
    except (ConfigError, yaml.YAMLError) as error:
        audit.notes.append(f"{source} cannot be read as this project's parameters ({error}); "
                           "the commands below assume it holds the run's values")
        return []
    differing = params_diff(audit, params)
    if differing:
        audit.disagree("params_at_commit", f"{source} holds other values than the run used (its tree "
                       "was dirty): " + listing(differing, "there") + "; the commands below set the run's values",
                       fields=differing)
    return differing


