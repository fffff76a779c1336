"""From a resolved query to the Facts: the record's values, the checks, the commands."""
from __future__ import annotations

import math
import os
import shlex
import statistics

from misfit.audit import checks, history
from misfit.audit.cell import AuditedCell, AuditedRun
from misfit.audit.checks import Audit, prefixed
from misfit.audit.facts import ABSENT, Facts, Match, SeedRun
from misfit.audit.resolve import Subject
from misfit.audit.sources import Project, record_path
from misfit.audit.store import Store
from misfit.core.layout import EVALUATIONS_DIR

ENV_MIRROR, ENV_MANIFEST = "MNIST_MIRROR", "MNIST_MANIFEST"


def summarize(values: list) -> dict:
    """As metrics/<cell>.json writes it (misfit.evaluate.score.summarize, which would import torch
    into every audit): mean, sample sd, median, min, max, n of the finite values."""
    finite = [v for v in values if isinstance(v, (int, float)) and math.isfinite(v)]
    if not finite:
        return {"mean": None, "sd": None, "median": None, "min": None, "max": None, "n": 0}
    return {"mean": statistics.fmean(finite), "sd": statistics.stdev(finite) if len(finite) > 1 else None,
            "median": statistics.median(finite), "min": min(finite), "max": max(finite), "n": len(finite)}


def rescored(run: AuditedRun, from_store: bool) -> dict | None:
    """evaluate@'s re-scoring as the audit shows it: valid_best, test, matches_record (all None for a
    run not re-scored) and calibration; None for a run from the store, which holds no re-scoring."""
    if from_store:
        return None
    scored = run.evaluated
    if scored is None:
        return {"valid_best": None, "test": None, "matches_record": None}
    return {"valid_best": scored.valid, "test": scored.test, "matches_record": scored.matches_record,
            "calibration": scored.calibration.model_dump() if scored.calibration else None}


def seed_run(run: AuditedRun, checkpoint_states: dict[str, str], from_store: bool) -> SeedRun:
    return SeedRun(
        seed=run.seed, subset_seed=run.subset_seed, status=run.status, error=run.error,
        valid_best=run.valid_best, test=run.test, best_epoch=run.best_epoch,
        epochs_run=run.epochs_run, run_id=run.run_id, config_digest=run.config_digest,
        checkpoint=run.checkpoint, rescored=rescored(run, from_store),
        checkpoint_sha256=run.checkpoint_sha256, checkpoint_check=checkpoint_states.get(run.checkpoint))


def build(project: Project, store: Store, query: str, subject: Subject) -> Facts:
    record = subject.record
    audit = Audit(project, store, subject.cell, subject.seed, record, subject.from_store)
    # the runs of the audited number: one seed, or all; every data draw the record holds
    runs = [r for r in record.runs if subject.seed in (None, r.seed)
            and subject.subset_seed in (None, r.subset_seed)]
    main = [r for r in record.runs if r.subset_seed in (None, record.main_draw)]
    summary = {key: summarize([getattr(r, key) for r in main if r.status == "ok"])
               for key in ("valid_best", "test", "best_epoch")}

    traced = history.check_record_source(audit)
    history.check_commit(audit)
    params = history.check_params(audit)
    dataset_source = checks.check_data(audit)
    checkpoint_states = checks.check_checkpoints(audit, runs)
    published = checks.check_metrics_file(audit, summary)
    report = checks.check_report(audit)
    checks.check_runs(audit)
    checks.check_lock_and_code(audit)

    tags, metric = audit.tags, record.metric
    experiment = record.experiment
    return Facts(
        query=query, matched=Match(subject.matched_by, subject.matched), cell=subject.cell,
        seed=subject.seed, draw=subject.subset_seed,
        source=(f"MLflow run {record.parent_run_id}" if subject.from_store else str(record_path(subject.cell))),
        traced_from_git=traced,
        configuration={"cell": record.cell, "protocol": record.protocol,
                       "data": record.data.get("config", {}), "seeds": record.seeds,
                       "seed": subject.seed, "experiment": experiment},
        digests={"cell": record.cell_digest, "config": {str(r.seed): r.config_digest for r in runs
                                                        if r.subset_seed in (None, record.main_draw)}},
        data_identity={"dataset_sha256": record.data.get("dataset_sha256"),
                       "splits": record.data.get("splits", {}), "draws": record.draws},
        code={"git_commit": tags.get("git_commit"), "git_dirty": tags.get("git_dirty"),
              "dep_md5": prefixed(tags, "dep.md5."), "dvc_lock_md5": checks.pinned_code(audit),
              "versions": prefixed(tags, "version."), "device": tags.get("device"), "threads": tags.get("threads")},
        metrics={"metric": metric, "better": "higher" if metric == "accuracy" else "lower",
                 "main_draw": record.main_draw,
                 "seeds": [seed_run(r, checkpoint_states, subject.from_store) for r in runs],
                 "summary": summary,
                 "published": published, "report": report},
        mlflow=mlflow_section(audit, experiment, params, runs),
        reproduce=reproduce(audit, runs, dataset_source),
        missing=audit.missing, disagreements=audit.disagreements, notes=audit.notes,
    )


def mlflow_section(audit: Audit, experiment: str | None, params, runs: list[AuditedRun]) -> dict:
    record, store = audit.record, audit.store
    section = {"tracking_uri": store.uri, "store": "here" if store.available else store.problem,
               "experiment": experiment, "experiment_id": None, "parent_run_id": record.parent_run_id,
               "seed_run_ids": {_seed_key(r, record): r.run_id for r in runs}, "restored": {}}
    if not store.available:
        return section
    parent, _ = audit.run_states.get(record.parent_run_id) or store.run(record.parent_run_id)
    if parent is not None:
        section["experiment_id"] = parent.info.experiment_id
    elif experiment:
        found = store.client.get_experiment_by_name(experiment)
        section["experiment_id"] = found.experiment_id if found else None
    # in a restored store the runs have new ids; the original ids map to them
    section["restored"] = {rid: run.info.run_id for rid, (run, state) in audit.run_states.items()
                           if state == "restored"}
    base = params.tracking.ui_base_url if params is not None else None
    if base and section["experiment_id"] is not None:
        ids = [record.parent_run_id, *section["seed_run_ids"].values()]
        section["links"] = {rid: f"{base.rstrip('/')}/#/experiments/{section['experiment_id']}/runs/"
                                 f"{section['restored'].get(rid, rid)}" for rid in ids}
    return section


def _seed_key(run: AuditedRun, record: AuditedCell) -> str:
    """"<seed>" for the main draw; "draw <d> seed <seed>" for a further one."""
    draw = run.subset_seed
    return str(run.seed) if draw in (None, record.main_draw) else f"draw {draw} seed {run.seed}"


def reproduce(audit: Audit, runs: list[AuditedRun], dataset_source: str | None) -> dict:
    """How to make the numbers again: `misfit reproduce <run id>` per run (one run trains in about
    a minute, in a scratch directory, and is compared number for number with the record), and the
    whole cell retrained through DVC at the run's commit."""
    env = _reproduce_env(audit, dataset_source)
    device = audit.tags.get("device", "")
    if device.startswith("cuda"):
        audit.notes.append(f"the run trained on {device}: elsewhere expect agreement within float "
                           "tolerance, not bit-identity")
    drifted = sorted({d.kind for d in audit.disagreements} & {"params", "code"})
    if drifted:
        audit.notes.append(f"misfit reproduce trains this working tree's code with its params.yaml, and the "
                           f"disagreements above ({', '.join(drifted)}) say they are not the run's: it will name "
                           "the difference; the whole-cell commands check out the run's commit instead")
    commands = [_export(env),
                "dvc repro label-derive   # the run's data (data/split, data/labels, data/test); or dvc pull them",
                *(f"misfit reproduce {run.run_id}" for run in runs)]
    return {"env": env, "commands": commands, "whole_cell": {"commands": _whole_cell(audit, env)},
            "expect": {"file": str(EVALUATIONS_DIR / f"{audit.cell}.json"), "field": "runs[].test",
                       "test": {_seed_key(r, audit.record): r.test for r in runs}}}


def _reproduce_env(audit: Audit, dataset_source: str | None) -> dict[str, str]:
    env = {"PYTHONPATH": "src"}  # the checkout's own code, whichever copy of misfit is installed
    mirror = os.environ.get(ENV_MIRROR)
    env[ENV_MIRROR] = mirror or "<directory holding the four MNIST IDX files>"
    if not mirror:
        audit.notes.append(f"{ENV_MIRROR} is not set here: without it the download stage fetches "
                           "MNIST with torchvision (internet needed)")
    if dataset_source and dataset_source != "official MNIST":
        env[ENV_MANIFEST] = dataset_source
    elif os.environ.get(ENV_MANIFEST):
        env[ENV_MANIFEST] = os.environ[ENV_MANIFEST]
    threads = str(audit.tags.get("threads", ""))
    if not audit.record.protocol.get("threads") and threads.isdigit():
        # protocol.threads 0 takes torch's default, the core count: fix it to what the run had
        env["OMP_NUM_THREADS"] = threads
    return env


def _export(env: dict[str, str]) -> str:
    return "export " + " ".join(f"{k}={_quote(v)}" for k, v in env.items())


def _whole_cell(audit: Audit, env: dict[str, str]) -> list[str]:
    """Every run of the cell retrained and re-scored by its DVC stages, at the run's commit
    (new MLflow runs; rewrites models/<cell>/, records/ and evaluations/)."""
    commit, cell = audit.tags.get("git_commit", "unknown"), audit.cell
    # deliberate: train@ refuses to repeat a committed record's runs otherwise (misfit.train.stage)
    commands = [f"git checkout {commit}" if commit != "unknown"
                else "# no commit recorded: check out the code whose md5s are listed above",
                _export({**env, "MISFIT_RETRAIN": "1"})]
    restore = history.params_at_commit(audit, commit) if commit != "unknown" else []
    if restore:
        # dvc exp run -S writes the run's values into params.yaml before anything runs, so
        # split and labels follow them too; --force reruns what DVC would skip
        settings = " ".join("-S " + shlex.quote(_override(d)) for d in restore)
        return commands + [f"dvc exp run --force {settings} evaluate@{cell}"]
    # --force: rerun even when DVC's run-cache or up-to-date outputs would skip training
    return commands + ["dvc repro label-derive train-inputs evaluate-inputs",
                       f"dvc repro --force --single-item train@{cell} evaluate@{cell}"]


def _quote(value: str) -> str:
    return value if value.startswith("<") else shlex.quote(value)


def _override(differing: dict) -> str:
    """One `dvc exp run -S` override (Hydra's grammar) that puts the run's value back."""
    if differing["recorded"] == ABSENT:
        return f"~{differing['field']}"
    add = "+" if differing["current"] == ABSENT else ""  # Hydra adds a key only when told to
    return f"{add}{differing['field']}={_hydra(differing['recorded'])}"


def _hydra(value) -> str:
    import json

    if value is None:
        return "null"
    if isinstance(value, bool):
        return str(value).lower()
    if isinstance(value, (int, float)):
        return repr(value)
    if isinstance(value, list):
        return "[" + ",".join(map(_hydra, value)) + "]"
    if isinstance(value, dict):
        return "{" + ",".join(f"{key}:{_hydra(item)}" for key, item in value.items()) + "}"
    return json.dumps(str(value))  # quoted: "none" and "null" stay strings
