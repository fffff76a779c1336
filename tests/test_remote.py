"""A DVC remote carries the data and the models to a fresh clone, byte for byte.

Git holds the code, params, dvc.lock and the small uncached outputs (records, metrics, report);
the remote holds what DVC caches (data/, models/). A teammate's `git clone` + `dvc pull`
then has a workspace that DVC considers up to date: nothing to retrain.
"""
from __future__ import annotations

import hashlib
import json

from conftest import assert_pipeline_current, base_env, make_project, run, small_params, stages_run, synthetic_mnist

CELLS = ["regression-none-mse-zscore", "binary-softmax-ce"]
CACHED = ("data", "models")


def digests(root, top: str) -> dict[str, str]:
    return {str(p.relative_to(root)): hashlib.sha256(p.read_bytes()).hexdigest()
            for p in sorted((root / top).rglob("*")) if p.is_file() and p.name != ".gitignore"}


def test_push_then_clone_and_pull_restores_data_and_models(tmp_path):
    manifest = synthetic_mnist(tmp_path / "mirror")
    env = base_env(MNIST_MIRROR=str(tmp_path / "mirror"), MNIST_MANIFEST=str(manifest))
    project = make_project(tmp_path / "project", small_params(CELLS, protocol__max_epochs=2))
    run(["dvc", "repro"], project, env)
    run(["git", "add", "-A"], project, env)
    run(["git", "commit", "-q", "-m", "results"], project, env)

    remote = tmp_path / "remote"
    run(["dvc", "remote", "add", "-d", "local", str(remote)], project, env)
    run(["git", "commit", "-q", "-am", "DVC remote"], project, env)
    pushed = run(["dvc", "push"], project, env)
    assert "pushed" in pushed.stdout, pushed.stdout
    cloud = run(["dvc", "status", "--cloud"], project, env)
    assert "Cache and remote 'local' are in sync." in cloud.stdout, cloud.stdout

    clone = tmp_path / "clone"
    run(["git", "clone", "-q", str(project), str(clone)], tmp_path, env)
    for top in CACHED:  # git alone does not bring them
        assert not digests(clone, top), f"{top}/ came with git"
    before = run(["dvc", "status"], clone, env)
    assert "deleted" in before.stdout, before.stdout

    run(["dvc", "pull"], clone, env)
    for top in CACHED:
        original = digests(project, top)
        assert original, f"nothing under {top}/"
        assert digests(clone, top) == original, top
    for cell in CELLS:
        assert (clone / "models" / cell / "seed0.pt").is_file()
    assert_pipeline_current(clone, env)


def test_cells_trained_on_two_machines_meet_in_one_report(tmp_path, tracking_server):
    """Two "machines" (clones) each train their share of the cells against one MLflow
    server and push DVC's run-cache to the shared remote; a third clone builds the report
    with `dvc repro --pull` and trains nothing: DVC restores every train stage from the
    run-cache, and the report points at the runs the two machines made. Nobody merges
    anyone's dvc.lock."""
    manifest = synthetic_mnist(tmp_path / "mirror")
    env = base_env(MNIST_MIRROR=str(tmp_path / "mirror"), MNIST_MANIFEST=str(manifest),
                   MLFLOW_TRACKING_URI=tracking_server)
    origin = make_project(tmp_path / "origin", small_params(CELLS, protocol__max_epochs=2))
    run(["dvc", "remote", "add", "-d", "shared", str(tmp_path / "remote")], origin, env)
    run(["git", "commit", "-q", "-am", "DVC remote"], origin, env)
    machines = {}
    for name in ("one", "two", "integrator"):
        machines[name] = tmp_path / name
        run(["git", "clone", "-q", str(origin), str(machines[name])], tmp_path, env)

    first = run(["dvc", "repro", f"train@{CELLS[0]}"], machines["one"], env)
    assert stages_run(first.stdout) == ["download", "split", "label-derive", f"train@{CELLS[0]}"]
    run(["dvc", "push", "--run-cache"], machines["one"], env)
    second = run(["dvc", "repro", "--pull", f"train@{CELLS[1]}"], machines["two"], env)
    assert stages_run(second.stdout) == [f"train@{CELLS[1]}"]  # the data came from machine one
    run(["dvc", "push", "--run-cache"], machines["two"], env)

    report = run(["dvc", "repro", "--pull"], machines["integrator"], env)
    ran = stages_run(report.stdout)
    assert not [stage for stage in ran if stage.startswith("train@")], report.stdout
    for cell in CELLS:
        assert f"Stage 'train@{cell}' is cached - skipping run, checking out outputs" in report.stdout
    assert ran[-1] == "report"
    status = run(["dvc", "status"], machines["integrator"], env)
    assert "Data and pipelines are up to date." in status.stdout, status.stdout

    from mlflow import MlflowClient

    client = MlflowClient(tracking_server)
    results = json.loads((machines["integrator"] / "reports" / "results.json").read_text())["cells"]
    for cell, trained_on in zip(CELLS, ("one", "two")):
        record = json.loads((machines[trained_on] / "records" / f"{cell}.json").read_text())
        assert results[cell]["parent_run"] == record["parent_run_id"]
        run_ids = [r["run_id"] for r in results[cell]["runs"]]
        assert run_ids == [r["run_id"] for r in record["runs"]]
        assert all(client.get_run(r).info.status == "FINISHED" for r in [record["parent_run_id"], *run_ids])
        assert digests(machines["integrator"], f"models/{cell}") == digests(machines[trained_on], f"models/{cell}")
    experiment = client.get_experiment_by_name("misfit")
    parents = [r for r in client.search_runs([experiment.experiment_id], max_results=1000)
               if r.data.tags.get("misfit.level") == "cell"]
    assert sorted(r.info.run_name for r in parents) == sorted(CELLS)  # each cell trained once
