"""The evaluate stage of one cell: each kept checkpoint scored on valid and test.

Reads the train record (records/<cell>.json), the checkpoints (models/<cell>/, each
checked against the SHA-256 the record holds), each draw's valid split and the test
split. Writes, only if the whole stage succeeds:
- evaluations/<cell>.json: per run, the re-scored valid number (checked against the
  record), the test number and the calibration of its outputs
  (misfit.core.record.EvaluationRecord; in git);
- predictions/<cell>.npz: every run's outputs and per-image score on each test image
  (DVC-cached): the report resamples images from it;
- metrics/<cell>.json: the numbers, for `dvc metrics show` (in git).
Each number also goes into the run's MLflow run, which train@<cell> created, and each
checkpoint becomes that run's MLflow Model (runs:/<run id>/model, misfit.track.model); the
run with the best valid score is registered as `misfit-<cell>` with the alias `best`.
"""
from __future__ import annotations

import time
import warnings
from pathlib import Path

import numpy as np

from misfit.core.committed import CommittedOutputs
from misfit.core.config import load_params
from misfit.core.errors import DataError
from misfit.core.files import sha256_file, write_json_atomic, write_npz_atomic
from misfit.core.layout import (
    EVALUATIONS_DIR,
    METRICS_DIR,
    MODELS_DIR,
    PARAMS_FILE,
    PREDICTIONS_DIR,
    RECORDS_DIR,
    TEST_DIR,
)
from misfit.core.provenance import check_stage_inputs
from misfit.core.record import RECORD_VERSION, EvaluatedRun, EvaluationRecord, load_train_record, write_record
from misfit.core.tasks import TASKS
from misfit.data.load import load_cell_data, load_test
from misfit.data.split import read_split_manifest
from misfit.evaluate.calibration import calibration
from misfit.evaluate.score import agrees, cell_metrics, load_reference, score_split, verified_checkpoint
from misfit.track.entries import evaluation_numbers, evaluation_tags
from misfit.track.model import EXAMPLE_IMAGES, best_run, log_model, model_config, register_best
from misfit.track.runs import EvaluationLog, profile_name, refused_write
from misfit.track.store import check_store, check_timeout, open_experiment, tracking_uri
from misfit.train.runtime import configure
from misfit.train.targets import CellTargets


def test_dataset(root: Path, manifest: dict, test) -> tuple[object, dict[str, str]]:
    """The test split as an MLflow dataset, identified by our own SHA-256 (as train@ logs the others)."""
    import mlflow.data

    sha = manifest["splits"]["test"]["sha256"]
    with warnings.catch_warnings():  # MLflow registers two equal sources for local paths
        warnings.simplefilter("ignore", UserWarning)
        dataset = mlflow.data.from_numpy(test.x.cpu().numpy(), targets=test.y.cpu().numpy(),
                                         source=str((root / TEST_DIR / "test.npz").resolve()),
                                         name="mnist-test", digest=sha[:36])
    return dataset, {"mlflow.data.context": "test", "sha256": sha, "n": str(len(test.x))}


def evaluate_cell(cell_id: str, root: Path = Path(".")) -> None:
    committed = CommittedOutputs(root, [EVALUATIONS_DIR / f"{cell_id}.json", METRICS_DIR / f"{cell_id}.json"])
    try:
        _evaluate(cell_id, root)
    except BaseException as error:  # KeyboardInterrupt and SystemExit too: a stopped stage leaves the committed files
        committed.restore()
        refused = refused_write(error, f"evaluate@{cell_id}", tracking_uri(root))
        if refused is not None:
            raise refused from None
        raise


def _evaluate(cell_id: str, root: Path) -> None:
    started, started_ms = time.perf_counter(), int(time.time() * 1000)
    params = load_params(root / PARAMS_FILE)
    cell = params.cell(cell_id)
    check_stage_inputs(root, "evaluate")
    record_path = root / RECORDS_DIR / f"{cell_id}.json"
    record = load_train_record(record_path)
    if record.cell != cell.model_dump():
        raise DataError(f"{record_path}: field cell: {record.cell}, but params.yaml's cells.{cell_id} is "
                        f"{cell.model_dump()}; run `dvc repro train@{cell_id}` first")
    check_store(tracking_uri(root), check_timeout())
    device = configure(params.protocol)
    test = load_test(root, params, cell, device)
    test_manifest = read_split_manifest(root / TEST_DIR)
    kept = [run for run in record.runs if run.checkpoint is not None]
    draws = {d: load_cell_data(root, params, cell, device, d) for d in dict.fromkeys(r.subset_seed for r in kept)}
    client, _ = open_experiment(root, params.tracking.experiment)
    mlflow_log, dataset = EvaluationLog(client), test_dataset(root, test_manifest, test)
    chunk, metric = params.protocol.eval_batch_size, record.metric
    evaluated, outputs, per_image, models, model_seconds = [], [], [], {}, 0.0
    examples = example_images(root)
    for i, run in enumerate(kept, 1):
        path = verified_checkpoint(root / MODELS_DIR / cell_id / run.checkpoint, run)
        model = load_reference(cell, path, device)
        targets = CellTargets(cell, draws[run.subset_seed].train.y)
        valid = score_split(model, targets, draws[run.subset_seed].valid, chunk)
        tested = score_split(model, targets, test, chunk)
        result = EvaluatedRun(seed=run.seed, subset_seed=run.subset_seed, run_id=run.run_id,
                              checkpoint=run.checkpoint, checkpoint_sha256=run.checkpoint_sha256,
                              valid=valid.score, matches_record=agrees(run.valid_best, valid.score), test=tested.score,
                              calibration=calibration(cell.task, tested.outputs, test.y))
        evaluated.append(result)
        outputs.append(tested.outputs.float().cpu().numpy())
        per_image.append(tested.per_image.double().cpu().numpy())
        # the checkpoint goes in as the run's MLflow Model (it holds the file), not as a loose artifact
        mlflow_log.log(run.run_id, evaluation_numbers(result, metric), evaluation_tags(result, profile_name()), [], [dataset])
        if run.run_id not in mlflow_log.absent:  # a run the store lacks gets no model either
            logging_started = time.perf_counter()
            models[run.run_id] = log_model(tracking_uri(root), run.run_id, path, run.checkpoint_sha256,
                                           model_config(record.cell, record.protocol, targets.mean, targets.std),
                                           examples, tags=model_tags(cell_id, run))
            model_seconds += time.perf_counter() - logging_started
        print(f"{cell_id}: evaluated {i}/{len(kept)} (draw {run.subset_seed} seed {run.seed}): "
              f"test {metric} {result.test:.6g}", flush=True)
    if models:
        print(f"{cell_id}: {len(models)} MLflow model(s) in {model_seconds:.1f} s", flush=True)
    register(tracking_uri(root), cell_id, record, evaluated, models, params.data.subset_seed)
    write_outputs(root, cell_id, metric, record_path, test_manifest, (started, started_ms), evaluated,
                  np.stack(outputs) if outputs else np.zeros((0, len(test.x), cell.n_outputs), np.float32),
                  np.stack(per_image) if per_image else np.zeros((0, len(test.x))),
                  cell_metrics(record.runs, evaluated, params.data.subset_seed))
    if mlflow_log.absent:
        print(f"{cell_id}: {len(mlflow_log.absent)} run(s) of the record are not in this tracking store; "
              "`misfit restore-runs` brings them back from the records", flush=True)


def example_images(root: Path) -> np.ndarray:
    """The first test images, raw (uint8 [k, 28, 28]): each model's input example."""
    with np.load(root / TEST_DIR / "test.npz") as arrays:
        return arrays["images"][:EXAMPLE_IMAGES]


def model_tags(cell_id: str, run) -> dict[str, str]:
    return {"cell": cell_id, "seed": str(run.seed), "subset_seed": str(run.subset_seed)}


def register(uri: str, cell_id: str, record, evaluated: list[EvaluatedRun], models: dict[str, str],
             main_subset_seed: int) -> None:
    """misfit-<cell>@best: the run with the best valid score (never chosen by test)."""
    trained = {(r.subset_seed, r.seed): r for r in record.runs}
    best = best_run(evaluated, trained, TASKS[record.task].higher_is_better, main_subset_seed)
    if best is None or best.run_id not in models:
        print(f"{cell_id}: no model registered (no finished run of the main draw with a model here)", flush=True)
        return
    version = register_best(uri, cell_id, best.run_id, models[best.run_id])
    print(f"{cell_id}: registered misfit-{cell_id} version {version} @best = seed {best.seed} "
          f"(valid {record.metric} {best.valid:.6g})", flush=True)


def write_outputs(root: Path, cell_id: str, metric: str, record_path: Path, test_manifest: dict,
                  started: tuple[float, int], evaluated: list[EvaluatedRun], outputs: np.ndarray,
                  per_image: np.ndarray, metrics: dict) -> None:
    """started: (perf_counter, wall-clock ms) at the stage's start."""
    predictions = PREDICTIONS_DIR / f"{cell_id}.npz"
    with np.load(root / TEST_DIR / "test.npz") as arrays:
        indices = arrays["indices"]
    write_npz_atomic(root / predictions, {
        "run_ids": np.array([r.run_id for r in evaluated]), "seeds": np.array([r.seed for r in evaluated]),
        "subset_seeds": np.array([r.subset_seed for r in evaluated]), "test_indices": indices,
        "outputs": outputs, "per_image": per_image}, compressed=True)
    test_data = {"dataset_sha256": test_manifest["dataset_sha256"], **test_manifest["splits"]["test"]}
    write_record(root / EVALUATIONS_DIR / f"{cell_id}.json", EvaluationRecord(
        version=RECORD_VERSION, cell_id=cell_id, metric=metric, test_data=test_data,
        record_sha256=sha256_file(record_path), predictions=str(predictions), started_ms=started[1],
        seconds=time.perf_counter() - started[0], runs=evaluated))
    write_json_atomic(root / METRICS_DIR / f"{cell_id}.json", metrics)
    print(f"{cell_id}: test {metrics['test']}", flush=True)

