"""The whole pipeline, for real (DVC, MLflow, every stage), on small synthetic IDX files."""
from __future__ import annotations

import json
import sqlite3

import pytest
import yaml
from conftest import run, stages_run, synthetic_project

pytestmark = pytest.mark.slow  # real DVC / MLflow / processes: the full tier (README, Tests)

CELLS = ["regression-none-mse-zscore", "regression-none-bce-zscore", "probability-softmax-ce",
         "binary-softmax-ce", "multiclass-sigmoid-mse", "multilabel-logits-bcelogits"]


def mlflow_runs(project) -> list[tuple]:
    with sqlite3.connect(project / "mlruns" / "mlflow.db") as db:
        return db.execute("select run_uuid, name, status from runs").fetchall()


@pytest.fixture(scope="module")
def repro(tmp_path_factory):
    return synthetic_project(tmp_path_factory.mktemp("synthetic"), CELLS)


def test_every_stage_runs_once_per_cell(repro):
    project, _, first = repro
    ran = stages_run(first.stdout)
    data = [s for s in ran if s in ("download", "split", "label-derive")]
    assert data == ["download", "split", "label-derive"]
    trains = [i for i, s in enumerate(ran) if s.startswith("train@")]
    assert sorted(ran[i] for i in trains) == sorted(f"train@{c}" for c in CELLS)
    assert ran.count("train-inputs") == 1 and ran.index("train-inputs") < min(trains)
    for cell in CELLS:  # each cell's checkpoints are scored by its own evaluate stage, after training
        assert ran.index(f"train@{cell}") < ran.index(f"evaluate@{cell}")
    assert ran.count("evaluate-inputs") == 1
    assert ran[-1] == "report" and len(ran) == 4 + 2 * len(CELLS) + 2


def test_results_hold_every_cell_with_its_runs_and_modes(repro):
    project, _, _ = repro
    results = json.loads((project / "reports" / "results.json").read_text())["cells"]
    assert sorted(results) == sorted(CELLS)
    runs = {run_id: status for run_id, _, status in mlflow_runs(project)}
    for cell, entry in results.items():
        assert entry["seeds"] == [0, 1] and entry["n"] == 2
        main = [r for r in entry["runs"] if r["subset_seed"] == 0]
        assert len(main) == 2 and all(r["run_id"] in runs for r in entry["runs"])
        assert sum(entry["modes"].values()) == 2
        if cell == "regression-none-bce-zscore":
            assert entry["modes"] == {"failed": 2}
            assert all("between 0 and 1" in r["error"] and runs[r["run_id"]] == "FAILED" for r in main)
        else:
            assert all(runs[r["run_id"]] == "FINISHED" for r in entry["runs"])
    # the bar encodes the digit: the recommended cells learn it, and then mean, sd and a CI are given
    binary = results["binary-softmax-ce"]
    assert binary["modes"] == {"learned": 2} and binary["mean"] > 0.8 and binary["ci"][0] <= binary["mean"]
    # probability + softmax answers a constant 1: the share of curved digits, whatever it is
    assert results["probability-softmax-ce"]["modes"] == {"constant": 2}
    assert {r["detail"] for r in results["probability-softmax-ce"]["runs"]} == {"always 1 = curved"}


def test_report_shows_numbers_and_the_failure(repro):
    project, _, _ = repro
    report = (project / "reports" / "report.md").read_text()
    for cell in CELLS:
        assert f"`{cell}`" in report
    assert "**failed**" in report and "nn.BCELoss rejected" in report
    # findings first: the first section after the title and the setup paragraph
    assert [line for line in report.splitlines() if line.startswith("## ")][0] == "## Findings"
    # each table compares its cells with its ✅ reference over every draw, in a column of its own
    assert "| the reference |" in report


def test_second_repro_runs_nothing(repro):
    project, env, _ = repro
    again = run(["dvc", "repro"], project, env)
    assert stages_run(again.stdout) == []


def test_shared_params_are_pinned_once_and_reach_every_cell(repro):
    """A train entry in dvc.lock pins its own cell's params; the params all cells share are
    pinned once, through data/train_inputs.json, and a change to one of them still makes
    every train stage stale (and the report, which lists them too)."""
    project, env, _ = repro
    lock = yaml.safe_load((project / "dvc.lock").read_text())["stages"]
    for cell in CELLS:
        assert list(lock[f"train@{cell}"]["params"]["params.yaml"]) == [f"cells.{cell}"]
    text = (project / "params.yaml").read_text()
    params = yaml.safe_load(text)
    shared = {key: params[key] for key in ("seeds", "draws", "protocol", "data")}
    assert json.loads((project / "data" / "train_inputs.json").read_text())["params"] == {
        **shared, "tracking.experiment": params["tracking"]["experiment"]}

    params["protocol"]["patience"] += 1
    (project / "params.yaml").write_text(yaml.safe_dump(params, sort_keys=False))
    try:
        run(["dvc", "repro", "--single-item", "train-inputs"], project, env)
        stale = json.loads(run(["dvc", "status", "--json"], project, env).stdout)
    finally:
        (project / "params.yaml").write_text(text)
        run(["dvc", "repro", "--single-item", "train-inputs"], project, env)
    # report and evaluate-inputs: their own params; evaluate@<cell> follows once its train@ reruns
    assert sorted(stale) == sorted(["report", "evaluate-inputs", *(f"train@{cell}" for cell in CELLS)])
    assert json.loads(run(["dvc", "status", "--json"], project, env).stdout) == {}


def test_changing_one_cell_reruns_only_that_cell_and_the_report(repro):
    project, env, _ = repro
    params = yaml.safe_load((project / "params.yaml").read_text())
    del params["cells"]["multiclass-sigmoid-mse"]
    params["cells"]["multiclass-sigmoid-bce"] = {
        "task": "multiclass", "activation": "sigmoid", "loss": "bce", "variant": None, "loss_input": "output"}
    (project / "params.yaml").write_text(yaml.safe_dump(params, sort_keys=False))
    again = run(["dvc", "repro"], project, env)
    assert stages_run(again.stdout) == ["train@multiclass-sigmoid-bce", "evaluate@multiclass-sigmoid-bce", "report"]


def test_cells_with_draws_also_train_on_the_further_draw(repro):
    """draws: true adds draws.seeds on each further draw, with that draw's own data identity."""
    project, _, _ = repro
    for cell in CELLS:
        record = json.loads((project / "records" / f"{cell}.json").read_text())
        members = [(r["subset_seed"], r["seed"]) for r in record["runs"]]
        further = [(1, 0)] if record["cell"]["draws"] else []
        assert members == [(0, 0), (0, 1)] + further
        if further:
            assert record["draws"]["1"]["splits"]["train"]["sha256"] != record["data"]["splits"]["train"]["sha256"]
            assert sorted(record["draws"]["1"]["splits"]) == sorted(record["data"]["splits"]) == ["train", "valid"]
            further_run = [r for r in record["runs"] if r["subset_seed"] == 1][0]
            # a run that never improved (every run of a cell whose loss rejects its targets) keeps no checkpoint
            assert (project / "models" / cell / "subset1-seed0.pt").is_file() == (further_run["checkpoint"] is not None)
        assert all(r["initial"]["epoch"] == 0 for r in record["runs"])


def test_changing_the_evaluation_code_reruns_evaluate_not_train(repro):
    project, env, _ = repro
    code = project / "src" / "misfit" / "evaluate" / "score.py"
    text = code.read_text()
    code.write_text(text + "\n# a later edit\n")
    try:
        run(["dvc", "repro", "--single-item", "train-inputs", "evaluate-inputs"], project, env)
        stale = json.loads(run(["dvc", "status", "--json"], project, env).stdout)
    finally:
        code.write_text(text)
        run(["dvc", "repro", "--single-item", "evaluate-inputs"], project, env)
    cells = yaml.safe_load((project / "params.yaml").read_text())["cells"]  # one changed above
    assert sorted(stale) == sorted(f"evaluate@{cell}" for cell in cells)
    assert json.loads(run(["dvc", "status", "--json"], project, env).stdout) == {}


def test_evaluations_and_predictions_hold_every_kept_checkpoint(repro):
    import numpy as np

    from misfit.core.record import load_evaluation, load_train_record

    project, _, _ = repro
    for cell in yaml.safe_load((project / "params.yaml").read_text())["cells"]:
        record = load_train_record(project / "records" / f"{cell}.json")
        evaluation = load_evaluation(project / "evaluations" / f"{cell}.json")
        kept = [(r.subset_seed, r.seed) for r in record.runs if r.checkpoint]
        assert [(r.subset_seed, r.seed) for r in evaluation.runs] == kept
        assert all(r.matches_record for r in evaluation.runs)
        with np.load(project / "predictions" / f"{cell}.npz") as predictions:
            assert predictions["per_image"].shape == (len(kept), 100)
            assert np.allclose(predictions["per_image"].mean(axis=1), [r.test for r in evaluation.runs])
        for run in evaluation.runs:  # probabilities get calibration figures, a regression none
            assert (run.calibration is None) == cell.startswith("regression")


def test_no_train_stage_depends_on_a_test_file_and_one_trains_without_them(repro):
    """dvc.yaml gives train@<cell> no test file, and the split puts none where it looks:
    a train stage run with the test split and its targets moved away trains as before."""
    project, env, _ = repro
    spec = yaml.safe_load((project / "dvc.yaml").read_text())["stages"]["train"]["do"]
    assert not [d for d in spec["deps"] if "test" in d]
    assert not list((project / "data" / "split").rglob("test*")) and not list((project / "data" / "labels").rglob("test*"))
    away = project.parent / "away"
    away.mkdir()
    for name in ("test", "test_labels.npz"):
        (project / "data" / name).rename(away / name)
    try:
        done = run(["dvc", "repro", "--force", "--single-item", "train@binary-softmax-ce"], project, env)
    finally:
        for name in ("test", "test_labels.npz"):
            (away / name).rename(project / "data" / name)
    assert stages_run(done.stdout) == ["train@binary-softmax-ce"]
    run(["dvc", "repro"], project, env)  # evaluate@ and the report follow the retrained cell
