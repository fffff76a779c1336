"""Killed in the middle of training, then run again: the store and the workspace heal.

One project lives through four `dvc repro`s:
  1. SIGTERM to the training process: it closes the cell's runs as KILLED itself
     (misfit.track.runs.killed_on_signal) and exits with 128 + 15.
  2. SIGKILL to the training process: no handler runs, the runs stay RUNNING; DVC
     survives and reports the failed stage.
  3. SIGKILL to DVC and the training process together (a crash, the OOM killer): the
     first cell completes first, so a dead DVC leaves a half-done pipeline, its entries in
     .dvc/tmp/rwlock, and RUNNING runs. The first training start marks run 2's runs KILLED.
  4. A plain rerun: DVC drops the dead process's rwlock entries in its way, the train
     start marks run 3's runs KILLED, the study completes.
Afterwards no run is RUNNING, every number in the report comes from a FINISHED or FAILED
run, and DVC has nothing left to do.
"""
from __future__ import annotations

import json
import os
import re
import signal
import sqlite3
import subprocess
import sys
import threading
import time

import psutil
import pytest
from conftest import (
    assert_pipeline_current,
    base_env,
    make_project,
    run,
    small_params,
    synthetic_mnist,
)

pytestmark = pytest.mark.slow  # real DVC / MLflow / processes: the full tier (README, Tests)

# one cell per study of src/misfit/core/study.py, so the report has every section
CELLS = ["regression-none-mse-zscore", "binary-logits-ce"]
EPOCH_LINE = re.compile(r"^(\S+) epoch +\d+ \|")


class Repro:
    """`dvc repro` in its own process group, its output read line by line as it comes."""

    def __init__(self, project, env):
        self.process = subprocess.Popen(["dvc", "repro"], cwd=project, env=env, stdout=subprocess.PIPE,
                                        stderr=subprocess.STDOUT, text=True, start_new_session=True)
        self.lines: list[str] = []
        self.changed = threading.Condition()
        self.reader = threading.Thread(target=self._read, daemon=True)
        self.reader.start()

    def _read(self) -> None:
        for line in self.process.stdout:
            with self.changed:
                self.lines.append(line.rstrip("\n"))
                self.changed.notify_all()
        with self.changed:
            self.lines.append(None)  # end of output
            self.changed.notify_all()

    def wait_for_epoch(self, cell=None, timeout: float = 300) -> str:
        """The cell of the first progress line (of `cell`, if given): training is under way."""
        seen, deadline = 0, time.monotonic() + timeout
        with self.changed:
            while True:
                for line in self.lines[seen:]:
                    assert line is not None, "dvc repro ended before training began:\n" + self.output
                    match = EPOCH_LINE.match(line)
                    if match and cell in (None, match.group(1)):
                        return match.group(1)
                seen = len(self.lines)
                left = deadline - time.monotonic()
                assert left > 0, "no epoch line in time:\n" + self.output
                self.changed.wait(left)

    def training_process(self, cell: str) -> psutil.Process:
        """The python process of `stages/train.py <cell>` under this DVC (the shell may exec it)."""
        for child in psutil.Process(self.process.pid).children(recursive=True):
            cmdline = child.cmdline()
            if "python" in os.path.basename(cmdline[0]) and cmdline[-2:] == ["stages/train.py", cell]:
                return child
        raise AssertionError(f"no training process of {cell} under dvc {self.process.pid}")

    def finish(self, timeout: float = 300) -> int:
        code = self.process.wait(timeout)
        self.reader.join(timeout)
        return code

    @property
    def output(self) -> str:
        return "\n".join(line for line in self.lines if line is not None)


def runs_by_pid(project, pid: int) -> dict[str, tuple[str, str | None]]:
    """{run id: (status, misfit.error tag)} of the runs the process `pid` opened."""
    with sqlite3.connect(project / "mlruns" / "mlflow.db") as db:
        rows = db.execute(
            "select r.run_uuid, r.status, e.value from runs r "
            "join tags p on p.run_uuid = r.run_uuid and p.key = 'misfit.pid' and p.value = ? "
            "left join tags e on e.run_uuid = r.run_uuid and e.key = 'misfit.error'", (str(pid),)).fetchall()
    return {run_id: (status, error) for run_id, status, error in rows}


def all_statuses(project) -> dict[str, str]:
    with sqlite3.connect(project / "mlruns" / "mlflow.db") as db:
        return dict(db.execute("select run_uuid, status from runs").fetchall())


def rwlock(project) -> dict[str, dict[str, set[int]]]:
    """DVC's record of which process reads or writes which path: {mode: {path: pids}}."""
    path = project / ".dvc" / "tmp" / "rwlock"
    lock = json.loads(path.read_text()) if path.exists() else {}
    return {
        "write": {p: {info["pid"]} for p, info in lock.get("write", {}).items()},
        "read": {p: {info["pid"] for info in infos} for p, infos in lock.get("read", {}).items()},
    }


def paths_of(lock: dict[str, set[int]], pid: int) -> set[str]:
    return {path for path, pids in lock.items() if pid in pids}


def gone(process: psutil.Process, timeout: float = 30) -> bool:
    try:
        process.wait(timeout)
    except psutil.NoSuchProcess:
        pass
    return not process.is_running()


@pytest.fixture(scope="module")
def story(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("killed")
    manifest = synthetic_mnist(tmp / "mirror")
    # the stage in its own process (tests/test_warm.py: the same signals with a warm worker)
    env = base_env(MNIST_MIRROR=str(tmp / "mirror"), MNIST_MANIFEST=str(manifest), MISFIT_WARM="0")
    # long enough that a kill lands mid-training, short enough for the rerun
    project = make_project(tmp / "project", small_params(CELLS, protocol__max_epochs=10, protocol__patience=10,
                                                          draws__subset_seeds=[]))
    seen = {"project": project, "env": env}
    first_cell = None

    # 1. SIGTERM to the training process
    repro = Repro(project, env)
    try:
        first_cell = repro.wait_for_epoch()
        trainer = repro.training_process(first_cell)
        seen["term_pid"] = trainer.pid
        trainer.send_signal(signal.SIGTERM)
        seen["term_code"] = repro.finish()
    finally:
        if repro.process.poll() is None:
            os.killpg(repro.process.pid, signal.SIGKILL)
    seen.update(first_cell=first_cell, term_output=repro.output,
                term_runs=runs_by_pid(project, seen["term_pid"]))

    # 2. SIGKILL to the training process only
    repro = Repro(project, env)
    try:
        assert repro.wait_for_epoch() == first_cell
        trainer = repro.training_process(first_cell)
        seen["kill_pid"] = trainer.pid
        trainer.send_signal(signal.SIGKILL)
        assert gone(trainer)
        seen["kill_code"] = repro.finish()
    finally:
        if repro.process.poll() is None:
            os.killpg(repro.process.pid, signal.SIGKILL)
    seen.update(kill_output=repro.output, kill_runs=runs_by_pid(project, seen["kill_pid"]))

    # 3. SIGKILL to DVC and the training process at once, during the second cell
    repro = Repro(project, env)
    second_cell = next(c for c in CELLS if c != first_cell)
    try:
        repro.wait_for_epoch(second_cell)
        trainer = repro.training_process(second_cell)
        seen["crash_pid"], seen["crash_dvc_pid"] = trainer.pid, repro.process.pid
        os.killpg(repro.process.pid, signal.SIGKILL)
        seen["crash_code"] = repro.finish()
        assert gone(trainer)
    finally:
        if repro.process.poll() is None:
            os.killpg(repro.process.pid, signal.SIGKILL)
    seen.update(second_cell=second_cell, crash_output=repro.output,
                crash_runs=runs_by_pid(project, seen["crash_pid"]),
                kill_runs_after_crash=runs_by_pid(project, seen["kill_pid"]),
                crash_rwlock=rwlock(project))

    # 4. the rerun
    seen["rerun"] = run(["dvc", "repro"], project, env)
    seen["rwlock_after"] = rwlock(project)
    return seen


def test_sigterm_closes_the_runs_as_killed(story):
    assert story["term_code"] != 0
    assert f"failed to reproduce 'train@{story['first_cell']}'" in story["term_output"]
    assert "exited with 143" in story["term_output"]
    runs = story["term_runs"]
    assert len(runs) == 1 + 2  # parent and one child per seed
    # closed by the stage itself: the sweep of a later start would add misfit.error
    assert set(runs.values()) == {("KILLED", None)}


def test_sigkill_leaves_runs_running_until_the_next_start_marks_them_killed(story):
    assert story["kill_code"] != 0
    assert f"failed to reproduce 'train@{story['first_cell']}'" in story["kill_output"]
    assert not set(story["kill_runs"]) & set(story["term_runs"])  # new runs, not the old ones
    assert len(story["kill_runs"]) == 3 and {s for s, _ in story["kill_runs"].values()} == {"RUNNING"}
    # the next training start (run 3) found them: their process is dead
    after = story["kill_runs_after_crash"]
    assert after.keys() == story["kill_runs"].keys()
    message = f"process {story['kill_pid']} died before closing the run"
    assert set(after.values()) == {("KILLED", message)}


def test_a_crash_of_dvc_itself_is_healed_by_the_rerun(story):
    assert story["crash_code"] == -signal.SIGKILL
    # the first cell was done before the crash; the second one's runs were left open
    assert f"Running stage 'train@{story['second_cell']}'" in story["crash_output"]
    assert {s for s, _ in story["crash_runs"].values()} == {"RUNNING"} and len(story["crash_runs"]) == 3
    # DVC's own record of the dead process: it held the second cell's outputs for writing
    dead = story["crash_dvc_pid"]
    written = paths_of(story["crash_rwlock"]["write"], dead)
    assert any(path.endswith(f"models/{story['second_cell']}") for path in written), story["crash_rwlock"]
    # the rerun saw that the process is gone and dropped what was in its way ...
    assert "had been killed. Auto removed it from the lock file" in story["rerun"].stdout + story["rerun"].stderr
    assert not paths_of(story["rwlock_after"]["write"], dead)
    # ... but DVC drops a dead reader only when a writer wants its path: read entries on
    # files no stage writes (code, params) stay behind, and block nothing
    outputs = {"data/raw", "data/split", "data/labels", "records", "metrics", "reports", "models"}
    for path in paths_of(story["rwlock_after"]["read"], dead):
        relative = os.path.relpath(path, story["project"])
        assert not any(relative == o or relative.startswith(o + "/") for o in outputs), relative
    project = story["project"]
    message = f"process {story['crash_pid']} died before closing the run"
    assert set(runs_by_pid(project, story["crash_pid"]).values()) == {("KILLED", message)}


def test_after_the_rerun_no_run_is_running_and_the_report_points_at_closed_runs(story):
    project = story["project"]
    statuses = all_statuses(project)
    assert "RUNNING" not in statuses.values()
    killed = {**story["term_runs"], **story["kill_runs"], **story["crash_runs"]}
    results = json.loads((project / "reports" / "results.json").read_text())["cells"]
    assert sorted(results) == sorted(CELLS)
    for cell, entry in results.items():
        referenced = [*(r["run_id"] for r in entry["runs"]), entry["parent_run"]]
        assert len(referenced) == 1 + len(entry["runs"]) and len(entry["runs"]) >= 2
        for run_id in referenced:
            assert statuses.get(run_id) in ("FINISHED", "FAILED"), (cell, run_id, statuses.get(run_id))
            assert run_id not in killed
        assert all(r["status"] == "ok" for r in entry["runs"])


def test_dvc_has_nothing_left_to_do(story):
    project, env = story["project"], story["env"]
    assert_pipeline_current(project, env)
    # the crash left no half-written output behind
    assert not [p.name for p in (project / "models").iterdir() if p.name.startswith(".") and p.is_dir()]


SIGNALLED_CHILD = """
import os, signal, sys
from pathlib import Path

import sqlalchemy
from sqlalchemy import event

from misfit.track.runs import CellRuns, killed_on_signal

from misfit.track.store import open_experiment

root, where = Path(sys.argv[1]), sys.argv[2]
client, experiment_id = open_experiment(root, "signals")
runs = CellRuns(client, experiment_id, "cell", {s: (f"cell seed={s}", {}, {}) for s in (0, 1)}, {}, {"p": 1})
print(runs.parent_id, flush=True)
armed = [True]


def signal_myself():
    if armed:
        armed.clear()
        os.kill(os.getpid(), signal.SIGTERM)


@event.listens_for(sqlalchemy.engine.Engine, "after_cursor_execute")
def inside_a_write(conn, cursor, statement, *args):
    if where == "write" and statement.lstrip().upper().startswith("INSERT INTO METRICS"):
        signal_myself()  # the handler runs here, with a write transaction open


class Finalizer:
    def __del__(self):
        signal_myself()
        sum(range(1000))  # the handler runs here, where exceptions are swallowed


with killed_on_signal([runs]):
    try:
        for step in range(1, 1001):
            if where == "del":
                Finalizer()
            for seed in (0, 1):
                runs.log_metrics(seed, {"loss": 1.0 / step}, step=step)
    except BaseException:
        runs.close_all("FAILED")
        raise
print("survived the signal", flush=True)
sys.exit(3)
"""


@pytest.mark.parametrize("where", ["write", "del"])
def test_sigterm_wherever_it_lands_closes_the_runs_and_ends_the_process(tmp_path, where):
    """A real SIGTERM, delivered at the two worst moments for a Python signal handler:
    inside an MLflow write (its SQLite transaction holds the database lock the closing
    needs) and inside a __del__ (an exception raised there is swallowed). Either way
    the process ends promptly with 128 + SIGTERM and its runs are KILLED."""
    (tmp_path / "child.py").write_text(SIGNALLED_CHILD)
    started = time.monotonic()
    done = subprocess.run([sys.executable, "child.py", str(tmp_path), where], cwd=tmp_path, env=base_env(),
                          capture_output=True, text=True, timeout=120)
    elapsed = time.monotonic() - started
    assert done.returncode == 128 + signal.SIGTERM, done.stdout + done.stderr
    assert "survived the signal" not in done.stdout
    parent = done.stdout.split()[0]
    with sqlite3.connect(tmp_path / "mlruns" / "mlflow.db") as db:
        statuses = db.execute(
            "select status from runs where run_uuid = ? or run_uuid in "
            "(select run_uuid from tags where key = 'mlflow.parentRunId' and value = ?)",
            (parent, parent)).fetchall()
    assert sorted(statuses) == [("KILLED",)] * 3
    assert elapsed < 15, f"{elapsed:.1f} s: the closing waited for a lock (SQLite's busy timeout is 20 s)"


def test_a_failure_closing_the_runs_while_a_signal_closes_them_leaves_them_killed(tmp_path, monkeypatch):
    """The stop signal's thread closes the runs as KILLED while the main thread, whose next
    MLflow call failed on a run just closed, goes down its failure path and closes them as
    FAILED. Whichever starts first names the status of every run (CI once saw a stage
    killed outright end with one run FAILED among KILLED ones)."""
    from misfit.track.runs import CellRuns
    from misfit.track.store import open_experiment

    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    client, experiment_id = open_experiment(tmp_path, "race")
    runs = CellRuns(client, experiment_id, "cell", {s: (f"cell seed={s}", {}, {}) for s in (0, 1)}, {}, {"p": 1})
    one_killed = threading.Event()
    set_terminated = client.set_terminated

    def set_terminated_then_pause(run_id, status=None, **kwargs):
        set_terminated(run_id, status=status, **kwargs)
        if status == "KILLED" and not one_killed.is_set():
            one_killed.set()
            time.sleep(0.5)  # the main thread's failure path runs now

    monkeypatch.setattr(client, "set_terminated", set_terminated_then_pause)
    closing = threading.Thread(target=runs.close_all, args=("KILLED",))
    closing.start()
    assert one_killed.wait(10)
    runs.close_all("FAILED")
    closing.join(10)
    statuses = {run_id: client.get_run(run_id).info.status for run_id in [runs.parent_id, *runs.child_ids.values()]}
    assert set(statuses.values()) == {"KILLED"}, statuses
