"""`misfit restore-runs`: a browsable MLflow store rebuilt from what git holds, no training.

records/<cell>.json holds everything a cell's MLflow runs held except the checkpoints:
the resolved parameters, the tags (commit, digests, code md5s, versions), every epoch of
every run, the final and re-scored metrics, the data identity. This logs it again, one
parent run per cell and one child run per training run, with MLflow's own client.

MLflow gives every new run a new id (its API has no way to choose one), so each restored
run carries its original id in the tag `misfit.original_run_id`, with `misfit.restored`
= true and the commit its record was read at; `misfit audit <original id>` finds it.
Runs already in the store (restored before, or the originals themselves) are skipped.
A local SQLite store is written in memory-backed scratch space and copied into place at the
end (see `staged`): faster, and a failed restore leaves the store as it was.

Why not mlflow-export-import: it imports only its own export format (run.json written by
its exporter from a live store); a clone has no store to export from, so we would write
that format by hand from the records and still log everything through MLflow's client.
"""
from __future__ import annotations

import argparse
import contextlib
import functools
import json
import os
import shutil
import sqlite3
import sys
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Iterator

from misfit.audit.sources import Project, RecordError, git_out, record_path
from misfit.audit.store import ORIGINAL_RUN_ID, RESTORED
from misfit.core.errors import DataError
from misfit.core.layout import EVALUATIONS_DIR, RECORDS_DIR
from misfit.core.record import (
    EvaluatedRun,
    EvaluationRecord,
    TrainedRun,
    TrainRecord,
)
from misfit.joined import load_cell_records
from misfit.track.entries import (
    epoch_values,
    evaluation_numbers,
    evaluation_tags,
    parent_status,
    parent_summary,
    parent_tags,
    run_status,
    trained_finals,
    trained_tags,
)

# MLflow's limits for one log_batch call
MAX_ENTITIES_PER_BATCH = 1000  # metrics, params and tags together
MAX_PARAMS_TAGS_PER_BATCH = 100
SPLITS = ("train", "valid", "test")
SCRATCH = Path("/dev/shm")  # memory-backed on Linux; elsewhere the default temp dir


@dataclass
class Restored:
    uri: str
    experiment_ids: set[str] = field(default_factory=set)
    cells: int = 0
    runs: int = 0
    checkpoints: int = 0  # attached to their runs: those present in the work tree
    models: int = 0  # of those, attached as MLflow Models (the data they need is here too)
    registered: int = 0  # cells whose best run is misfit-<cell>@best
    skipped: int = 0
    seconds: float = 0.0


def flat_params(record: TrainRecord) -> dict[str, str]:
    """The parent's params as the train stage logs them (misfit.train.stage.flat_params):
    cell.*, protocol.*, data.* of the main draw, seeds, draws.subset_seeds (str(value):
    MLflow keeps strings)."""
    flat = {f"cell.{k}": v for k, v in record.cell.items()}
    flat.update({f"protocol.{k}": v for k, v in record.protocol.items()})
    flat.update({f"data.{k}": v for k, v in (record.data.get("config") or {}).items()})
    flat.update({"seeds": record.seeds, "draws.subset_seeds": [int(d) for d in record.draws]})
    return {key: str(value) for key, value in flat.items()}


def main_draw(record: TrainRecord) -> int | None:
    return (record.data.get("config") or {}).get("subset_seed")


def metrics_at(values: dict[str, float], stamp: int, step: int) -> list:
    from mlflow.entities import Metric

    return [Metric(k, v, stamp, step) for k, v in values.items()]


def epoch_metrics(run: TrainedRun, metric: str, start_ms: int) -> list:
    """What the train stage logs per epoch (misfit.track.entries.epoch_values): `initial` at
    step 0, then each epoch at its number. The records hold each epoch's duration, not its
    wall time: timestamps are the stage's start plus the epochs' seconds."""
    found, clock = [], 0.0
    for epoch in [run.initial, *run.history]:
        clock += epoch.seconds or 0.0
        found += metrics_at(epoch_values(epoch, metric), int(start_ms + clock * 1000), epoch.epoch)
    return found


def dataset_inputs(identity: dict, split_dir: Path) -> list:
    """The splits as MLflow dataset inputs, identified by our SHA-256 as the train stage logs them."""
    from mlflow.entities import Dataset, DatasetInput, InputTag

    inputs = []
    for name in SPLITS:
        split = (identity.get("splits") or {}).get(name)
        if not split or not split.get("sha256"):
            continue
        dataset = Dataset(name=f"mnist-{name}", digest=split["sha256"][:36], source_type="local",
                          source=json.dumps({"uri": str(split_dir / f"{name}.npz")}))
        tags = {"mlflow.data.context": name, "sha256": split["sha256"], "n": str(split.get("n"))}
        inputs.append(DatasetInput(dataset, tags=[InputTag(k, v) for k, v in tags.items()]))
    return inputs


def summary_text(record: TrainRecord) -> str:
    """The torchinfo summary, computed (no training) as the train stage logs it."""
    from misfit.core.config import CellConfig

    cell = CellConfig.model_validate(record.cell)
    return _summary(cell.n_outputs, cell.model_activation)


@functools.lru_cache(maxsize=None)
def _summary(n_outputs: int, activation: str) -> str:
    # 42 cells share a handful of (outputs, activation) pairs; torchinfo runs the model each time
    from misfit.train.model import model_summary

    return model_summary(n_outputs, activation)


class Restorer:
    def __init__(self, project: Project, uri: str):
        self.project, self.uri = project, uri
        self.head = git_out(project.root, "rev-parse", "HEAD") or "unknown"
        self.done = Restored(uri)
        self._experiments: dict[str, tuple] = {}
        self._known: dict[str, set[str]] = {}
        self.models: dict[str, tuple[str, str]] = {}  # the cell's record run id -> (restored run id, model id)

    def experiment(self, name: str) -> tuple:
        """(client, experiment id), the experiment created as the train stage creates it."""
        from mlflow import MlflowClient

        from misfit.track.store import STORE_DIR

        if name not in self._experiments:
            client = MlflowClient(self.uri)
            found = client.get_experiment_by_name(name)
            local = self.uri.startswith("sqlite:")  # artifacts beside the store, as open_experiment puts them
            artifacts = (self.project.root / STORE_DIR / "artifacts").resolve().as_uri() if local else None
            experiment_id = found.experiment_id if found else client.create_experiment(name, artifacts)
            known = set()
            for run in client.search_runs([experiment_id], max_results=50000):
                known.update((run.info.run_id, run.data.tags.get(ORIGINAL_RUN_ID, run.info.run_id)))
            self._experiments[name] = (client, experiment_id)
            self._known[experiment_id] = known
            self.done.experiment_ids.add(experiment_id)
        return self._experiments[name]

    def restore_cell(self, cell: str, record: TrainRecord, evaluation: EvaluationRecord | None) -> None:
        client, experiment_id = self.experiment(record.experiment)
        known = self._known[experiment_id]
        if record.parent_run_id in known and all(r.run_id in known for r in record.runs):
            self.done.skipped += 1 + len(record.runs)
            return
        start, summary = record.started_ms, summary_text(record)
        common = {k: str(v) for k, v in record.tags.items() if not k.startswith("mlflow.")}
        common.update({RESTORED: "true", "misfit.restored_from": f"{record_path(cell)}@{self.head}"})
        parent = self._create(client, experiment_id, cell, start, {
            **common, **parent_tags(record.runs), "misfit.level": "cell", ORIGINAL_RUN_ID: record.parent_run_id})
        params = flat_params(record)
        self._log(client, parent, params=params, metrics=metrics_at(parent_summary(record.runs, record.metric),
                                                                    start, 0))
        client.log_text(parent, summary, "model_summary.txt")
        end, self.models = start, {}
        for run in record.runs:
            scored = evaluation.run(run.subset_seed, run.seed) if evaluation else None
            end = max(end, self.restore_run(client, experiment_id, cell, record, run, scored,
                                            (parent, common, params, start, summary)))
        client.set_terminated(parent, status=parent_status(record.runs), end_time=end)
        self.register(cell, record, evaluation)
        self.done.cells += 1
        self.done.runs += 1 + len(record.runs)

    def restore_run(self, client, experiment_id: str, cell: str, record: TrainRecord, run: TrainedRun,
                    scored: EvaluatedRun | None, shared: tuple) -> int:
        """One child run, as train@ and evaluate@ name, tag and fill it; returns its end time.
        Its checkpoint is attached where it is here (DVC's cache or a `dvc pull`)."""
        from misfit.core.layout import MODELS_DIR, SPLIT_DIR
        from misfit.data.split import draw_dir
        from misfit.train.loop import Member
        from misfit.train.stage import run_name

        parent, common, params, start, summary = shared
        main = main_draw(record)
        identity = record.data if run.subset_seed == main else record.draws.get(str(run.subset_seed), {})
        tags = {**common, **trained_tags(run), "misfit.level": "seed", "mlflow.parentRunId": parent,
                "seed": str(run.seed), "subset_seed": str(run.subset_seed), "config_digest": run.config_digest,
                ORIGINAL_RUN_ID: run.run_id}
        if scored is not None:
            tags.update(evaluation_tags(scored, record.tags.get("profile", "study")))
        run_id = self._create(client, experiment_id, run_name(cell, Member(run.subset_seed, run.seed), main),
                              start, tags)
        metrics = epoch_metrics(run, record.metric, start)
        end = max([m.timestamp for m in metrics], default=start)
        finals = {**trained_finals(run, record.metric),
                  **(evaluation_numbers(scored, record.metric) if scored is not None else {})}
        metrics += metrics_at(finals, end, 0)
        self._log(client, run_id, params={**params, "seed": str(run.seed), "data.subset_seed": str(run.subset_seed)},
                  metrics=metrics)
        inputs = dataset_inputs(identity, draw_dir(SPLIT_DIR, run.subset_seed, main))
        if inputs:
            client.log_inputs(run_id, datasets=inputs)
        client.log_text(run_id, summary, "model_summary.txt")
        checkpoint = self.project.root / MODELS_DIR / cell / (run.checkpoint or "-")
        if run.checkpoint and checkpoint.is_file():
            self.attach_checkpoint(client, cell, record, run, run_id, checkpoint)
        client.set_terminated(run_id, status=run_status(run), end_time=end)
        return end

    def attach_checkpoint(self, client, cell: str, record: TrainRecord, run: TrainedRun, run_id: str,
                          checkpoint: Path) -> None:
        """As evaluate@ does: the checkpoint as the run's MLflow Model, when its input example
        (test images) and, for a z-scored cell, its draw's train targets are here; else the
        file alone, as a plain artifact. A checkpoint whose SHA-256 is not the record's is
        attached as a file too: a model must be the one the record scored."""
        from misfit.core.files import sha256_file
        from misfit.track.model import log_model, model_config

        needs = model_inputs(self.project.root, record, run)
        if needs is None or sha256_file(checkpoint) != run.checkpoint_sha256:
            client.log_artifact(run_id, str(checkpoint))
        else:
            examples, mean, std = needs
            config = model_config(record.cell, record.protocol, mean, std)
            tags = {"cell": cell, "seed": str(run.seed), "subset_seed": str(run.subset_seed)}
            model_id = log_model(self.uri, run_id, checkpoint, run.checkpoint_sha256, config, examples, tags)
            self.models[run.run_id] = (run_id, model_id)
            self.done.models += 1
        self.done.checkpoints += 1

    def register(self, cell: str, record: TrainRecord, evaluation: EvaluationRecord | None) -> None:
        """misfit-<cell>@best, as evaluate@ registers it: the best valid score of the record's
        evaluation, pointing at the restored run's model."""
        from misfit.core.tasks import TASKS
        from misfit.track.model import best_run, register_best

        if evaluation is None or not self.models:
            return
        trained = {(r.subset_seed, r.seed): r for r in record.runs}
        best = best_run(evaluation.runs, trained, TASKS[record.task].higher_is_better, main_draw(record))
        if best is not None and best.run_id in self.models:
            register_best(self.uri, cell, *self.models[best.run_id])
            self.done.registered += 1

    def _create(self, client, experiment_id: str, name: str, start: int, tags: dict) -> str:
        # tags beyond MLflow's 8,000-character value limit would fail the whole batch
        return client.create_run(experiment_id, start_time=start, run_name=name,
                                 tags={k: v[:8000] for k, v in tags.items()}).info.run_id

    def _log(self, client, run_id: str, params: dict, metrics: list) -> None:
        """Params and metrics in as few log_batch calls as MLflow's limits allow (each call is a
        database transaction: most of a restore's time)."""
        from mlflow.entities import Param

        items = [Param(k, v[:6000]) for k, v in params.items()]
        while items or metrics:
            head, items = items[:MAX_PARAMS_TAGS_PER_BATCH], items[MAX_PARAMS_TAGS_PER_BATCH:]
            room = MAX_ENTITIES_PER_BATCH - len(head)
            batch, metrics = metrics[:room], metrics[room:]
            client.log_batch(run_id, params=head, metrics=batch)


def model_inputs(root: Path, record: TrainRecord, run: TrainedRun) -> tuple | None:
    """What a run's MLflow Model needs besides its checkpoint: a few test images (its input
    example) and CellTargets' mean and sd (computed from the draw's train targets for a
    z-scored cell). None when the data is not here (a clone without `dvc pull`)."""
    import numpy as np
    import torch

    from misfit.core.config import CellConfig
    from misfit.core.layout import LABELS_DIR, TEST_DIR
    from misfit.data.load import load_targets
    from misfit.data.split import draw_dir
    from misfit.track.model import EXAMPLE_IMAGES
    from misfit.train.targets import CellTargets

    cell = CellConfig.model_validate(record.cell)
    test, labels = root / TEST_DIR / "test.npz", draw_dir(root / LABELS_DIR, run.subset_seed, main_draw(record))
    zscored = cell.task == "regression" and cell.variant == "zscore"
    if not test.is_file() or (zscored and not (labels / "train.npz").is_file()):
        return None
    with np.load(test) as arrays:
        examples = arrays["images"][:EXAMPLE_IMAGES]
    train = load_targets(labels, "train", cell.task) if zscored else torch.tensor([0.0, 1.0])
    targets = CellTargets(cell, train)
    return examples, targets.mean, targets.std


def restore_runs(root: Path, cells: list[str] | None = None) -> Restored:
    project = Project(Path(root))
    available = sorted(p.stem for p in (project.root / RECORDS_DIR).glob("*.json"))
    if not available:
        raise RecordError(f"{project.root / 'records'}: no records/*.json to restore from "
                          "(they are committed by the train stage; git pull, or dvc repro)")
    unknown = sorted(set(cells or []) - set(available))
    if unknown:
        raise RecordError(f"no records/<cell>.json for {', '.join(unknown)}")
    records = {cell: typed_records(project.root, cell) for cell in cells or available}
    from misfit.track.store import tracking_uri

    uri = tracking_uri(project.root)
    started = time.perf_counter()
    with staged(uri) as working_uri:
        restorer = Restorer(project, working_uri)
        for cell, (record, evaluation) in records.items():
            restorer.restore_cell(cell, record, evaluation)
            print(f"restored {cell}: {len(record.runs)} run(s)", file=sys.stderr, flush=True)
    restorer.done.uri = uri
    restorer.done.seconds = time.perf_counter() - started
    return restorer.done


def typed_records(root: Path, cell: str) -> tuple[TrainRecord, EvaluationRecord | None]:
    """records/<cell>.json and, where the cell was evaluated, evaluations/<cell>.json."""
    try:
        return load_cell_records(root / RECORDS_DIR, root / EVALUATIONS_DIR, cell)
    except DataError as error:
        raise RecordError(str(error).replace(f"{root}/", "")) from None


@contextlib.contextmanager
def staged(uri: str) -> Iterator[str]:
    """For a local SQLite store: a copy in memory-backed scratch space to write into, copied
    back over the store only when the restore succeeded.

    Every MLflow call is a SQLite transaction, and each commit waits for the disk (fsync:
    ~10 ms here, half a restore's time); on tmpfs it does not. A failed restore leaves the
    store as it was. A server's URI is used as it is.
    """
    if not uri.startswith("sqlite:///"):
        yield uri
        return
    final = Path(uri.removeprefix("sqlite:///"))
    scratch = Path(tempfile.mkdtemp(prefix="misfit-restore-", dir=SCRATCH if SCRATCH.is_dir() else None))
    try:
        working = scratch / final.name
        if final.exists():
            _copy_sqlite(final, working)
        yield f"sqlite:///{working}"
        final.parent.mkdir(parents=True, exist_ok=True)
        incoming = final.with_name(f".{final.name}.restoring")
        _copy_sqlite(working, incoming)
        os.replace(incoming, final)  # readers see the old store or the new one, never half of it
    finally:
        shutil.rmtree(scratch, ignore_errors=True)


def _copy_sqlite(source: Path, target: Path) -> None:
    """SQLite's own online backup: a consistent copy whatever the journal mode."""
    target.unlink(missing_ok=True)
    with contextlib.closing(sqlite3.connect(source)) as src, contextlib.closing(sqlite3.connect(target)) as dst:
        src.backup(dst)


def register(commands) -> None:
    parser = commands.add_parser("restore-runs", help="rebuild a browsable MLflow store from records/ in git",
                                 description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("cells", nargs="*", help="only these cells (default: every records/*.json)")
    parser.add_argument("-C", "--root", type=Path, default=Path("."), help="project root (default: .)")
    parser.set_defaults(handler=main)


def report(done: Restored) -> str:
    return (f"restored {done.runs} runs of {done.cells} cells into {done.uri} in {done.seconds:.1f} s"
            + (f"; {done.skipped} runs were already there" if done.skipped else "")
            + f"; {done.checkpoints} checkpoint(s) attached (those present here: `dvc pull` fetches the rest), "
              f"{done.models} of them as MLflow Models (runs:/<run id>/model; the others lack their data here), "
              f"{done.registered} cell(s) with misfit-<cell>@best"
            + "\n  each is tagged misfit.restored=true and misfit.original_run_id=<the id in the report>; "
              "browse them with: misfit ui")


def main(args: argparse.Namespace) -> int:
    try:
        done = restore_runs(args.root, args.cells)
    except RecordError as error:
        print(f"error: {error}", file=sys.stderr)
        return 1
    print(report(done))
    return 0
