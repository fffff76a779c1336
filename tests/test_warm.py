"""The warm worker (misfit.run.warm): a train stage forked from it trains exactly what a stage in
its own process trains, signals reach it, a dead stage takes its child along, and without a
worker the stage still runs."""
from __future__ import annotations

import json
import os
import re
import select
import shutil
import signal
import sqlite3
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import psutil
import pytest
from conftest import REPO, run, synthetic_project

from misfit.run import channel

pytestmark = pytest.mark.slow  # real DVC / MLflow / processes: the full tier (README, Tests)

CELL = "regression-none-mse-zscore"
STARTED = re.compile(r"started a warm \w+ worker \(pid (\d+)\)")


@pytest.fixture(scope="module")
def sockets():
    # a short path of its own: a Unix socket's path is limited to 107 bytes
    directory = tempfile.mkdtemp(prefix="w", dir="/tmp")
    yield directory
    shutil.rmtree(directory, ignore_errors=True)


def stage(root: Path, env: dict, **extra: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "stages/train.py", CELL], cwd=root, capture_output=True, text=True,
                          env={**env, "PYTHONPATH": "src", **extra}, timeout=300)


def comparable(record: dict) -> list[dict]:
    """What a run computed: everything but wall seconds and MLflow's ids."""
    runs = []
    for r in record["runs"]:
        runs.append({**{k: v for k, v in r.items() if k not in ("run_id", "history")},
                     "history": [{k: v for k, v in row.items() if k != "seconds"} for row in r["history"]]})
    return runs


def alive(pid: int) -> bool:
    try:
        return psutil.Process(pid).status() != psutil.STATUS_ZOMBIE
    except psutil.NoSuchProcess:
        return False


def wait_until(condition, timeout: float = 30) -> bool:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if condition():
            return True
        time.sleep(0.1)
    return condition()


@pytest.fixture(scope="module")
def small(tmp_path_factory, sockets):
    root, env, _ = synthetic_project(tmp_path_factory.mktemp("warm-small"), [CELL], repro=False,
                                     draws__subset_seeds=[])
    run(["dvc", "repro", "label-derive", "train-inputs"], root, env)
    return root, {**env, "XDG_RUNTIME_DIR": sockets, "MISFIT_WARM_IDLE": "3"}


def test_a_stage_forked_from_a_warm_worker_trains_what_its_own_process_trains(small):
    root, env = small
    alone = stage(root, env, MISFIT_WARM="0")
    assert alone.returncode == 0, alone.stderr
    assert "warm worker" not in alone.stderr
    by_itself = json.loads((root / "records" / f"{CELL}.json").read_text())

    forked = stage(root, env)
    assert forked.returncode == 0, forked.stderr
    worker = int(STARTED.search(forked.stderr).group(1))
    from_worker = json.loads((root / "records" / f"{CELL}.json").read_text())
    assert from_worker["parent_run_id"] != by_itself["parent_run_id"]
    assert comparable(from_worker) == comparable(by_itself)
    assert [r["history"][-1]["epoch"] for r in from_worker["runs"]] == [3, 3]

    again = stage(root, env)  # the same worker takes the next stage: no new start
    assert again.returncode == 0 and "started a warm" not in again.stderr, again.stderr
    assert comparable(json.loads((root / "records" / f"{CELL}.json").read_text())) == comparable(by_itself)

    # the runs name the stage process (what DVC started) and the child that trained
    with sqlite3.connect(root / "mlruns" / "mlflow.db") as db:
        tags = dict(db.execute("select key, value from tags where run_uuid = ?",
                               (from_worker["parent_run_id"],)).fetchall())
    assert int(tags["misfit.worker_pid"]) != int(tags["misfit.pid"])
    assert psutil.Process(worker).is_running()

    # idle for MISFIT_WARM_IDLE seconds: the worker ends and takes its socket along
    assert wait_until(lambda: not alive(worker), timeout=20)
    assert not list(Path(env["XDG_RUNTIME_DIR"]).glob("misfit-warm-*/*.sock"))


def test_a_worker_stopped_by_sigterm_takes_its_socket_along(small):
    root, env = small
    done = stage(root, env, MISFIT_WARM_IDLE="60")
    assert done.returncode == 0, done.stderr
    worker = int(STARTED.search(done.stderr).group(1))
    assert list(Path(env["XDG_RUNTIME_DIR"]).glob("misfit-warm-*/*.sock"))
    os.kill(worker, signal.SIGTERM)
    assert wait_until(lambda: not alive(worker))
    assert not list(Path(env["XDG_RUNTIME_DIR"]).glob("misfit-warm-*/*.sock"))


def test_without_a_worker_the_stage_runs_in_its_own_process(small):
    root, env = small
    done = stage(root, env, MISFIT_WARM_IDLE="soon")  # the worker refuses to start
    assert done.returncode == 0, done.stderr
    assert "no warm worker" in done.stderr and "MISFIT_WARM_IDLE='soon'" in done.stderr, done.stderr
    assert "runs in its own process" in done.stderr


def test_a_worker_serves_only_its_own_code_interpreter_and_environment(tmp_path):
    package = tmp_path / "misfit"
    shutil.copytree(REPO / "src" / "misfit", package, ignore=shutil.ignore_patterns("__pycache__"))
    before = channel.code_digest(package)
    (package / "train" / "model.py").write_text((package / "train" / "model.py").read_text() + "\n# changed\n")
    assert channel.code_digest(package) != before

    key = channel.worker_key(REPO, {"HOME": "/root"})
    assert channel.worker_key(REPO, {"HOME": "/elsewhere"}) == key  # not read at import
    for name in ("OMP_NUM_THREADS", "CUDA_VISIBLE_DEVICES", "PYTHONHASHSEED", "MLFLOW_TRACKING_URI"):
        assert channel.worker_key(REPO, {"HOME": "/root", name: "1"}) != key, name
    assert channel.worker_key(tmp_path, {"HOME": "/root"}) != key  # another checkout
    assert channel.worker_key(REPO, {"HOME": "/root"}, "evaluate") != key  # another stage kind


def test_an_evaluate_stage_forked_from_a_warm_worker_scores_what_its_own_process_scores(small):
    root, env = small
    trained = stage(root, env, MISFIT_WARM="0")
    assert trained.returncode == 0, trained.stderr
    run(["dvc", "repro", "evaluate-inputs"], root, env)

    def evaluate(**extra: str) -> tuple[subprocess.CompletedProcess, dict]:
        done = subprocess.run([sys.executable, "stages/evaluate.py", CELL], cwd=root, capture_output=True,
                              text=True, env={**env, "PYTHONPATH": "src", **extra}, timeout=300)
        assert done.returncode == 0, done.stderr
        return done, {name: json.loads((root / name / f"{CELL}.json").read_text())
                      for name in ("evaluations", "metrics")}

    alone, by_itself = evaluate(MISFIT_WARM="0")
    assert "warm" not in alone.stderr
    forked, from_worker = evaluate()
    assert "started a warm evaluate worker" in forked.stderr, forked.stderr
    assert without_seconds(from_worker) == without_seconds(by_itself)


def without_seconds(value):
    """A record less its wall-clock figures (everything named *seconds* or *_ms*)."""
    if isinstance(value, dict):
        return {k: without_seconds(v) for k, v in value.items() if "seconds" not in k and not k.endswith("_ms")}
    if isinstance(value, list):
        return [without_seconds(v) for v in value]
    return value


# -- signals: a stage long enough to be caught mid-training

class LongStage:
    def __init__(self, root: Path, env: dict):
        self.root = root
        self.process = subprocess.Popen([sys.executable, "stages/train.py", CELL], cwd=root,
                                        env={**env, "PYTHONPATH": "src"}, stdout=subprocess.PIPE,
                                        stderr=subprocess.STDOUT, text=True)
        self.output = ""

    def wait_for_epoch(self, timeout: float = 120) -> None:
        deadline = time.monotonic() + timeout
        while " epoch   2 |" not in self.output:
            assert time.monotonic() < deadline and self.process.poll() is None, self.output
            if select.select([self.process.stdout], [], [], 1)[0]:
                self.output += self.process.stdout.readline()

    def runs(self) -> dict[str, tuple[str, dict]]:
        """{run id: (status, tags)} of the runs this stage process opened."""
        with sqlite3.connect(self.root / "mlruns" / "mlflow.db") as db:
            ids = [row[0] for row in db.execute(
                "select run_uuid from tags where key = 'misfit.pid' and value = ?", (str(self.process.pid),))]
            return {run_id: (db.execute("select status from runs where run_uuid = ?", (run_id,)).fetchone()[0],
                             dict(db.execute("select key, value from tags where run_uuid = ?", (run_id,))))
                    for run_id in ids}

    def child(self) -> int:
        pids = {int(tags["misfit.worker_pid"]) for _, tags in self.runs().values()}
        assert len(pids) == 1, pids
        return pids.pop()

    def finish(self) -> int:
        self.output += self.process.communicate(timeout=60)[0]
        return self.process.returncode


@pytest.fixture(scope="module")
def long(tmp_path_factory, sockets):
    root, env, _ = synthetic_project(tmp_path_factory.mktemp("warm-long"), [CELL], repro=False,
                                     draws__subset_seeds=[], protocol__max_epochs=500, protocol__patience=500)
    run(["dvc", "repro", "label-derive", "train-inputs"], root, env)
    return root, {**env, "XDG_RUNTIME_DIR": sockets, "MISFIT_WARM_IDLE": "30"}


def test_sigterm_to_the_stage_reaches_the_child_which_closes_its_runs(long):
    running = LongStage(*long)
    running.wait_for_epoch()
    child = running.child()
    running.process.send_signal(signal.SIGTERM)
    assert running.finish() == 128 + signal.SIGTERM, running.output
    assert wait_until(lambda: not alive(child))
    statuses = {status for status, _ in running.runs().values()}
    assert statuses == {"KILLED"} and len(running.runs()) == 3, running.runs()


def test_a_stage_killed_outright_takes_its_child_along(long):
    running = LongStage(*long)
    running.wait_for_epoch()
    child = running.child()
    running.process.kill()
    running.finish()
    # the worker saw the stage's end of the socket close and sent the child SIGTERM
    assert wait_until(lambda: not alive(child))
    assert wait_until(lambda: {s for s, _ in running.runs().values()} == {"KILLED"}), running.runs()


def test_a_child_killed_outright_fails_the_stage(long):
    running = LongStage(*long)
    running.wait_for_epoch()
    os.kill(running.child(), signal.SIGKILL)
    assert running.finish() == 128 + signal.SIGKILL, running.output
    # no handler ran: the runs stay RUNNING until a later start sees that the stage is gone
    assert {s for s, _ in running.runs().values()} == {"RUNNING"}


@pytest.mark.parametrize("path, edit, named", [
    ("src/misfit/train/model.py", lambda text: text + "\n# a later edit\n", "src/misfit/train/model.py"),
    ("params.yaml", lambda text: text.replace("lr: 0.001", "lr: 0.002"), "params protocol"),
])
def test_a_stage_refuses_to_run_code_or_params_that_train_inputs_does_not_list(small, path, edit, named):
    # dvc.lock pins a train stage's code and shared params through data/train_inputs.json:
    # after `dvc repro --single-item train@...` past a change, the pin would name other
    # code or params than ran
    root, env = small
    changed = root / path
    text = changed.read_text()
    assert edit(text) != text
    changed.write_text(edit(text))
    try:
        done = stage(root, env)
    finally:
        changed.write_text(text)
    assert done.returncode == 1
    assert f"data/train_inputs.json does not list the code and params that would run ({named} changed" in done.stderr
    assert "dvc repro train-inputs" in done.stderr
