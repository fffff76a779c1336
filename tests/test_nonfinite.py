"""NaN losses and infinite metrics are results: recorded, reported, never a crash.

A seed whose training loss turns non-finite fails with a clear error and the other seeds
go on untouched. An infinite valid metric (a sigmoid regression cell whose output is
exactly 1.0, so the logit back-transform gives inf) is recorded as inf, never counts as
an improvement, and early stopping still stops the seed. Faults are injected by setting
weights, the way they arise in training (a diverged or saturated parameter).
"""
from __future__ import annotations

import json
import math
import re
import sqlite3

import pytest
import torch
from conftest import (
    base_env,
    make_project,
    run,
    small_params,
    stages_run,
    synthetic_mnist,
)
from test_determinism import (
    CPU,
    assert_same_outcome,
    cell_config,
    protocol,
    synthetic_cell_data,
    train,
)

from misfit.train import loop as training
from misfit.train.loop import CellTrainer

NAN, SATURATED = float("nan"), 100.0  # sigmoid(100.0) == 1.0 exactly in float32


pytestmark = pytest.mark.usefixtures("one_torch_thread")


def set_bias(params: dict[str, torch.Tensor], value: float) -> None:
    with torch.no_grad():
        params["fc_final.bias"].fill_(value)


def test_nan_loss_fails_only_that_seed():
    cell = cell_config("regression-none-mse-zscore")
    trainer = CellTrainer.one_draw(cell, protocol(max_epochs=6, patience=6), [0, 1, 2],
                          synthetic_cell_data(cell.task), CPU)

    def diverge_seed_1(epoch, outcomes):
        if epoch == 2:
            set_bias(trainer.runs[1].params, NAN)

    seed0, seed1, seed2 = trainer.run(diverge_seed_1)
    assert seed1.status == "failed"
    assert seed1.error == "the training loss became nan in epoch 3"
    assert len(seed1.history) == 3 and math.isnan(seed1.history[-1]["train_loss"])
    assert math.isnan(seed1.history[-1]["valid_metric"]) and not seed1.history[-1]["improved"]
    # the checkpoint from before the divergence is kept, and it is finite
    assert seed1.best_epoch == 2 and math.isfinite(seed1.best_valid)
    assert all(torch.isfinite(t).all() for t in seed1.best_state.values())
    # the others trained on as if seed 1 had never been there (tolerance zero)
    for outcome in (seed0, seed2):
        assert outcome.status == "ok" and len(outcome.history) == 6
        (alone,) = train("regression-none-mse-zscore", [outcome.seed], max_epochs=6, patience=6)
        assert_same_outcome(outcome, alone, f"seed {outcome.seed}")


def test_huge_learning_rate_fails_every_seed_with_a_clear_error():
    outcomes = train("regression-none-mse-zscore", [0, 1], lr=1e3, max_epochs=6, patience=6)
    for outcome in outcomes:
        assert outcome.status == "failed"
        match = re.fullmatch(r"the training loss became (nan|inf) in epoch (\d+)", outcome.error)
        assert match, outcome.error
        assert len(outcome.history) == int(match.group(2)) < 6  # stopped when it happened
        assert not math.isfinite(outcome.history[-1]["train_loss"])


def test_infinite_valid_metric_is_no_improvement_and_early_stopping_still_stops():
    patience = 3
    cell = cell_config("regression-sigmoid-mse-raw")
    trainer = CellTrainer.one_draw(cell, protocol(max_epochs=15, patience=patience), [0, 1, 2],
                          synthetic_cell_data(cell.task), CPU)
    set_bias(trainer.runs[2].params, SATURATED)  # saturated from the start: never finite

    def saturate_seed_1(epoch, outcomes):
        if epoch == 4:
            set_bias(trainer.runs[1].params, SATURATED)

    seed0, seed1, seed2 = trainer.run(saturate_seed_1)

    # saturated after epoch 4: inf from epoch 5 on, no improvement, stopped by patience
    assert seed1.status == "ok"
    assert [h["valid_metric"] for h in seed1.history[4:]] == [math.inf] * patience
    assert not any(h["improved"] for h in seed1.history[4:])
    assert seed1.best_epoch <= 4 and len(seed1.history) == seed1.best_epoch + patience < 15
    assert math.isfinite(seed1.best_valid)
    assert seed1.best_valid == min(h["valid_metric"] for h in seed1.history)

    # saturated from the start: inf every epoch, stopped after `patience` epochs, failed
    assert seed2.status == "failed"
    assert seed2.error == f"the valid mse was never finite in {patience} epochs"
    assert [h["valid_metric"] for h in seed2.history] == [math.inf] * patience
    assert not any(h["improved"] for h in seed2.history)
    assert seed2.best_state is None and seed2.best_epoch is None

    (alone,) = train("regression-sigmoid-mse-raw", [0], max_epochs=15, patience=patience)
    assert_same_outcome(seed0, alone, "seed 0")


def strict_json(text: str):
    def reject(token):
        raise ValueError(f"non-standard JSON token {token}")

    return json.loads(text, parse_constant=reject)


@pytest.mark.slow
def test_nonfinite_values_reach_records_results_report_and_mlflow(tmp_path, monkeypatch, capsys):
    """The train stage on real files and a real MLflow store, with faults injected into two
    seeds; then DVC records the outputs and reports. Everything downstream stays valid JSON."""
    sigmoid, zscore = "regression-sigmoid-mse-raw", "regression-none-mse-zscore"
    manifest = synthetic_mnist(tmp_path / "mirror")
    env = base_env(MNIST_MIRROR=str(tmp_path / "mirror"), MNIST_MANIFEST=str(manifest))
    project = make_project(tmp_path / "project", small_params(
        [zscore, sigmoid], protocol__max_epochs=4, protocol__patience=3, protocol__threads=1))
    run(["dvc", "repro", "label-derive", "train-inputs"], project, env)

    original_states, original_run = training.initial_states, CellTrainer.run

    def saturated_start(cell, seeds):
        states = original_states(cell, seeds)
        if cell.cell_id() == sigmoid:
            states[seeds.index(1)]["fc_final.bias"].fill_(SATURATED)
        return states

    def diverging_run(self, on_epoch=None):
        def hooked(epoch, outcomes):
            if epoch == 2 and self.cell.cell_id() == zscore:
                set_bias(next(run.params for run in self.runs if run.member.seed == 1), NAN)
            on_epoch(epoch, outcomes)
        return original_run(self, hooked)

    monkeypatch.setattr(training, "initial_states", saturated_start)
    monkeypatch.setattr(CellTrainer, "run", diverging_run)
    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    from misfit.train.stage import train_cell

    for cell in (zscore, sigmoid):
        train_cell(cell, project)
    progress = capsys.readouterr().out
    assert re.search(rf"{sigmoid} epoch +1 \| .*seed 1: loss \S+ valid inf", progress), progress
    assert re.search(rf"{zscore} epoch +3 \| .*seed 1: loss nan valid nan", progress), progress

    # the stage outputs are in place: DVC records them and runs only what follows
    run(["dvc", "commit", "-f", f"train@{zscore}", f"train@{sigmoid}"], project, env)
    after = run(["dvc", "repro"], project, env)
    ran = stages_run(after.stdout)
    assert ran == ["evaluate-inputs", f"evaluate@{zscore}", f"evaluate@{sigmoid}", "report"]

    records = {c: strict_json((project / "records" / f"{c}.json").read_text()) for c in (zscore, sigmoid)}
    diverged = records[zscore]["runs"][1]
    assert diverged["status"] == "failed" and diverged["error"] == "the training loss became nan in epoch 3"
    assert diverged["history"][-1]["train_loss"] == "nan" and diverged["checkpoint"] == "seed1.pt"
    saturated = records[sigmoid]["runs"][1]
    assert saturated["error"] == "the valid mse was never finite in 3 epochs"
    assert [h["valid_metric"] for h in saturated["history"]] == ["inf"] * 3
    assert saturated["checkpoint"] is None

    results = strict_json((project / "reports" / "results.json").read_text())["cells"]
    for cell, error in ((zscore, "seed 1: the training loss became nan in epoch 3"),
                        (sigmoid, "seed 1: the valid mse was never finite in 3 epochs")):
        entry = results[cell]
        main = {r["seed"]: r for r in entry["runs"] if r["subset_seed"] == 0}
        assert main[1]["status"] == "failed" and main[1]["error"] == error.removeprefix("seed 1: ")
        assert main[1]["mode"] == "diverged" and main[0]["status"] == "ok" and main[0]["mode"] != "diverged"
        assert entry["modes"]["diverged"] == 1 and "mean" not in entry  # runs in two modes: no mean
        assert math.isfinite(main[0]["test"])
        assert error.removeprefix("seed 1: ") in (project / "reports" / "report.md").read_text()
    # the diverged seed's pre-divergence checkpoint is scored again, and agrees with training
    evaluated = strict_json((project / "evaluations" / f"{zscore}.json").read_text())["runs"]
    assert [r["matches_record"] for r in evaluated if (r["subset_seed"], r["seed"]) == (0, 1)] == [True]
    metrics = json.loads(run(["dvc", "metrics", "show", "--json"], project, env).stdout)
    assert metrics, "dvc metrics show could not read the metrics files"

    from mlflow import MlflowClient

    client = MlflowClient(f"sqlite:///{project / 'mlruns' / 'mlflow.db'}")
    for cell, record in records.items():
        parent = client.get_run(record["parent_run_id"])
        assert parent.info.status == "FAILED" and "seed 1" in parent.data.tags["error"]
        ok_run, failed_run = (client.get_run(r["run_id"]) for r in record["runs"][:2])
        assert ok_run.info.status == "FINISHED" and failed_run.info.status == "FAILED"
        assert failed_run.data.tags["error"] == record["runs"][1]["error"]
    losses = client.get_metric_history(diverged["run_id"], "train_loss")
    assert [m.step for m in losses] == [1, 2, 3] and math.isnan(losses[-1].value)
    # SQL has no inf: MLflow stores it as the largest double
    valid = client.get_metric_history(saturated["run_id"], "valid_mse")
    assert [m.step for m in valid] == [0, 1, 2, 3]  # step 0: before the first update
    assert [m.value for m in valid] == [1.7976931348623157e308] * 4
    with sqlite3.connect(project / "mlruns" / "mlflow.db") as db:
        assert db.execute("select count(*) from runs where status = 'RUNNING'").fetchone() == (0,)
