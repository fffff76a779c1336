"""The train stage of one cell: data in, seeds trained, MLflow runs and models/<cell> out.

models/<cell>/ holds each seed's best checkpoint and record.json (every epoch of every
seed, the run ids, the digests). It names the MLflow runs that produced it, so a copy
that DVC restores from its run-cache still points at the right runs.
"""
from __future__ import annotations

import math
import time
import warnings
from pathlib import Path

import torch

from misfit.config import CellConfig, Params, load_params
from misfit.data import CellData, load_cell_data, read_split_manifest
from misfit.layout import MODELS_DIR, PARAMS_FILE, SPLIT_DIR
from misfit.files import atomic_dir, write_json_atomic
from misfit.model import model_summary
from misfit.provenance import (
    cell_digest, config_digest, data_identity, git_state, md5_of_files, stage_file_deps, versions,
)
from misfit.runtime import configure
from misfit.study import recommended_in, studies_of
from misfit.tasks import TASKS, CellTargets
from misfit.training import CellTrainer, SeedOutcome, test_outputs



def run_tags(cell_id: str, cell: CellConfig, root: Path, device: torch.device, digest: str) -> dict[str, str]:
    studies = studies_of(cell_id)
    tags = {
        "cell": cell_id, "task": cell.task, "activation": cell.activation, "loss": cell.loss,
        "loss_input": cell.loss_input, "variant": cell.variant or "-",
        "study": ",".join(studies) or "-",
        "recommended": ",".join(s for s in studies if recommended_in(cell_id, s)) or "no",
        "dvc_stage": f"train@{cell_id}", "device": str(device), "threads": str(torch.get_num_threads()),
        "cell_digest": digest, **git_state(root),
    }
    tags.update({f"version.{name}": value for name, value in versions().items()})
    # what dvc.lock will pin for this stage's code: the md5 of each file dependency
    tags.update({f"dep.md5.{path}": md5 for path, md5 in md5_of_files(root, stage_file_deps(root, "train")).items()})
    return tags


def flat_params(cell: CellConfig, params: Params) -> dict:
    resolved = {f"cell.{k}": v for k, v in cell.model_dump().items()}
    resolved.update({f"protocol.{k}": v for k, v in params.protocol.model_dump().items()})
    resolved.update({f"data.{k}": v for k, v in params.data.model_dump().items()})
    return resolved


def mlflow_datasets(root: Path, manifest: dict, data: CellData) -> list[tuple[object, dict[str, str]]]:
    """The three splits as MLflow datasets identified by our own SHA-256.

    MLflow's automatic digest hashes only the first values of an array; ours covers
    every image, label and index of the split. MLflow keeps 36 characters of a digest,
    so the whole SHA-256 also goes into the input's `sha256` tag.
    """
    import mlflow.data

    datasets = []
    for name, split in (("train", data.train), ("valid", data.valid), ("test", data.test)):
        sha = manifest["splits"][name]["sha256"]
        with warnings.catch_warnings():  # MLflow registers two equal sources for local paths
            warnings.simplefilter("ignore", UserWarning)
            dataset = mlflow.data.from_numpy(
                split.x.cpu().numpy(), targets=split.y.cpu().numpy(),
                source=str((root / SPLIT_DIR / f"{name}.npz").resolve()),
                name=f"mnist-{name}", digest=sha[:36],
            )
        datasets.append((dataset, {"mlflow.data.context": name, "sha256": sha, "n": str(len(split.x))}))
    return datasets


def progress_line(cell_id: str, epoch: int, outcomes: list[SeedOutcome]) -> str:
    parts = []
    for outcome in outcomes:
        if not outcome.history:
            parts.append(f"seed {outcome.seed}: {outcome.status}")
            continue
        last = outcome.history[-1]
        mark = "*" if last["improved"] else " "
        parts.append(f"seed {outcome.seed}: loss {last['train_loss']:.4g} valid {last['valid_metric']:.4f}{mark}")
    return f"{cell_id} epoch {epoch:3d} | " + " | ".join(parts)


def score_on_test(trainer: CellTrainer, outcomes: list[SeedOutcome], device, chunk: int) -> dict[int, float]:
    finished = [o for o in outcomes if o.status == "ok"]
    if not finished:
        return {}
    outputs = test_outputs(trainer.cell, [o.best_state for o in finished], trainer.data.test.x, device, chunk)
    targets: CellTargets = trainer.targets
    scores = targets.per_sample_score(outputs, trainer.data.test.y).mean(dim=-1).tolist()
    nonfinite = (~torch.isfinite(targets.predict(outputs).double())).sum(dim=-1).tolist()
    metric = targets.spec.metric
    for outcome, score, bad in zip(finished, scores, nonfinite):
        if not math.isfinite(score):
            outcome.fail(f"the test {metric} of the best checkpoint is {score}: {bad} of "
                         f"{outputs.shape[1]} predictions are not finite")
    return {o.seed: s for o, s in zip(finished, scores)}


def train_cell(cell_id: str, root: Path = Path(".")) -> Path:
    started = time.perf_counter()
    params = load_params(root / PARAMS_FILE)
    cell = params.cell(cell_id)
    device = configure(params.protocol)
    data = load_cell_data(root, params, cell, device)
    manifest = read_split_manifest(root / SPLIT_DIR)
    identity = data_identity(manifest, params.data.model_dump())
    cell_fields, protocol = cell.model_dump(), params.protocol.model_dump()
    digest = cell_digest(cell_fields, protocol, identity)
    seed_digests = {s: config_digest(cell_fields, protocol, identity, s) for s in params.seeds}
    metric = TASKS[cell.task].metric

    from misfit.tracking import CellRuns, killed_on_signal, mark_dead_runs_killed, open_experiment

    client, experiment_id = open_experiment(root, params.tracking.experiment)
    mark_dead_runs_killed(client, experiment_id)
    tags = {**run_tags(cell_id, cell, root, device, digest), "data_sha256": manifest["dataset_sha256"]}
    runs = CellRuns(client, experiment_id, cell_id, params.seeds, tags, flat_params(cell, params),
                    {s: {"seed": str(s), "config_digest": d} for s, d in seed_digests.items()})
    print(f"{cell_id}: {len(params.seeds)} seed(s) on {device}, parent run {runs.parent_id}", flush=True)
    with killed_on_signal([runs]):
        try:
            summary = model_summary(cell.n_outputs, cell.model_activation)
            runs.log_text(None, summary, "model_summary.txt")
            for seed in params.seeds:
                runs.log_text(seed, summary, "model_summary.txt")
            runs.log_inputs(mlflow_datasets(root, manifest, data))
            trainer = CellTrainer(cell, params.protocol, params.seeds, data, device)

            def on_epoch(epoch: int, outcomes: list[SeedOutcome]) -> None:
                print(progress_line(cell_id, epoch, outcomes), flush=True)
                for outcome in outcomes:
                    if outcome.history and outcome.history[-1]["epoch"] == epoch:
                        record = dict(outcome.history[-1])
                        record[f"valid_{metric}"] = record.pop("valid_metric")
                        runs.log_metrics(outcome.seed, record, step=epoch)

            outcomes = trainer.run(on_epoch)
            test_scores = score_on_test(trainer, outcomes, device, params.protocol.eval_batch_size)
            out_dir = write_outputs(root, cell_id, cell, params, runs, outcomes, test_scores,
                                    seed_digests, digest, identity, tags, metric,
                                    time.perf_counter() - started)
        except BaseException:
            runs.close_all("FAILED")
            raise
    return out_dir


def write_outputs(root, cell_id, cell, params, runs, outcomes, test_scores, seed_digests, digest,
                  identity, tags, metric, seconds) -> Path:
    out_dir = root / MODELS_DIR / cell_id
    seed_records = []
    with atomic_dir(out_dir) as staging:
        for outcome in outcomes:
            checkpoint = None
            if outcome.best_state is not None:
                checkpoint = f"seed{outcome.seed}.pt"
                torch.save(outcome.best_state, staging / checkpoint)
                runs.log_file(outcome.seed, staging / checkpoint)
            record = {
                "seed": outcome.seed, "run_id": runs.child_ids[outcome.seed],
                "config_digest": seed_digests[outcome.seed], "status": outcome.status,
                "error": outcome.error, "best_epoch": outcome.best_epoch,
                "valid_best": outcome.best_valid, "test": test_scores.get(outcome.seed),
                "epochs_run": len(outcome.history), "checkpoint": checkpoint,
                "history": outcome.history,
            }
            seed_records.append(record)
            finals = {f"best_valid_{metric}": record["valid_best"], f"test_{metric}": record["test"],
                      "best_epoch": record["best_epoch"], "epochs_run": record["epochs_run"]}
            runs.log_metrics(outcome.seed, {k: v for k, v in finals.items() if v is not None})
            runs.set_tags(outcome.seed, {"status": outcome.status, "error": outcome.error or "-"})
            runs.close(outcome.seed, "FINISHED" if outcome.status == "ok" else "FAILED")
        _log_parent_summary(runs, seed_records, metric)
        write_json_atomic(staging / "record.json", {
            "cell_id": cell_id, "cell": cell.model_dump(), "task": cell.task, "metric": metric,
            "protocol": params.protocol.model_dump(), "data": identity, "seeds": params.seeds,
            "experiment": params.tracking.experiment, "parent_run_id": runs.parent_id,
            "cell_digest": digest, "tags": tags, "seconds": seconds, "runs": seed_records,
        })
    return out_dir


def _log_parent_summary(runs, seed_records: list[dict], metric: str) -> None:
    ok = [r for r in seed_records if r["status"] == "ok"]
    summary = {"n_ok": len(ok), "n_failed": len(seed_records) - len(ok)}
    for key, name in (("test", f"test_{metric}"), ("valid_best", f"best_valid_{metric}")):
        values = torch.tensor([r[key] for r in ok], dtype=torch.float64)
        if len(values):
            summary[f"{name}_mean"] = float(values.mean())
        if len(values) > 1:
            summary[f"{name}_std"] = float(values.std())
    runs.log_metrics(None, summary)
    failed = [f"seed {r['seed']}: {r['error']}" for r in seed_records if r["status"] != "ok"]
    runs.set_tags(None, {"status": "ok" if not failed else "failed", "error": "; ".join(failed) or "-"})
    runs.close(None, "FINISHED" if not failed else "FAILED")

