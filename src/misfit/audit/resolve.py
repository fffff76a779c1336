"""A query (cell id, run id, config or cell digest, or a prefix of 8+ hex characters)
to the cell, seed and record it names.

records/<cell>.json in git answers first; the MLflow store, when there is one, answers
for runs no record names (and for restored copies, through their original run id).
"""
from __future__ import annotations

import re
from dataclasses import dataclass

from misfit.audit.cell import AuditedCell, audited_cell
from misfit.audit.sources import RECORDS_DIR, CellRecords, Project, record_path
from misfit.audit.store import ORIGINAL_RUN_ID, Store, original_id, record_from_run

MIN_PREFIX = 8
_HEX = re.compile(rf"[0-9a-f]{{{MIN_PREFIX},64}}")


class AuditError(RuntimeError):
    """The query names nothing, or more than one thing; the message says which."""


@dataclass
class Subject:
    cell: str
    seed: int | None
    subset_seed: int | None  # the data draw of the one run audited (None: the cell, or the main draw)
    matched_by: str
    matched: str
    record: AuditedCell
    from_store: bool  # the record was rebuilt from MLflow runs: records/<cell>.json does not name them


def _record_candidates(query: str, records: dict[str, CellRecords]) -> dict[tuple[str, str], tuple]:
    """{(kind, full value): (cell, seed or None, draw or None, None)} for what records/*.json name."""
    found: dict[tuple[str, str], tuple] = {}
    for cell, (record, _) in records.items():
        if record.parent_run_id.startswith(query):
            found[("run id", record.parent_run_id)] = (cell, None, None, None)
        if record.cell_digest.startswith(query):
            found[("cell digest", record.cell_digest)] = (cell, None, None, None)
        for run in record.runs:
            member = (cell, run.seed, run.subset_seed, None)
            if run.run_id.startswith(query):
                found[("run id", run.run_id)] = member
            if run.config_digest.startswith(query):
                found[("config digest", run.config_digest)] = member
    return found


def _store_candidates(query: str, store: Store, found: dict) -> dict:
    """What the store adds: runs no record names (each with its parent run)."""
    if len(query) == 32 and ("run id", query) not in found:
        run, _ = store.run(query)
        if run is not None and "cell" in run.data.tags:
            found.setdefault(("run id", original_id(run)), _placed(store, run))
    searches = (("cell_digest", "cell digest"), ("config_digest", "config digest"), (ORIGINAL_RUN_ID, "run id"))
    for tag, kind in searches:
        for run in store.search(f"tags.`{tag}` LIKE '{query}%'"):
            key = (kind, run.data.tags[tag])
            if key in found:
                continue
            # a seed run carries its cell's digest too: the parent stands for the cell
            if kind == "cell digest" and run.data.tags.get("misfit.level") == "seed":
                continue
            found[key] = _placed(store, run)
    return found


def _placed(store: Store, run) -> tuple:
    tags = run.data.tags
    if tags.get("misfit.level") == "seed":
        parent, _ = store.run(tags.get("mlflow.parentRunId", ""))
        if parent is None:
            raise AuditError(f"run {run.info.run_id} ({tags['cell']} seed {tags['seed']}) has no parent "
                             f"run in the MLflow store {store.uri}")
        draw = tags.get("subset_seed")
        return tags["cell"], int(tags["seed"]), int(draw) if draw and draw.isdigit() else None, parent
    return tags["cell"], None, None, run


def resolve(query: str, seed: int | None, project: Project, store: Store, draw: int | None = None) -> Subject:
    """`seed` (and `draw`, a further data draw's subset seed) narrow a cell to one run."""
    if query in project.record_cells() or query in project.cell_ids:
        return _for_cell(query, seed, draw, "cell id", query, project, store)
    hex_query = query.lower()
    if not _HEX.fullmatch(hex_query):
        raise AuditError(f"{query!r} is not a cell of params.yaml or {RECORDS_DIR}/, nor a run id or digest "
                         f"(at least {MIN_PREFIX} hex characters)")
    # a broken record is passed over here: it stops only an audit that finds nothing else
    records, broken = project.readable_records()
    found = _record_candidates(hex_query, records)
    if store.available:
        found = _store_candidates(hex_query, store, found)
    if not found:
        where = f"{RECORDS_DIR}/*.json" + ("" if not store.available else f" or the MLflow store {store.uri}")
        unread = "".join(f"\n  not searched: {error}" for error in broken)
        raise AuditError(f"no run id, config digest or cell digest in {where} starts with {hex_query!r}{unread}")
    if len(found) > 1:
        listing = "\n".join(f"  {kind} {value} ({cell}{'' if s is None else f' seed {s}'})"
                            for (kind, value), (cell, s, _, _) in sorted(found.items()))
        raise AuditError(f"{hex_query!r} is ambiguous; it starts:\n{listing}")
    (kind, value), (cell, found_seed, found_draw, parent) = next(iter(found.items()))
    if seed is not None and found_seed is not None and seed != found_seed:
        raise AuditError(f"{kind} {value} is seed {found_seed} of {cell}, not seed {seed}")
    seed = found_seed if found_seed is not None else seed
    draw = found_draw if found_draw is not None else draw
    records_of_cell = records.get(cell)
    if parent is None or (records_of_cell and original_id(parent) == records_of_cell[0].parent_run_id):
        return _for_cell(cell, seed, draw, kind, value, project, store)
    return _subject(cell, seed, draw, kind, value, record_from_run(store, parent), True)


def _for_cell(cell: str, seed, draw, kind: str, value: str, project: Project, store: Store) -> Subject:
    records = project.cell_records(cell)  # read now: this audit needs them, so a broken one stops it
    if records is not None:
        return _subject(cell, seed, draw, kind, value, audited_cell(*records), False)
    parents = store.search(f"tags.cell = '{cell}' and tags.`misfit.level` = 'cell'")
    if not parents:
        where = "" if not store.available else f" and no run in the MLflow store {store.uri}"
        raise AuditError(f"{cell}: no {record_path(cell)}{where} (it is written by the train stage and "
                         f"committed to git: git pull, or dvc repro train@{cell})")
    return _subject(cell, seed, draw, kind, value, record_from_run(store, parents[0]), True)


def _subject(cell, seed, draw, kind, value, record: AuditedCell, from_store: bool) -> Subject:
    main = record.main_draw
    if seed is not None and draw is None:
        draw = main  # a seed alone names the main draw's run
    runs = [r for r in record.runs if r.subset_seed == draw or draw is None]
    if draw is not None and not runs:
        draws = sorted({r.subset_seed for r in record.runs})
        raise AuditError(f"{cell} has no runs on data draw {draw}; its draws are {draws}")
    seeds = sorted({run.seed for run in runs})
    if seed is not None and seed not in seeds:
        on = "" if draw in (None, main) else f" on draw {draw}"
        raise AuditError(f"{cell} has no seed {seed}{on}; its runs are seeds {seeds}")
    return Subject(cell, seed, draw if seed is not None else None, kind, value, record, from_store)
