"""Each check compares one source with the record and reports into an `Audit`:
a Disagreement (the sources contradict each other), a Missing item (the checkout lacks
something; not an error in a fresh clone) or a note.
"""
from __future__ import annotations

import math
from dataclasses import dataclass, field
from pathlib import Path

import yaml

from misfit.audit.cell import AuditedCell, AuditedRun
from misfit.audit.facts import ABSENT, CHECKPOINT_KIND, Disagreement, Missing
from misfit.audit.sources import (
    LOCK_FILE,
    RESULTS_FILE,
    Project,
    record_path,
    run_ids_in,
)
from misfit.audit.store import Store
from misfit.core.files import read_json, sha256_file
from misfit.core.layout import METRICS_DIR, MODELS_DIR, SPLIT_DIR

# the metrics file summarises the re-scored checkpoints, the record the training run's own
# scores: they agree to this (the tolerance the re-scoring itself is checked with)
SUMMARY_TOLERANCE = 1e-6
RESTORE_COMMAND = "misfit restore-runs"


@dataclass
class Audit:
    """What the checks share, and what they found."""
    project: Project
    store: Store
    cell: str
    seed: int | None
    record: AuditedCell
    from_store: bool
    disagreements: list[Disagreement] = field(default_factory=list)
    missing: list[Missing] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)
    referenced: dict[str, set[str]] = field(default_factory=dict)  # run id -> the files that name it
    run_states: dict[str, tuple] = field(default_factory=dict)  # run id -> (run or None, state)

    @property
    def root(self) -> Path:
        return self.project.root

    @property
    def tags(self) -> dict:
        return self.record.tags

    @property
    def record_name(self) -> str:
        return "the MLflow store" if self.from_store else str(record_path(self.cell))

    def disagree(self, kind: str, message: str, **details) -> None:
        self.disagreements.append(Disagreement(kind, message, details))

    def refer(self, run_id: str, where: str) -> None:
        if run_id:
            self.referenced.setdefault(run_id, set()).add(where)


# -- data, checkpoints: DVC outputs, absent from a fresh clone ----------------------------

def check_data(audit: Audit) -> str | None:
    """data/split against the record's data identity; returns the dataset source it names."""
    current = audit.project.split_manifest
    recorded = audit.record.data
    if current is None:
        audit.missing.append(Missing(
            f"{SPLIT_DIR}/ (the images the runs trained on)",
            "a DVC output, not in git: its SHA-256s above come from the record and cannot be "
            "checked against data here",
            ["dvc pull data/split   # from the project's DVC remote, if it has one",
             "dvc repro label-derive   # or rebuild it from MNIST (see reproduce)"]))
        return None
    differing = []
    if recorded.get("dataset_sha256") != current.get("dataset_sha256"):
        differing.append(f"dataset sha256 recorded {recorded.get('dataset_sha256')}, "
                         f"now {current.get('dataset_sha256')}")
    for name, split in (recorded.get("splits") or {}).items():
        now = (current.get("splits") or {}).get(name, {})
        if split.get("sha256") != now.get("sha256"):
            differing.append(f"{name} split sha256 recorded {split.get('sha256')}, now {now.get('sha256')}")
    if differing:
        audit.disagree("data", f"{SPLIT_DIR} holds other data than the run used: " + "; ".join(differing))
    return current.get("dataset_source")


VERIFIED, DIFFERS, ABSENT_FILE, UNHASHED = "verified", "differs", "absent", "no hash recorded"


def check_checkpoints(audit: Audit, runs: list[AuditedRun]) -> dict[str, str]:
    """Each checkpoint the runs name: one present is hashed and compared with the SHA-256 the
    record holds (a file that differs is a disagreement: the audit must not vouch for a file it
    never read); one absent is listed as missing, with how to get it.

    Returns {checkpoint file name: VERIFIED | DIFFERS | ABSENT_FILE | UNHASHED}."""
    states = {run.checkpoint: _checkpoint_state(audit, run) for run in runs if run.checkpoint}
    unhashed = [name for name, state in states.items() if state == UNHASHED]
    if unhashed:
        # records older than checkpoint hashes: nothing to compare with, which is not a contradiction
        audit.notes.append(f"{audit.record_name} holds no SHA-256 for {len(unhashed)} checkpoint(s) "
                           f"({', '.join(unhashed)}): they are present but not verified")
    absent = [name for name, state in states.items() if state == ABSENT_FILE]
    if absent:
        _missing_checkpoints(audit, absent)
    return states


def _checkpoint_state(audit: Audit, run: AuditedRun) -> str:
    path = audit.project.checkpoint(audit.cell, run.checkpoint)
    if not path.is_file():
        return ABSENT_FILE
    expected = run.checkpoint_sha256
    if not expected:
        return UNHASHED
    actual = sha256_file(path)
    if actual == expected:
        return VERIFIED
    shown = path.relative_to(audit.root)
    audit.disagree(CHECKPOINT_KIND, f"{shown}: SHA-256 {actual}, but {audit.record_name} says {expected} "
                   f"(draw {run.subset_seed} seed {run.seed}): the file is not the checkpoint training "
                   f"saved (dvc checkout {shown.parent} restores it from the DVC cache, dvc pull from the remote)",
                   file=str(shown), expected=expected, actual=actual, run_id=run.run_id)
    return DIFFERS


def _missing_checkpoints(audit: Audit, absent: list[str]) -> None:
    folder = MODELS_DIR / audit.cell
    pinned = (audit.project.lock_stage(f"train@{audit.cell}") or {}).get("outs") or []
    md5 = next((out.get("md5") for out in pinned if out.get("path") == str(folder)), None)
    audit.missing.append(Missing(
        f"{folder}/: {len(absent)} checkpoint(s) ({', '.join(absent)})",
        "DVC outputs, not in git" + (f" (dvc.lock pins {folder} as md5 {md5})" if md5 else ""),
        [f"dvc pull train@{audit.cell}   # from the project's DVC remote, if it has one (dvc remote list)",
         f"dvc repro train@{audit.cell}   # or retrain: see reproduce"]))


# -- metrics/ and reports/: the published numbers -----------------------------------------

def _close(a, b) -> bool:
    if a is None or b is None:
        return a is None and b is None
    a, b = float(a), float(b)  # json_safe writes inf and nan as strings
    if math.isnan(a) or math.isnan(b):
        return math.isnan(a) and math.isnan(b)
    return math.isclose(a, b, rel_tol=SUMMARY_TOLERANCE, abs_tol=SUMMARY_TOLERANCE)


def check_metrics_file(audit: Audit, summary: dict) -> dict | None:
    """metrics/<cell>.json (numbers only) against the summary of the record's runs."""
    path = METRICS_DIR / f"{audit.cell}.json"
    metrics = audit.project.metrics(audit.cell)
    if metrics is None:
        audit.notes.append(f"{path} is absent: train@{audit.cell} has not run here")
        return None
    differing = []
    for key in ("test", "valid_best"):
        published, recomputed = metrics.get(key) or {}, summary[key]
        if published.get("n") != recomputed["n"] or not _close(published.get("mean"), recomputed["mean"]):
            differing.append(f"{key} mean {published.get('mean')} (n={published.get('n')}) against "
                             f"{recomputed['mean']} (n={recomputed['n']}) from the record")
    if differing:
        audit.disagree("metrics", f"{path} does not summarise the runs of {audit.record_name}: "
                       + "; ".join(differing) + f" (stale: dvc repro train@{audit.cell})")
    return {"file": str(path), **{k: v for k, v in metrics.items() if k not in ("cell", "task", "metric")}}


def check_report(audit: Audit) -> dict | None:
    """reports/results.json: does it name the record's runs for this cell, with their values?"""
    entry = audit.project.results_entry(audit.cell)
    if entry is None:
        if audit.project.results is not None:
            audit.notes.append(f"{RESULTS_FILE} has no entry for {audit.cell}")
        return None
    named = run_ids_in(entry)
    for run_id in sorted(named):  # a set: sorted, or the audit's lines change order between calls
        audit.refer(run_id, str(RESULTS_FILE))
    runs = {run.run_id: run for run in audit.record.runs}
    recorded = {audit.record.parent_run_id, *runs}
    if named and not named <= recorded:
        others = sorted(named - recorded)
        audit.disagree("report", f"{RESULTS_FILE} names runs for {audit.cell} that {audit.record_name} does not "
                       f"({', '.join(others)}): the report is stale (dvc repro report)", run_ids=others)
    # each run the report lists must carry the record's test value
    differing = [row["run_id"] for row in entry.get("runs") or [] if isinstance(row, dict)
                 and row.get("run_id") in runs and not _close(row.get("test"), runs[row["run_id"]].test)]
    if differing:
        audit.disagree("report", f"{RESULTS_FILE} shows other test values than {audit.record_name} for runs "
                       f"{', '.join(differing)}: the report is stale (dvc repro report)", run_ids=differing)
    return {"file": str(RESULTS_FILE), "modes": entry.get("modes"),
            "test": {"mean": entry.get("mean"), "sd": entry.get("sd"), "n": entry.get("n")}}


# -- dvc.lock and the code ----------------------------------------------------------------

def pinned_code(audit: Audit) -> dict[str, str] | None:
    """The md5 of each train-code file that data/train_inputs.json lists: dvc.lock pins that file
    (the train-inputs stage's output, each train@<cell>'s dependency) and, through it, the code
    (None: dvc.lock has no entry for the cell)."""
    from misfit.core.layout import TRAIN_INPUTS

    if audit.project.lock_stage(f"train@{audit.cell}") is None:
        return None
    try:
        return dict(read_json(audit.root / TRAIN_INPUTS)["md5"])
    except (OSError, ValueError, KeyError, TypeError):
        return {}


def _code_manifest_md5s(audit: Audit) -> tuple[str | None, str | None]:
    """(md5 of data/train_inputs.json that train@<cell> ran against, md5 train-inputs wrote last)."""
    from misfit.core.layout import TRAIN_INPUTS
    from misfit.core.provenance import TRAIN_INPUTS_STAGE

    def md5_of(entry: dict | None, key: str) -> str | None:
        return next((d.get("md5") for d in (entry or {}).get(key, []) if d["path"] == str(TRAIN_INPUTS)), None)
    return (md5_of(audit.project.lock_stage(f"train@{audit.cell}"), "deps"),
            md5_of(audit.project.lock_stage(TRAIN_INPUTS_STAGE), "outs"))


def check_lock_and_code(audit: Audit) -> None:
    from misfit.core.provenance import md5_of_files, train_code_files

    recorded = prefixed(audit.tags, "dep.md5.")
    stage = f"train@{audit.cell}"
    pinned = pinned_code(audit)
    if pinned is None:
        audit.notes.append(f"{LOCK_FILE} has no {stage} entry: DVC has not recorded this stage here")
    else:
        differing = [{"path": path, "dvc_lock": pinned.get(path, ABSENT), "run": recorded.get(path, ABSENT)}
                     for path in sorted(set(pinned) | set(recorded)) if pinned.get(path) != recorded.get(path)]
        if differing:
            text = "; ".join(f"{d['path']} (dvc.lock {d['dvc_lock']}, run {d['run']})" for d in differing)
            audit.disagree("dvc_lock", f"data/train_inputs.json (pinned by dvc.lock) lists other code than the run "
                           f"recorded: {text}",
                           files=differing)
        ran_against, written = _code_manifest_md5s(audit)
        if ran_against != written:
            audit.disagree("dvc_lock", f"dvc.lock's {stage} ran against data/train_inputs.json md5 {ran_against}, "
                           f"train-inputs pins {written}: the cell was trained with other code or shared params "
                           "than train-inputs lists (dvc repro would retrain it)", files=[])
    try:
        current = md5_of_files(audit.root, train_code_files(audit.root))
    except (OSError, KeyError, TypeError, yaml.YAMLError) as error:
        audit.notes.append(f"cannot hash the train stage's code in the working tree: {error}")
        return
    changed = [{"path": path, "now": current.get(path, ABSENT), "run": recorded.get(path, ABSENT)}
               for path in sorted(set(current) | set(recorded)) if current.get(path) != recorded.get(path)]
    if changed:
        audit.disagree("code", f"the working tree's train code differs from the run's: "
                       f"{', '.join(d['path'] for d in changed)} (dvc repro would retrain {audit.cell})",
                       files=changed)


def prefixed(tags: dict, prefix: str) -> dict:
    return {k[len(prefix):]: v for k, v in sorted(tags.items()) if k.startswith(prefix)}


# -- the MLflow store ---------------------------------------------------------------------

def check_runs(audit: Audit) -> None:
    """Every run id the record and the published files name, looked up in the store."""
    store = audit.store
    record = audit.record
    audit.refer(record.parent_run_id, audit.record_name)
    for run in record.runs:
        audit.refer(run.run_id, audit.record_name)
    if not store.available:
        audit.missing.append(Missing(
            f"the MLflow runs ({len(audit.referenced)} run ids above)",
            f"{store.problem}: the runs' params, tags and per-epoch metrics are all in "
            f"{record_path(audit.cell)} (shown here), the store only makes them browsable",
            [f"{RESTORE_COMMAND}   # rebuild a browsable store from records/ (new run ids, each tagged "
             "with its original one), then: misfit ui",
             "# or: export MLFLOW_TRACKING_URI=<the team's tracking server>"]))
        return
    roles = {record.parent_run_id: "parent run"}
    roles.update({r.run_id: (f"seed {r.seed} run" if r.subset_seed in (None, record.main_draw)
                             else f"draw {r.subset_seed} seed {r.seed} run") for r in record.runs})
    expected = {r.run_id: r for r in record.runs}
    # the record's order (parent, then each run as trained), then any other id the files name
    order = [record.parent_run_id, *expected]
    ordered = [i for i in order if i in audit.referenced] + sorted(set(audit.referenced) - set(order))
    for run_id in ordered:
        where = audit.referenced[run_id]
        run, state = store.run(run_id)
        audit.run_states[run_id] = (run, state)
        named = f"{roles.get(run_id, 'run')} {run_id} (named in {', '.join(sorted(where))})"
        if state == "missing":
            audit.disagree("missing_run", f"{named} is not in the MLflow store {store.uri} "
                           f"({RESTORE_COMMAND} restores it from git)", run_id=run_id, state=state)
        elif state == "deleted":
            audit.disagree("missing_run", f"{named} is deleted in the MLflow store (lifecycle 'deleted'; "
                           f"`mlflow runs restore --run-id {run.info.run_id}` brings it back until `mlflow gc`)",
                           run_id=run_id, state=state)
        elif run_id in expected and not audit.from_store:
            _compare_run(audit, run, expected[run_id])


def _compare_run(audit: Audit, run, recorded: AuditedRun) -> None:
    """An MLflow run (`run`) against the record's run it stands for."""
    tags, metric = run.data.tags, audit.record.metric
    differing = []
    if tags.get("cell") != audit.cell:
        differing.append(f"cell tag {tags.get('cell')!r}")
    if recorded.config_digest and tags.get("config_digest") != recorded.config_digest:
        differing.append(f"config digest {tags.get('config_digest')}")
    stored = run.data.metrics.get(f"test_{metric}")
    if isinstance(recorded.test, float) and stored is not None and stored != recorded.test:
        differing.append(f"test_{metric} {stored!r} (record {recorded.test!r})")
    if differing:
        audit.disagree("run_mismatch", f"MLflow run {run.info.run_id} (seed {recorded.seed}) has "
                       + ", ".join(differing) + f" unlike {audit.record_name}", run_id=run.info.run_id)
