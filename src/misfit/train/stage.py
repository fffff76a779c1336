"""The train stage of one cell: training data in; its runs trained and recorded.

Outputs, all written only if the whole stage succeeds:
- models/<cell>/: each run's best checkpoint (DVC-cached, not in git);
- records/<cell>.json: every epoch of every run, each checkpoint's SHA-256, the MLflow run
  ids and the digests (misfit.core.record.TrainRecord; in git).
Every run is also an MLflow child run of the cell's parent run. The record names those
runs, so a copy that DVC restores from its run-cache still points at the right runs.
The stage reads no test image: evaluate@<cell> scores the checkpoints (misfit.evaluate).
"""
from __future__ import annotations

import json
import math
import os
import statistics
import time
import warnings
from pathlib import Path

import torch

from misfit.core.committed import CommittedOutputs
from misfit.core.config import CellConfig, Params, load_params
from misfit.core.errors import DataError
from misfit.core.files import atomic_dir, sha256_file
from misfit.core.layout import MODELS_DIR, PARAMS_FILE, RECORDS_DIR, SPLIT_DIR
from misfit.core.provenance import cell_digest, check_stage_inputs, config_digest, data_identity, git_state, versions
from misfit.core.record import RECORD_VERSION, Epoch, TrainedRun, TrainRecord, write_record
from misfit.core.study import recommended_in, studies_of
from misfit.core.tasks import TASKS
from misfit.data.load import CellData, load_cell_data
from misfit.data.split import draw_dir, read_split_manifest
from misfit.track.entries import (
    epoch_values,
    parent_status,
    parent_summary,
    parent_tags,
    run_status,
    trained_finals,
    trained_tags,
)
from misfit.track.runs import profile_name
from misfit.track.store import check_store, check_timeout, tracking_uri
from misfit.train.loop import CellTrainer, Member, SeedOutcome
from misfit.train.model import model_summary
from misfit.train.runtime import configure


def run_tags(cell_id: str, cell: CellConfig, root: Path, device: torch.device, digest: str,
             code_md5: dict[str, str]) -> dict[str, str]:
    studies = studies_of(cell_id)
    tags = {
        "cell": cell_id, "task": cell.task, "activation": cell.activation, "loss": cell.loss,
        "loss_input": cell.loss_input, "variant": cell.variant or "-",
        "study": ",".join(studies) or "-",
        "recommended": ",".join(s for s in studies if recommended_in(cell_id, s)) or "no",
        "dvc_stage": f"train@{cell_id}", "device": str(device), "threads": str(torch.get_num_threads()),
        "profile": profile_name(),
        "cell_digest": digest, **git_state(root),
    }
    tags.update({f"version.{name}": value for name, value in versions().items()})
    # what dvc.lock pins for this stage's code (in the train-inputs stage): the md5 of each file
    tags.update({f"dep.md5.{path}": md5 for path, md5 in code_md5.items()})
    return tags


def flat_params(cell: CellConfig, params: Params) -> dict:
    resolved = {f"cell.{k}": v for k, v in cell.model_dump().items()}
    resolved.update({f"protocol.{k}": v for k, v in params.protocol.model_dump().items()})
    resolved.update({f"data.{k}": v for k, v in params.data.model_dump().items()})
    return resolved


def run_name(cell_id: str, member: Member, main_subset_seed: int) -> str:
    if member.subset_seed == main_subset_seed:
        return f"{cell_id} seed={member.seed}"
    return f"{cell_id} draw={member.subset_seed} seed={member.seed}"


def checkpoint_name(member: Member, main_subset_seed: int) -> str:
    if member.subset_seed == main_subset_seed:
        return f"seed{member.seed}.pt"
    return f"subset{member.subset_seed}-seed{member.seed}.pt"


def mlflow_datasets(split_dir: Path, manifest: dict, data: CellData) -> list[tuple[object, dict[str, str]]]:
    """The train and valid splits as MLflow datasets identified by our own SHA-256.

    MLflow's automatic digest hashes only the first values of an array; ours covers
    every image, label and index of the split. MLflow keeps 36 characters of a digest,
    so the whole SHA-256 also goes into the input's `sha256` tag.
    """
    import mlflow.data

    datasets = []
    for name, split in (("train", data.train), ("valid", data.valid)):
        sha = manifest["splits"][name]["sha256"]
        with warnings.catch_warnings():  # MLflow registers two equal sources for local paths
            warnings.simplefilter("ignore", UserWarning)
            dataset = mlflow.data.from_numpy(
                split.x.cpu().numpy(), targets=split.y.cpu().numpy(),
                source=str((split_dir / f"{name}.npz").resolve()),
                name=f"mnist-{name}", digest=sha[:36],
            )
        datasets.append((dataset, {"mlflow.data.context": name, "sha256": sha, "n": str(len(split.x)),
                                   "subset_seed": str(manifest.get("subset_seed", "-"))}))
    return datasets


def progress_line(cell_id: str, epoch: int, outcomes: list[SeedOutcome]) -> str:
    """One line per epoch: how many runs go on and improved, the loss range, and by name
    every run whose loss or valid metric is not finite."""
    running = [o for o in outcomes if o.history and o.history[-1]["epoch"] == epoch]
    if epoch == 0 or not running:
        return f"{cell_id} epoch {epoch:3d} | {len(outcomes)} run(s)"
    improved = sum(o.history[-1]["improved"] for o in running)
    losses = [o.history[-1]["train_loss"] for o in running]
    finite = [v for v in losses if math.isfinite(v)]
    span = f"train loss {min(finite):.4g}..{max(finite):.4g}" if finite else "no finite train loss"
    line = f"{cell_id} epoch {epoch:3d} | {len(running)} running, {improved} improved | {span}"
    for o in running:
        last = o.history[-1]
        if not (math.isfinite(last["train_loss"]) and math.isfinite(last["valid_metric"])):
            draw = f"draw {o.subset_seed} " if o.subset_seed != outcomes[0].subset_seed else ""
            line += f" | {draw}seed {o.seed}: loss {last['train_loss']:.4g} valid {last['valid_metric']:.4g}"
    return line


class CellStage:
    """What one train stage knows: the cell, its runs, their data and identities."""

    def __init__(self, cell_id: str, root: Path):
        self.cell_id, self.root = cell_id, root
        self.params = load_params(root / PARAMS_FILE)
        self.cell = self.params.cell(cell_id)
        self.code_md5 = check_stage_inputs(root, "train")["md5"]
        check_store(tracking_uri(root), check_timeout())  # before anything is trained or written
        self.device = configure(self.params.protocol)
        self.main = self.params.data.subset_seed
        self.members = [Member(d, s) for d, s in self.params.members_of(cell_id)]
        self.subset_seeds = list(dict.fromkeys(m.subset_seed for m in self.members))
        self.split_dirs = {d: draw_dir(root / SPLIT_DIR, d, self.main) for d in self.subset_seeds}
        self.draws = {d: load_cell_data(root, self.params, self.cell, self.device, d) for d in self.subset_seeds}
        self.manifests = {d: read_split_manifest(self.split_dirs[d]) for d in self.subset_seeds}
        data_config = self.params.data.model_dump()
        self.identities = {d: data_identity(self.manifests[d], {**data_config, "subset_seed": d})
                           for d in self.subset_seeds}
        cell_fields, protocol = self.cell.model_dump(), self.params.protocol.model_dump()
        self.digest = cell_digest(cell_fields, protocol, {str(d): i for d, i in self.identities.items()})
        self.run_digests = {m: config_digest(cell_fields, protocol, self.identities[m.subset_seed], m.seed)
                            for m in self.members}
        self.metric = TASKS[self.cell.task].metric

    def open_runs(self, tags: dict[str, str]):
        from misfit.track.runs import CellRuns, mark_dead_runs_killed
        from misfit.track.store import open_experiment

        client, experiment_id = open_experiment(self.root, self.params.tracking.experiment)
        mark_dead_runs_killed(client, experiment_id)
        children = {
            m: (run_name(self.cell_id, m, self.main),
                {"seed": str(m.seed), "subset_seed": str(m.subset_seed), "config_digest": self.run_digests[m]},
                {"seed": m.seed, "data.subset_seed": m.subset_seed})
            for m in self.members
        }
        params = {**flat_params(self.cell, self.params), "seeds": self.params.seeds_of(self.cell_id),
                  "draws.subset_seeds": self.subset_seeds[1:]}
        return CellRuns(client, experiment_id, self.cell_id, children, tags, params)


class Phases:
    """Wall seconds of each part of the stage, for the record (bench/overhead.py reads them)."""

    def __init__(self, started: float):
        self.seconds: dict[str, float] = {}
        self.last = started

    def done(self, name: str) -> None:
        now = time.perf_counter()
        self.seconds[name] = now - self.last
        self.last = now


RETRAIN_ENV = "MISFIT_RETRAIN"


def refuse_an_accidental_retrain(stage: CellStage, committed: CommittedOutputs) -> None:
    """Stop if the committed record already holds this cell's runs for exactly this code,
    data and params: training is deterministic, so it would only make them again, for
    hours. What such a stage lacks is its checkpoints, which the DVC remote holds."""
    path = RECORDS_DIR / f"{stage.cell_id}.json"
    text = committed.committed.get(path)
    if text is None or os.environ.get(RETRAIN_ENV) == "1":
        return
    try:
        record = TrainRecord.model_validate(json.loads(text))
    except (ValueError, TypeError):
        return  # a record of other code: retraining is what is needed
    ran = {key.removeprefix("dep.md5."): md5 for key, md5 in record.tags.items() if key.startswith("dep.md5.")}
    if (record.cell_digest, record.seeds, record.experiment, ran, [(r.subset_seed, r.seed) for r in record.runs]) == (
            stage.digest, stage.params.seeds_of(stage.cell_id), stage.params.tracking.experiment, stage.code_md5,
            [(m.subset_seed, m.seed) for m in stage.members]):
        committed.restore()
        raise DataError(f"{path} (committed) already holds train@{stage.cell_id}'s runs for exactly this code, "
                        "data and params, so training again would only repeat them; its checkpoints are what is "
                        f"missing here: `dvc pull train@{stage.cell_id}` (or `dvc repro --pull`) fetches them. "
                        f"To train it again anyway: {RETRAIN_ENV}=1 dvc repro ...")


def train_cell(cell_id: str, root: Path = Path(".")) -> Path:
    started, started_ms = time.perf_counter(), int(time.time() * 1000)
    phases = Phases(started)
    committed = CommittedOutputs(root, [RECORDS_DIR / f"{cell_id}.json"])
    try:
        stage = CellStage(cell_id, root)
        refuse_an_accidental_retrain(stage, committed)
        return _train(stage, committed, phases, (started, started_ms))
    except BaseException as error:
        committed.restore()
        from misfit.track.runs import refused_write

        refused = refused_write(error, f"train@{cell_id}", tracking_uri(root))
        if refused is not None:
            raise refused from None
        raise


def _train(stage: CellStage, committed: CommittedOutputs, phases: Phases, started: tuple[float, int]) -> Path:
    cell_id, root = stage.cell_id, stage.root
    phases.done("params_data_check")
    tags = {**run_tags(cell_id, stage.cell, root, stage.device, stage.digest, stage.code_md5),
            "data_sha256": stage.manifests[stage.main]["dataset_sha256"]}
    runs = stage.open_runs(tags)
    phases.done("tracking_open_and_create_runs")
    print(f"{cell_id}: {len(stage.members)} run(s) on {stage.device}, parent run {runs.parent_id}", flush=True)

    from misfit.track.runs import killed_on_signal

    with killed_on_signal([runs, committed]):
        try:
            log_run_inputs(stage, runs)
            phases.done("tracking_summary_and_inputs")
            trainer = CellTrainer(stage.cell, stage.params.protocol, stage.members, stage.draws, stage.device)
            outcomes = trainer.run(lambda epoch, outcomes: log_epoch(stage, runs, epoch, outcomes))
            phases.done("training")
            return write_outputs(stage, runs, outcomes, tags, started, phases)
        except BaseException:
            runs.close_all("FAILED")
            raise


def log_run_inputs(stage: CellStage, runs) -> None:
    summary = model_summary(stage.cell.n_outputs, stage.cell.model_activation)
    runs.log_text(None, summary, "model_summary.txt")
    datasets = {d: mlflow_datasets(stage.split_dirs[d], stage.manifests[d], stage.draws[d])
                for d in stage.subset_seeds}
    for member in stage.members:
        runs.log_text(member, summary, "model_summary.txt")
        runs.log_inputs(member, datasets[member.subset_seed])


def log_epoch(stage: CellStage, runs, epoch: int, outcomes: list[SeedOutcome]) -> None:
    print(progress_line(stage.cell_id, epoch, outcomes), flush=True)
    # the previous epoch's writes (long done by now): a store that refused them stops the
    # stage here, not after the last epoch
    runs.wait_for_metrics()
    for outcome in outcomes:
        member = Member(outcome.subset_seed, outcome.seed)
        record = outcome.initial if epoch == 0 else (outcome.history or [{}])[-1]
        if record.get("epoch") != epoch:
            continue
        runs.log_metrics(member, epoch_values(Epoch(**record), stage.metric), step=epoch, wait=False)


def write_outputs(stage: CellStage, runs, outcomes: list[SeedOutcome], tags: dict,
                  started: tuple[float, int], phases: Phases) -> Path:
    """started: (perf_counter, wall-clock ms) at the stage's start."""
    root, cell_id, metric = stage.root, stage.cell_id, stage.metric
    out_dir = root / MODELS_DIR / cell_id
    trained = []
    with atomic_dir(out_dir) as staging:
        for outcome in outcomes:
            member = Member(outcome.subset_seed, outcome.seed)
            checkpoint, sha256 = None, None
            if outcome.best_state is not None:
                checkpoint = checkpoint_name(member, stage.main)
                torch.save(outcome.best_state, staging / checkpoint)
                sha256 = sha256_file(staging / checkpoint)
            run = TrainedRun(
                seed=outcome.seed, subset_seed=outcome.subset_seed, run_id=runs.child_ids[member],
                config_digest=stage.run_digests[member], status=outcome.status, error=outcome.error,
                best_epoch=outcome.best_epoch, valid_best=outcome.best_valid, epochs_run=len(outcome.history),
                checkpoint=checkpoint, checkpoint_sha256=sha256,
                initial=Epoch(**outcome.initial), history=[Epoch(**h) for h in outcome.history])
            trained.append(run)
            runs.log_metrics(member, trained_finals(run, metric))
            runs.set_tags(member, trained_tags(run))
            runs.close(member, run_status(run))
        _log_parent_summary(runs, trained, metric)
        phases.done("saving_checkpoints_and_closing_runs")
        write_record(root / RECORDS_DIR / f"{cell_id}.json", TrainRecord(
            version=RECORD_VERSION, cell_id=cell_id, cell=stage.cell.model_dump(), task=stage.cell.task,
            metric=metric, protocol=stage.params.protocol.model_dump(), data=stage.identities[stage.main],
            draws={str(d): stage.identities[d] for d in stage.subset_seeds[1:]},
            seeds=stage.params.seeds_of(cell_id), experiment=stage.params.tracking.experiment,
            parent_run_id=runs.parent_id, cell_digest=stage.digest, tags=tags, started_ms=started[1],
            seconds=time.perf_counter() - started[0], phases=phases.seconds, runs=trained))
    ok = [r.valid_best for r in trained if r.status == "ok" and r.subset_seed == stage.main]
    median = f"{statistics.median(ok):.4g}" if ok else "-"
    print(f"{cell_id}: {len(trained)} run(s), {sum(r.status != 'ok' for r in trained)} failed; "
          f"main draw's median valid {metric} {median}", flush=True)
    return out_dir


def _log_parent_summary(runs, trained: list[TrainedRun], metric: str) -> None:
    runs.log_metrics(None, parent_summary(trained, metric))
    runs.set_tags(None, parent_tags(trained))
    runs.close(None, parent_status(trained))
