"""`misfit run --jobs 4` against a real MLflow tracking server, checked by counting.

Four DVC workers train four cells at once and log to one `mlflow server` (SQLite backend)
over HTTP. Every parent and child run, every parameter and every per-epoch metric step
must be there, and the results must equal those of a plain sequential `dvc repro` of the
same project (both with OMP_NUM_THREADS=1: the thread count changes float rounding).
"""
from __future__ import annotations

import json
import math
import re
import time
from pathlib import Path

import pytest
import yaml

from conftest import assert_pipeline_current, base_env, make_project, run, small_params, synthetic_mnist

# every study of src/misfit/study.py has a cell here, and one cell fails by design (BCE
# rejects z-scored targets): a failed cell must be counted as carefully as the others
CELLS = ["regression-none-mse-zscore", "regression-none-bce-zscore", "binary-softmax-ce",
         "multiclass-logits-ce"]
SEEDS = [0, 1]
RUN_ID = re.compile(r"^[0-9a-f]{32}$")


@pytest.fixture(scope="module")
def both_runs(tmp_path_factory, tracking_server):
    tmp = tmp_path_factory.mktemp("parallel")
    # one mirror for both projects: its manifest path is part of the data identity
    manifest = synthetic_mnist(tmp / "mirror")
    data_env = dict(MNIST_MIRROR=str(tmp / "mirror"), MNIST_MANIFEST=str(manifest), OMP_NUM_THREADS="1")
    params = small_params(CELLS, seeds=SEEDS)

    parallel = make_project(tmp / "parallel", params)
    parallel_env = base_env(**data_env, MLFLOW_TRACKING_URI=tracking_server)
    started = time.perf_counter()
    output = run(["misfit", "run", "--jobs", "4"], parallel, parallel_env, timeout=600)
    parallel_seconds = time.perf_counter() - started

    sequential = make_project(tmp / "sequential", params)
    started = time.perf_counter()
    run(["dvc", "repro"], sequential, base_env(**data_env), timeout=600)
    sequential_seconds = time.perf_counter() - started
    return dict(parallel=parallel, parallel_env=parallel_env, sequential=sequential, output=output,
                parallel_seconds=parallel_seconds, sequential_seconds=sequential_seconds,
                uri=tracking_server)


def test_report_wall_times(both_runs, capsys):
    with capsys.disabled():
        print(f"\n[{len(CELLS)} cells x {len(SEEDS)} seeds, 2 cores shared] misfit run --jobs 4: "
              f"{both_runs['parallel_seconds']:.1f} s; sequential dvc repro: "
              f"{both_runs['sequential_seconds']:.1f} s")


def test_workers_ran_every_cell_with_one_thread_each(both_runs):
    out = both_runs["output"].stdout
    assert f"{len(CELLS)} cells, 4 workers x 1 thread(s), MLflow store {both_runs['uri']}" in out
    for cell in CELLS:
        assert f"[{cell}] Running stage 'train@{cell}'" in out
        assert f"[{cell}] Running stage 'evaluate@{cell}'" in out


def load_params(project: Path):
    from misfit.config import load_params as load

    return load(project / "params.yaml")


def expected_run_params(project: Path) -> dict[str, dict[str, str]]:
    from misfit.train_stage import flat_params

    params = load_params(project)
    return {cell: {k: str(v) for k, v in flat_params(params.cell(cell), params).items()} for cell in CELLS}


def as_float(value) -> float:
    return float(value)  # record.json writes non-finite values as "nan" / "inf"


def same_number(a: float, b: float) -> bool:
    return (math.isnan(a) and math.isnan(b)) or a == b


def test_server_holds_every_run_param_and_metric_step(both_runs):
    from mlflow import MlflowClient

    project = both_runs["parallel"]
    client = MlflowClient(both_runs["uri"])
    experiment = client.get_experiment_by_name("misfit")
    runs = client.search_runs([experiment.experiment_id], max_results=1000)
    assert len(runs) == len(CELLS) * (1 + len(SEEDS))
    assert not [r for r in runs if r.info.status not in ("FINISHED", "FAILED")]
    by_id = {r.info.run_id: r for r in runs}
    expected_params = expected_run_params(project)
    counted = {"parents": 0, "children": 0, "params": 0, "metric_steps": 0}

    for cell in CELLS:
        record = json.loads((project / "models" / cell / "record.json").read_text())
        parents = [r for r in runs if r.data.tags.get("misfit.level") == "cell" and r.info.run_name == cell]
        assert [p.info.run_id for p in parents] == [record["parent_run_id"]]
        parent = parents[0]
        assert parent.data.params == {**expected_params[cell], "seeds": str(SEEDS)}
        assert parent.data.tags["cell"] == cell
        assert {"n_ok", "n_failed"} <= parent.data.metrics.keys()
        counted["parents"] += 1
        counted["params"] += len(parent.data.params)

        children = [r for r in runs if r.data.tags.get("mlflow.parentRunId") == parent.info.run_id]
        assert sorted(c.info.run_id for c in children) == sorted(r["run_id"] for r in record["runs"])
        metric = record["metric"]
        for seed_record in record["runs"]:
            child = by_id[seed_record["run_id"]]
            assert child.data.tags["seed"] == str(seed_record["seed"])
            assert child.info.status == ("FINISHED" if seed_record["status"] == "ok" else "FAILED")
            assert child.data.params == {**expected_params[cell], "seed": str(seed_record["seed"])}
            counted["children"] += 1
            counted["params"] += len(child.data.params)

            history = seed_record["history"]
            assert len(history) == seed_record["epochs_run"]
            per_epoch = {}
            for epoch in history:
                for key, value in epoch.items():
                    if key == "improved":  # a bool: not a metric
                        continue
                    name = f"valid_{metric}" if key == "valid_metric" else key
                    per_epoch.setdefault(name, []).append((epoch["epoch"], as_float(value)))
            for name, expected in per_epoch.items():
                logged = sorted((m.step, m.value) for m in client.get_metric_history(child.info.run_id, name))
                assert [s for s, _ in logged] == [s for s, _ in expected], f"{cell} seed {seed_record['seed']} {name}"
                assert all(same_number(a, b) for (_, a), (_, b) in zip(logged, expected)), name
                counted["metric_steps"] += len(logged)
            finals = {f"best_valid_{metric}": seed_record["valid_best"], f"test_{metric}": seed_record["test"],
                      "best_epoch": seed_record["best_epoch"], "epochs_run": seed_record["epochs_run"]}
            finals = {k: as_float(v) for k, v in finals.items() if v is not None}
            assert child.data.metrics.keys() == per_epoch.keys() | finals.keys()
            for name, value in finals.items():
                assert [(m.step, m.value) for m in client.get_metric_history(child.info.run_id, name)] == [(0, value)]

    assert counted["parents"] == len(CELLS) and counted["children"] == len(CELLS) * len(SEEDS)
    assert counted["metric_steps"] > 0
    print(f"counted on the server: {counted}")


def without_run_ids(value):
    if isinstance(value, dict):
        return {k: without_run_ids(v) for k, v in value.items()}
    if isinstance(value, list):
        return [without_run_ids(v) for v in value]
    if isinstance(value, str) and RUN_ID.match(value):
        return "<run id>"
    return value


def test_parallel_results_equal_sequential_results(both_runs):
    parallel, sequential = (json.loads((both_runs[k] / "reports" / "results.json").read_text())
                            for k in ("parallel", "sequential"))
    assert sorted(parallel["cells"]) == sorted(CELLS)
    assert without_run_ids(parallel) == without_run_ids(sequential)
    statuses = {cell: entry["status"] for cell, entry in parallel["cells"].items()}
    assert statuses == {cell: "failed" if cell == "regression-none-bce-zscore" else "ok" for cell in CELLS}
    for cell in CELLS:  # every epoch too, not only the summaries
        records = [json.loads((both_runs[k] / "models" / cell / "record.json").read_text())
                   for k in ("parallel", "sequential")]
        histories = [[[{k: v for k, v in e.items() if k != "seconds"} for e in r["history"]]
                      for r in record["runs"]] for record in records]
        assert histories[0] == histories[1], cell


def test_parallel_workspace_is_consistent(both_runs):
    project, env = both_runs["parallel"], both_runs["parallel_env"]
    assert_pipeline_current(project, env)
    lock = yaml.safe_load((project / "dvc.lock").read_text())["stages"]
    assert sorted(lock) == sorted(["download", "split", "label-derive", "report",
                                   *(f"{stage}@{cell}" for stage in ("train", "evaluate") for cell in CELLS)])


def test_a_failed_worker_fails_the_run_loudly_and_skips_the_report(tmp_path):
    """One cell's stage crashes (injected into this project's copy of stages/train.py);
    the other cell still completes, and `misfit run` says which cell failed and why."""
    cells = ["regression-none-mse-zscore", "binary-softmax-ce"]
    manifest = synthetic_mnist(tmp_path / "mirror")
    env = base_env(MNIST_MIRROR=str(tmp_path / "mirror"), MNIST_MANIFEST=str(manifest), OMP_NUM_THREADS="1")
    project = make_project(tmp_path / "project", small_params(cells, protocol__max_epochs=2))
    stage = project / "stages" / "train.py"
    main = 'if __name__ == "__main__":\n'
    assert main in stage.read_text()
    stage.write_text(stage.read_text().replace(
        main, main + '    if sys.argv[1:] == ["binary-softmax-ce"]:\n        sys.exit("injected failure")\n'))

    done = run(["misfit", "run", "--jobs", "2"], project, env, check=False, timeout=600)
    assert done.returncode == 1, done.stdout + done.stderr
    assert "1 of 2 cells FAILED; the report was not built." in done.stderr
    assert "--- binary-softmax-ce: `dvc --wait-for-lock repro -s train@binary-softmax-ce" in done.stderr
    assert "injected failure" in done.stderr
    assert not (project / "reports" / "results.json").exists()
    lock = yaml.safe_load((project / "dvc.lock").read_text())["stages"]
    assert {"train@regression-none-mse-zscore", "evaluate@regression-none-mse-zscore"} <= lock.keys()
    assert "train@binary-softmax-ce" not in lock
