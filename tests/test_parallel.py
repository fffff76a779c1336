"""`misfit run` on a real Dask cluster on loopback, checked by counting.

The test starts a `dask scheduler` and two `dask worker` processes (each clones the
repository into its own directory on its first cell), a local-directory DVC remote and a
real `mlflow server`. `misfit run --address` fans six cells x two seeds out over the
workers; one worker is SIGKILLed while it trains a cell, and that cell must be trained
again on the other worker. Every parent and child run, every parameter and every
per-epoch metric step must be in the server, no run may be left RUNNING, and the report
must equal that of a plain sequential `dvc repro` of the same project (both with
OMP_NUM_THREADS=1: the thread count changes float rounding).
"""
from __future__ import annotations

import contextlib
import json
import math
import os
import re
import signal
import socket
import subprocess
import sys
import threading
import time
from pathlib import Path

import psutil
import pytest
import yaml
from conftest import (
    assert_pipeline_current,
    base_env,
    free_port,
    make_project,
    run,
    small_params,
    stages_run,
    stop_process_group,
    synthetic_mnist,
)

from misfit.core.record import load_evaluation, load_train_record
from misfit.track.entries import evaluation_numbers, trained_finals

pytestmark = pytest.mark.slow  # real DVC / MLflow / processes: the full tier (README, Tests)

# every study of src/misfit/core/study.py has a cell here, and one cell fails by design (BCE
# rejects z-scored targets): a failed cell must be counted as carefully as the others
CELLS = ["regression-none-mse-zscore", "regression-none-bce-zscore", "probability-sigmoid-bce",
         "binary-softmax-ce", "multiclass-logits-ce", "multilabel-sigmoid-bce"]
SEEDS = [0, 1]
RUN_ID = re.compile(r"^[0-9a-f]{32}$")
DASK = str(Path(sys.executable).parent / "dask")


def wait_for_port(port: int, process: subprocess.Popen, log: Path, timeout: float = 60) -> None:
    deadline = time.monotonic() + timeout
    while True:
        assert process.poll() is None, f"it exited:\n{log.read_text()}"
        with socket.socket() as sock:
            if sock.connect_ex(("127.0.0.1", port)) == 0:
                return
        assert time.monotonic() < deadline, f"nothing listens on {port} after {timeout} s:\n{log.read_text()}"
        time.sleep(0.3)


class LoopbackCluster:
    """`dask scheduler` + `dask worker`s on 127.0.0.1, each its own process (group), by PID."""

    def __init__(self, directory: Path, env: dict):
        self.directory, self.env = directory, env
        self.processes: dict[str, subprocess.Popen] = {}
        self.logs = []
        port = free_port()
        self.address = f"tcp://127.0.0.1:{port}"
        self._start("scheduler", [DASK, "scheduler", "--host", "127.0.0.1", "--port", str(port), "--no-dashboard"])
        wait_for_port(port, self.processes["scheduler"], directory / "scheduler.log")

    def _start(self, name: str, command: list[str]) -> subprocess.Popen:
        log = open(self.directory / f"{name}.log", "w")
        self.logs.append(log)
        self.processes[name] = subprocess.Popen(command, cwd=self.directory, env=self.env, stdout=log,
                                                stderr=subprocess.STDOUT, start_new_session=True)
        return self.processes[name]

    def add_worker(self, name: str) -> subprocess.Popen:
        # --no-nanny: the PID we kill is the worker itself, not a nanny that would restart it
        return self._start(name, [DASK, "worker", self.address, "--name", name, "--nthreads", "1",
                                  "--no-nanny", "--no-dashboard", "--host", "127.0.0.1",
                                  "--local-directory", str(self.directory / name), "--death-timeout", "60"])

    def wait_for_workers(self, n: int) -> dict[str, str]:
        """{worker name: address} once n workers are connected."""
        from distributed import Client

        with Client(self.address, timeout=30) as client:
            client.wait_for_workers(n, timeout=120)
            return {info["name"]: address for address, info in client.scheduler_info()["workers"].items()}

    def stop(self) -> None:
        for name in reversed(list(self.processes)):  # workers first
            stop_process_group(self.processes[name])
        for log in self.logs:
            log.close()


def alive(pid: int) -> bool:
    try:
        return psutil.Process(pid).status() != psutil.STATUS_ZOMBIE
    except psutil.NoSuchProcess:
        return False


def stop_leftovers(directory: Path) -> None:
    """SIGKILL, by PID, any process still working in `directory` (a stage a test failed to
    stop): the test's failure is reported, not left running."""
    for process in psutil.process_iter(["pid", "cwd"]):
        if (process.info["cwd"] or "").startswith(str(directory)):
            with contextlib.suppress(psutil.NoSuchProcess):
                process.kill()


def worker_of(pid: int, workers: dict[str, subprocess.Popen]) -> str | None:
    """The name of the worker whose process tree holds `pid`, if any."""
    try:
        ancestors = {p.pid for p in psutil.Process(pid).parents()}
    except psutil.NoSuchProcess:
        return None
    return next((name for name, process in workers.items() if process.pid in ancestors), None)


def command_of(process: psutil.Process) -> str:
    """A process as its command line, with a `python -c` script elided."""
    args = process.cmdline()
    if args[1:2] == ["-c"]:
        args = [args[0], "-c", "<script>", *args[3:]]
    return " ".join([Path(args[0]).name, *args[1:]])


def chain_below(pid: int, top: int) -> list[str]:
    """The processes from below `top` down to `pid` (from below init where `top` is no ancestor)."""
    process = psutil.Process(pid)
    chain = [process]
    for parent in process.parents():
        if parent.pid == top or parent.pid == 1:
            break
        chain.append(parent)
    return [command_of(p) for p in reversed(chain)]


def kill_a_worker_mid_cell(uri: str, workers: dict[str, subprocess.Popen], finished: threading.Event,
                           found: dict) -> None:
    """SIGKILL the worker under the first cell that has trained an epoch, and say which."""
    from mlflow import MlflowClient

    client = MlflowClient(uri)
    while not finished.is_set():
        experiment = client.get_experiment_by_name("misfit")
        runs = client.search_runs([experiment.experiment_id], "attributes.status = 'RUNNING'") if experiment else []
        for run in runs:
            if run.data.tags.get("misfit.level") == "seed" and "train_loss" in run.data.metrics:  # epoch 1 is in
                name = worker_of(int(run.data.tags["misfit.pid"]), workers)
                if name:
                    stage_pid, training_pid = int(run.data.tags["misfit.pid"]), run.data.tags.get("misfit.worker_pid")
                    with contextlib.suppress(psutil.NoSuchProcess):
                        found.update(stage_chain=chain_below(stage_pid, workers[name].pid), training_chain=(
                            chain_below(int(training_pid), workers[name].pid) if training_pid else ["the stage itself"]))
                    found.update(worker=name, cell=run.data.tags["cell"], stage_pid=stage_pid)
                    os.kill(workers[name].pid, signal.SIGKILL)
                    return
        time.sleep(0.25)  # a tiny cell trains for a few seconds: look often


@pytest.fixture(scope="module")
def cluster_run(tmp_path_factory, tracking_server):
    tmp = tmp_path_factory.mktemp("cluster")
    # one mirror for every project: its manifest path is part of the data identity
    manifest = synthetic_mnist(tmp / "mirror")
    data_env = dict(MNIST_MIRROR=str(tmp / "mirror"), MNIST_MANIFEST=str(manifest), OMP_NUM_THREADS="1")
    params = small_params(CELLS, seeds=SEEDS)

    origin = make_project(tmp / "origin", params)
    run(["dvc", "remote", "add", "-d", "shared", str(tmp / "remote")], origin, base_env())
    run(["git", "commit", "-q", "-am", "DVC remote"], origin, base_env())
    client_repo = tmp / "client"
    run(["git", "clone", "-q", str(origin), str(client_repo)], tmp, base_env())

    (tmp / "dask").mkdir()
    cluster = LoopbackCluster(tmp / "dask", base_env(**data_env))
    try:
        workers = {name: cluster.add_worker(name) for name in ("worker-a", "worker-b")}
        addresses = cluster.wait_for_workers(2)
        env = base_env(**data_env, MLFLOW_TRACKING_URI=tracking_server)
        finished, killed = threading.Event(), {}
        killer = threading.Thread(target=kill_a_worker_mid_cell, args=(tracking_server, workers, finished, killed))
        started = time.perf_counter()
        killer.start()
        try:
            output = run(["misfit", "run", "--address", cluster.address], client_repo, env, timeout=900)
        finally:
            finished.set()
            killer.join()
        cluster_seconds = time.perf_counter() - started
        # the stage the killed worker ran must have ended with it (its guard's SIGINT)
        stage_survived = bool(killed) and alive(killed["stage_pid"])
    finally:
        cluster.stop()
        stop_leftovers(tmp / "dask")

    sequential = make_project(tmp / "sequential", params)
    started = time.perf_counter()
    run(["dvc", "repro"], sequential, base_env(**data_env), timeout=900)
    sequential_seconds = time.perf_counter() - started
    return dict(client=client_repo, env=env, sequential=sequential, output=output, killed=killed,
                stage_survived=stage_survived,
                addresses=addresses, cluster_seconds=cluster_seconds, sequential_seconds=sequential_seconds,
                uri=tracking_server, cluster=cluster)


def test_report_wall_times(cluster_run, figure):
    summary = [line for line in cluster_run["output"].stdout.splitlines()
               if line.startswith("misfit run: ") and " with the report" in line]
    figure(f"[{len(CELLS)} cells x {len(SEEDS)} seeds, 2 cores shared with the suite] misfit run on a loopback "
           f"scheduler + 2 workers, one SIGKILLed mid-cell: {cluster_run['cluster_seconds']:.1f} s "
           f"({'; '.join(summary)}); sequential dvc repro: {cluster_run['sequential_seconds']:.1f} s")


def test_one_process_between_the_dask_worker_and_the_stage(cluster_run, figure):
    """The guard runs DVC in itself: worker -> guard (DVC) [-> shell] -> stages/train.py."""
    killed = cluster_run["killed"]
    assert killed.get("stage_chain"), f"the stage ended before its processes were seen: {killed}"
    chain, training = killed["stage_chain"], killed["training_chain"]
    figure(f"process chain under a Dask worker: {' -> '.join(chain)} ({len(chain)} below the worker); "
           f"the runs train in: {' -> '.join(training)} ({len(training)} below)")
    guard, stage = chain[0], chain[-1]
    assert guard.startswith("python") and "<script>" in guard and " dvc repro " in guard, chain
    assert "stages/train.py" in stage, chain
    assert not any(command.split()[0] == "dvc" for command in chain), f"a separate DVC process: {chain}"
    assert len(chain) <= 3, chain  # guard, at most a shell DVC starts the command with, the stage


def test_the_killed_workers_cell_ran_again_on_the_other_worker(cluster_run):
    killed, addresses, out = cluster_run["killed"], cluster_run["addresses"], cluster_run["output"].stdout
    assert killed, f"no worker was killed: no seed run with an epoch was seen RUNNING\n{out}"
    cell, dead = killed["cell"], addresses[killed["worker"]]
    other = next(address for name, address in addresses.items() if name != killed["worker"])
    assert f"misfit run: {cell}: worker {dead} was lost while it ran the cell; Dask ran the cell again" in out
    assert f"misfit run: {cell} done on {other}" in out
    # the stage the worker ran ended with it (the guard's SIGINT), not left training alone
    assert not cluster_run["stage_survived"]


def load_params(project: Path):
    from misfit.core.config import load_params as load

    return load(project / "params.yaml")


def expected_run_params(project: Path) -> dict[str, dict[str, str]]:
    """Per cell, the parameters its parent run has (every child has them too, plus its own)."""
    from misfit.train.stage import flat_params

    params = load_params(project)
    return {cell: {**{k: str(v) for k, v in flat_params(params.cell(cell), params).items()},
                   "seeds": str(params.seeds_of(cell)),
                   "draws.subset_seeds": str(list(dict.fromkeys(d for d, _ in params.members_of(cell)))[1:])}
            for cell in CELLS}


def logged_value(value) -> float | None:
    """A record's value as the train stage logged it: numbers only (records.json writes
    non-finite ones as "nan" / "inf"), no bools, no None, no lists."""
    if isinstance(value, bool) or value is None:
        return None
    if isinstance(value, (int, float)):
        return float(value)
    if value in ("nan", "inf", "-inf"):
        return float(value)
    return None


def same_number(a: float, b: float) -> bool:
    return (math.isnan(a) and math.isnan(b)) or a == b


def test_server_holds_every_run_param_and_metric_step_and_nothing_running(cluster_run):
    from mlflow import MlflowClient

    project = cluster_run["client"]
    client = MlflowClient(cluster_run["uri"])
    experiment = client.get_experiment_by_name("misfit")
    runs = client.search_runs([experiment.experiment_id], max_results=1000)
    members = {cell: load_params(project).members_of(cell) for cell in CELLS}
    assert not [r for r in runs if r.info.status == "RUNNING"]
    # the killed attempt: its parent run closed KILLED when its worker died, and each child
    # KILLED too (or FAILED, had it already failed on its own; or FINISHED, when the kill
    # landed while the stage was writing its outputs and had closed that child already)
    killed_cell = cluster_run["killed"]["cell"]
    killed_parents = [r for r in runs if r.info.status == "KILLED" and r.data.tags["misfit.level"] == "cell"]
    assert [r.data.tags["cell"] for r in killed_parents] == [killed_cell]
    killed_runs = killed_parents + [r for r in runs
                                    if r.data.tags.get("mlflow.parentRunId") == killed_parents[0].info.run_id]
    assert len(killed_runs) == 1 + len(members[killed_cell])
    assert {r.info.status for r in killed_runs[1:]} <= {"KILLED", "FAILED", "FINISHED"}
    killed_ids = {r.info.run_id for r in killed_runs}
    assert not [r for r in runs if r.info.status == "KILLED" and r.info.run_id not in killed_ids]
    runs = [r for r in runs if r.info.run_id not in killed_ids]
    assert len(runs) == sum(1 + len(m) for m in members.values())
    assert not [r for r in runs if r.info.status not in ("FINISHED", "FAILED")]
    by_id = {r.info.run_id: r for r in runs}
    expected_params = expected_run_params(project)
    counted = {"runs": len(killed_runs), "parents": 0, "children": 0, "params": 0, "metric_steps": 0}

    for cell in CELLS:
        record = json.loads((project / "records" / f"{cell}.json").read_text())
        typed_record = load_train_record(project / "records" / f"{cell}.json")
        evaluation = load_evaluation(project / "evaluations" / f"{cell}.json")
        parents = [r for r in runs if r.data.tags.get("misfit.level") == "cell" and r.info.run_name == cell]
        assert [p.info.run_id for p in parents] == [record["parent_run_id"]]
        parent = parents[0]
        assert parent.data.params == expected_params[cell]
        assert parent.data.tags["cell"] == cell
        assert parent.info.status == ("FINISHED" if all(r["status"] == "ok" for r in record["runs"]) else "FAILED")
        assert {"n_runs", "n_failed"} <= parent.data.metrics.keys()
        counted["parents"] += 1
        counted["params"] += len(parent.data.params)

        children = [r for r in runs if r.data.tags.get("mlflow.parentRunId") == parent.info.run_id]
        assert sorted(c.info.run_id for c in children) == sorted(r["run_id"] for r in record["runs"])
        assert sorted((r["subset_seed"], r["seed"]) for r in record["runs"]) == sorted(members[cell])
        metric = record["metric"]
        for run_record in record["runs"]:
            child = by_id[run_record["run_id"]]
            assert child.data.tags["seed"] == str(run_record["seed"])
            assert child.info.status == ("FINISHED" if run_record["status"] == "ok" else "FAILED")
            assert child.data.params == {**expected_params[cell], "seed": str(run_record["seed"]),
                                         "data.subset_seed": str(run_record["subset_seed"])}
            counted["children"] += 1
            counted["params"] += len(child.data.params)

            assert len(run_record["history"]) == run_record["epochs_run"]
            per_epoch = {}
            for epoch in [run_record["initial"], *run_record["history"]]:
                for key, value in epoch.items():
                    value = logged_value(value)
                    if value is None:
                        continue
                    name = f"valid_{metric}" if key == "valid_metric" else key
                    per_epoch.setdefault(name, []).append((epoch["epoch"], value))
            where = f"{cell} draw {run_record['subset_seed']} seed {run_record['seed']}"
            for name, expected in per_epoch.items():
                logged = sorted((m.step, m.value) for m in client.get_metric_history(child.info.run_id, name))
                assert [s for s, _ in logged] == [s for s, _ in expected], f"{where} {name}"
                assert all(same_number(a, b) for (_, a), (_, b) in zip(logged, expected)), f"{where} {name}"
                counted["metric_steps"] += len(logged)
            # what train@ logs at the end, and what evaluate@ adds: the same functions restore-runs uses
            typed = typed_record.run(run_record["subset_seed"], run_record["seed"])
            scored = evaluation.run(run_record["subset_seed"], run_record["seed"])
            finals = {**trained_finals(typed, metric), **(evaluation_numbers(scored, metric) if scored else {})}
            assert child.data.metrics.keys() == per_epoch.keys() | finals.keys(), where
            for name, value in finals.items():
                history = client.get_metric_history(child.info.run_id, name)
                assert [(m.step, m.value) for m in history] == [(0, value)], f"{where} {name}"

    assert counted["parents"] == len(CELLS)
    assert counted["children"] == sum(len(m) for m in members.values())
    assert counted["metric_steps"] > 0
    counted["runs"] += counted["parents"] + counted["children"]
    print(f"counted on the server: {counted}")


def without_run_ids(value):
    if isinstance(value, dict):
        return {k: without_run_ids(v) for k, v in value.items()}
    if isinstance(value, list):
        return [without_run_ids(v) for v in value]
    if isinstance(value, str) and RUN_ID.match(value):
        return "<run id>"
    return value


def test_cluster_results_equal_sequential_results(cluster_run):
    cluster, sequential = (json.loads((cluster_run[k] / "reports" / "results.json").read_text())
                           for k in ("client", "sequential"))
    assert sorted(cluster["cells"]) == sorted(CELLS)
    assert without_run_ids(cluster) == without_run_ids(sequential)
    statuses = {cell: {r["status"] for r in json.loads((cluster_run["client"] / "records" / f"{cell}.json")
                                                      .read_text())["runs"]} for cell in CELLS}
    assert statuses == {cell: {"failed" if cell == "regression-none-bce-zscore" else "ok"} for cell in CELLS}
    for cell in CELLS:  # every epoch too, not only the summaries
        records = [json.loads((cluster_run[k] / "records" / f"{cell}.json").read_text())
                   for k in ("client", "sequential")]
        histories = [[[{k: v for k, v in e.items() if k != "seconds"} for e in r["history"]]
                      for r in record["runs"]] for record in records]
        assert histories[0] == histories[1], cell


def test_the_client_restored_every_cell_without_training(cluster_run):
    out = cluster_run["output"].stdout
    final = out[out.index("$ dvc repro --pull"):]
    assert not [stage for stage in stages_run(final) if stage.startswith("train@")], final
    for cell in CELLS:
        assert f"Stage 'train@{cell}' is cached - skipping run, checking out outputs" in final
    assert stages_run(final)[-1] == "report"
    project, env = cluster_run["client"], cluster_run["env"]
    assert_pipeline_current(project, env)
    lock = yaml.safe_load((project / "dvc.lock").read_text())["stages"]
    assert {f"train@{cell}" for cell in CELLS} | {"report"} <= lock.keys()


# --- what `misfit run` refuses, each within seconds ------------------------------------


@pytest.fixture(scope="module")
def clean_project(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("refusals")
    project = make_project(tmp / "project", small_params(CELLS[:1], seeds=[0]))
    run(["dvc", "remote", "add", "-d", "shared", str(tmp / "remote")], project, base_env())
    run(["git", "commit", "-q", "-am", "DVC remote"], project, base_env())
    return project


def refused(project: Path, args: list[str], **env) -> subprocess.CompletedProcess:
    started = time.monotonic()
    done = run(["misfit", "run", *args], project, base_env(**env), check=False, timeout=60)
    assert done.returncode == 2, done.stdout + done.stderr
    assert time.monotonic() - started < 30
    return done


def test_an_unreachable_scheduler_is_an_error_within_seconds(clean_project, tracking_server):
    address = f"tcp://127.0.0.1:{free_port()}"  # nothing listens there
    done = refused(clean_project, ["--address", address, "--connect-timeout", "3", "--repo-url", str(clean_project)],
                   MLFLOW_TRACKING_URI=tracking_server)
    assert f"no Dask scheduler answered at {address} within 3 s" in done.stderr


def test_a_cluster_needs_a_tracking_server(clean_project):
    done = refused(clean_project, ["--address", "tcp://127.0.0.1:9"], MLFLOW_TRACKING_URI="sqlite:////tmp/x.db")
    assert "MLFLOW_TRACKING_URI must name an MLflow tracking server" in done.stderr
    assert "sqlite:////tmp/x.db" in done.stderr


def test_an_unreachable_tracking_server_is_an_error_within_seconds(clean_project):
    uri = f"http://127.0.0.1:{free_port()}"
    done = refused(clean_project, ["--address", "tcp://127.0.0.1:9"], MLFLOW_TRACKING_URI=uri)
    assert f"the MLflow tracking server {uri} (MLFLOW_TRACKING_URI) did not answer within 5 s" in done.stderr


def test_a_dirty_tree_is_refused(clean_project, tmp_path):
    params = clean_project / "params.yaml"
    before = params.read_text()
    params.write_text(before.replace("max_epochs: 3", "max_epochs: 4"))
    try:
        done = refused(clean_project, ["--jobs", "1"])
    finally:
        params.write_text(before)
    assert "the work tree has uncommitted changes (params.yaml)" in done.stderr


def test_a_cluster_needs_a_committed_dvc_remote(tmp_path, tracking_server):
    project = make_project(tmp_path / "project", small_params(CELLS[:1], seeds=[0]))
    done = refused(project, ["--address", "tcp://127.0.0.1:9"], MLFLOW_TRACKING_URI=tracking_server)
    assert "a cluster needs a default DVC remote in the committed .dvc/config" in done.stderr


# --- the embedded local cluster, and a cell that fails for real ------------------------


def test_a_failed_cell_is_reported_not_retried_and_skips_the_report(tmp_path):
    """One cell's stage crashes (injected into this project's copy of stages/train.py,
    committed); the other cell completes, and `misfit run` on its local cluster says which
    cell failed and why, once: a stage that exits non-zero is not retried."""
    cells = ["regression-none-mse-zscore", "binary-softmax-ce"]
    manifest = synthetic_mnist(tmp_path / "mirror")
    env = base_env(MNIST_MIRROR=str(tmp_path / "mirror"), MNIST_MANIFEST=str(manifest), OMP_NUM_THREADS="1")
    project = make_project(tmp_path / "project", small_params(cells, seeds=[0], protocol__max_epochs=2))
    stage = project / "stages" / "train.py"
    main = 'if __name__ == "__main__":\n'
    assert main in stage.read_text()
    stage.write_text(stage.read_text().replace(
        main, main + '    if sys.argv[1:] == ["binary-softmax-ce"]:\n        sys.exit("injected failure")\n'))
    run(["git", "commit", "-q", "-am", "a cell that fails"], project, env)

    done = run(["misfit", "run", "--jobs", "2"], project, env, check=False, timeout=600)
    assert done.returncode == 1, done.stdout + done.stderr
    assert "on a local cluster of 2 worker(s) x 1 thread(s)" in done.stdout
    assert "1 of 2 cells FAILED; the report was not built." in done.stderr
    assert "--- binary-softmax-ce: `dvc repro train@binary-softmax-ce" in done.stderr
    assert "injected failure" in done.stderr
    assert done.stdout.count("[binary-softmax-ce] on worker ") == 1, done.stdout  # not retried
    assert "misfit run: regression-none-mse-zscore done on tcp://127.0.0.1:" in done.stdout
    assert not (project / "reports" / "results.json").exists()


def test_sigterm_stops_the_local_cluster_and_the_runs_end_killed(tmp_path):
    """SIGTERM (or Ctrl-C) to `misfit run`: the local cluster closes, each stage gets SIGINT
    from its guard and closes its MLflow runs KILLED; nothing of ours keeps training."""
    from mlflow import MlflowClient

    manifest = synthetic_mnist(tmp_path / "mirror")
    env = base_env(MNIST_MIRROR=str(tmp_path / "mirror"), MNIST_MANIFEST=str(manifest), OMP_NUM_THREADS="1")
    project = make_project(tmp_path / "project", small_params(
        CELLS[:1], seeds=[0], protocol__max_epochs=500, protocol__patience=500))
    log = tmp_path / "run.log"
    with open(log, "w") as out:
        process = subprocess.Popen(["misfit", "run", "--jobs", "1"], cwd=project, env=env, stdout=out,
                                   stderr=subprocess.STDOUT, start_new_session=True)
    try:
        deadline = time.monotonic() + 180
        while "epoch   2" not in log.read_text():
            assert process.poll() is None and time.monotonic() < deadline, log.read_text()
            time.sleep(0.5)
        process.send_signal(signal.SIGTERM)
        assert process.wait(timeout=60) == 130, log.read_text()
    finally:
        stop_process_group(process)
    assert "misfit run: interrupted. The local workers were stopped" in log.read_text()
    client = MlflowClient(f"sqlite:///{project / 'mlruns' / 'mlflow.db'}")
    runs = client.search_runs([client.get_experiment_by_name("misfit").experiment_id])
    members = load_params(project).members_of(CELLS[0])
    assert [r.info.status for r in runs] == ["KILLED"] * (1 + len(members))  # the cell's run and each child
    assert not alive(int(runs[0].data.tags["misfit.pid"]))


def test_a_setup_error_is_known_by_its_type_and_stops_the_other_cells(tmp_path):
    """A failed clone would fail every cell the same way: the first SetupError (the class
    the worker raised, back through cloudpickle as the client's own) cancels the rest."""
    from misfit.run.parallel import collect, dask_client, submit_cells

    cells = {"regression-none-mse-zscore": ["train@regression-none-mse-zscore"],
             "binary-softmax-ce": ["train@binary-softmax-ce"]}
    with dask_client(None, 1, 30) as client:
        futures = submit_cells(client, cells, str(tmp_path / "no-repository"), "0" * 40, {}, None, False, "setup")
        done, failed = collect(client, futures)
    assert not done and len(failed) == 1, failed
    assert failed[0]["error"].startswith("SetupError: git clone"), failed
