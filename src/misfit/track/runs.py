"""MLflow: what each run records, live.

One parent run per cell and train stage, one child run per (draw, seed); the evaluate stage
adds to the same runs. Where the store is and whether it can be used: misfit.track.store.
"""
from __future__ import annotations

import contextlib
import logging
import os
import random
import re
import signal
import socket
import sys
import threading
import time
from pathlib import Path
from typing import Iterator

from misfit.core.errors import TrackingStoreError
from misfit.track.store import set_env_defaults  # noqa: F401 (importing it sets MLflow's env defaults first)

# MLflow's SQL store (and its async logging thread) log a refused statement with SQLAlchemy's
# traceback and every bound parameter before raising it; the stage names it in one line
# instead (refused_write), and the epoch after a refused write waits for it (train.stage)
for _logger in ("mlflow.store.db.utils", "mlflow.utils.async_logging.async_logging_queue"):
    logging.getLogger(_logger).setLevel(logging.CRITICAL)

HOST_TAG, PID_TAG, WORKER_PID_TAG = "misfit.host", "misfit.pid", "misfit.worker_pid"
STAGE_PID_ENV = "MISFIT_STAGE_PID"  # set by misfit.run.warm in a child forked for a stage


def stage_pid() -> int:
    """The pid of the stage's process: DVC's child, which a warm worker's child works for."""
    return int(os.environ.get(STAGE_PID_ENV) or os.getpid())


def _pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def mark_dead_runs_killed(client, experiment_id: str) -> list[str]:
    """Runs left RUNNING by a process of this host that no longer exists become KILLED."""
    host = socket.gethostname()
    stale = client.search_runs(
        [experiment_id],
        filter_string=f"attributes.status = 'RUNNING' and tags.`{HOST_TAG}` = '{host}'",
        max_results=5000,
    )
    killed = []
    for run in stale:
        pid = run.data.tags.get(PID_TAG, "")
        if pid.isdigit() and not _pid_alive(int(pid)):
            client.set_tag(run.info.run_id, "misfit.error", f"process {pid} died before closing the run")
            client.set_terminated(run.info.run_id, status="KILLED")
            killed.append(run.info.run_id)
    return killed


def _stringify(params: dict) -> list:
    from mlflow.entities import Param

    return [Param(key, str(value)) for key, value in params.items()]


# How the stores word a violated unique constraint: SQLite, PostgreSQL, MySQL / MariaDB
UNIQUE_VIOLATION = ("UNIQUE constraint failed", "violates unique constraint", "Duplicate entry")


def retry_on_unique_violation(call, attempts: int = 5):
    """`call()`, again when the store refuses it for a unique constraint another writer won.

    MLflow's store logs a dataset by looking it up by (experiment, name, digest) and
    inserting it when missing, with no lock between the two, so two stages logging the same
    split at once both insert and one fails (mlflow/store/tracking/sqlalchemy_store.py,
    `_log_inputs_impl`). Its transaction is rolled back, and a second try finds the row the
    other stage wrote and links to it.
    """
    from mlflow.exceptions import MlflowException

    for attempt in range(attempts):
        try:
            return call()
        except MlflowException as error:
            if attempt == attempts - 1 or not any(text in error.message for text in UNIQUE_VIOLATION):
                raise
            time.sleep(0.05 * (attempt + 1) * (1 + random.random()))


# The database driver's own words inside MLflow's message: "(sqlite3.OperationalError) database
# or disk is full", also inside the repr an asynchronous write's failure carries (escaped newlines)
DRIVER_ERROR = re.compile(r"\((?:[\w.]*\.)?\w*Error\)\s*(.+?)(?:\\n|\n|\[SQL|$)")


def refused_write(error: BaseException, stage: str, uri: str) -> TrackingStoreError | None:
    """One line for a write the store refused after the stage began (its disk full, turned
    read-only, locked by another writer, the server gone); None for any other error.

    The checks before a stage starts (misfit.track.store) cannot see a store that fails later;
    without this the stage ended in SQLAlchemy's traceback of the failed statement."""
    from mlflow.exceptions import MlflowException

    if not isinstance(error, MlflowException):
        return None
    found = DRIVER_ERROR.search(error.message)
    cause = found.group(1).strip() if found else error.message.strip().splitlines()[0][:200]
    return TrackingStoreError(f"{stage}: the MLflow store {uri} refused a write while the stage ran ({cause}); "
                              "the stage stopped, its runs are FAILED where the store still took that, and its "
                              "committed outputs are as they were; make the store writable and run it again")


class CellRuns:
    """The MLflow records of one train stage of one cell: a parent run and a child per run.

    Children are keyed by whatever the caller uses to name a run (here a Member); `None`
    is the parent. Per-epoch metrics are logged asynchronously: MLflow writes them from its
    own thread while training goes on, and `close` waits for them.
    """

    def __init__(self, client, experiment_id: str, cell_id: str, children: dict,
                 tags: dict[str, str], params: dict):
        """children: {key: (run name, its own tags, its own params)}."""
        self.client = client
        process = {HOST_TAG: socket.gethostname(), PID_TAG: str(stage_pid())}
        if stage_pid() != os.getpid():
            process[WORKER_PID_TAG] = str(os.getpid())
        parent = client.create_run(experiment_id, run_name=cell_id,
                                   tags={**tags, **process, "misfit.level": "cell"})
        self.parent_id = parent.info.run_id
        client.log_batch(self.parent_id, params=_stringify(params))
        self.child_ids: dict = {}
        for key, (name, own_tags, own_params) in children.items():
            child = client.create_run(
                experiment_id, run_name=name,
                tags={**tags, **own_tags, **process, "misfit.level": "seed",
                      "mlflow.parentRunId": self.parent_id},
            )
            self.child_ids[key] = child.info.run_id
            client.log_batch(child.info.run_id, params=_stringify({**params, **own_params}))
        self.open = {self.parent_id, *self.child_ids.values()}
        self.pending: list = []
        # a stop signal's closing thread and the main thread's failure path can both close
        # the runs at once; the first to start names their status, the other finds none open
        self._closing = threading.Lock()

    def run_id(self, key) -> str:
        return self.parent_id if key is None else self.child_ids[key]

    def log_inputs(self, key, datasets: list[tuple[object, dict[str, str]]]) -> None:
        """Datasets (an mlflow Dataset, its input tags) on one child's run."""
        from mlflow.entities import DatasetInput, InputTag

        inputs = [DatasetInput(dataset._to_mlflow_entity(), tags=[InputTag(k, v) for k, v in tags.items()])
                  for dataset, tags in datasets]
        retry_on_unique_violation(lambda: self.client.log_inputs(self.run_id(key), datasets=inputs))

    def log_metrics(self, key, values: dict[str, float], step: int = 0, wait: bool = True) -> None:
        from mlflow.entities import Metric

        now = int(time.time() * 1000)
        metrics = [Metric(name, float(value), now, step) for name, value in values.items()
                   if isinstance(value, (int, float)) and not isinstance(value, bool)]
        if wait:
            self.client.log_batch(self.run_id(key), metrics=metrics)
        else:
            self.pending.append(self.client.log_batch(self.run_id(key), metrics=metrics, synchronous=False))

    def log_text(self, key, text: str, name: str) -> None:
        self.client.log_text(self.run_id(key), text, name)

    def log_file(self, key, path: Path) -> None:
        self.client.log_artifact(self.run_id(key), str(path))

    def set_tags(self, key, tags: dict[str, str]) -> None:
        from mlflow.entities import RunTag

        self.client.log_batch(self.run_id(key), tags=[RunTag(k, str(v)[:8000]) for k, v in tags.items()])

    def wait_for_metrics(self) -> None:
        pending, self.pending = self.pending, []
        for operations in pending:
            operations.wait()

    def close(self, key, status: str) -> None:
        run_id = self.run_id(key)
        with self._closing:
            if run_id in self.open:
                # set_terminated first: it stops MLflow's logging thread, which then writes what
                # is queued at once; waiting on the queued writes first waited out its buffering
                self.client.set_terminated(run_id, status=status)
                self.wait_for_metrics()  # done by now; raises a write's error
                self.open.discard(run_id)

    def close_all(self, status: str) -> None:
        with self._closing:
            try:
                self.wait_for_metrics()
            except Exception:  # closing must not stop at a failed write: the runs are ending anyway
                pass
            for run_id in list(self.open):
                with contextlib.suppress(Exception):  # a store that refuses writes refuses this too
                    self.client.set_terminated(run_id, status=status)
                self.open.discard(run_id)


STOP_SIGNALS = (signal.SIGTERM, signal.SIGINT)


@contextlib.contextmanager
def killed_on_signal(runs_holder: list, grace: float = 30.0) -> Iterator[None]:
    """On SIGTERM/SIGINT, close the open runs as KILLED, then end the process (128 + signal).

    The handler only wakes a thread that does the closing. Closing in the handler itself
    stalled when the signal landed inside an MLflow write: the handler's write waited
    for the SQLite lock held by the very transaction it had interrupted (20 s busy
    timeout, then the runs ended FAILED or stayed RUNNING). Raising from the handler
    instead is not reliable either: a handler that runs inside a weakref callback or a
    __del__ (SQLAlchemy has both) has its exception swallowed, and training went on.
    The main thread keeps running, so it finishes its write, and the thread gets the lock.
    If closing takes longer than `grace` seconds (an unreachable server), the process
    ends anyway; the runs left RUNNING are found by mark_dead_runs_killed later.
    """
    received: list[int] = []
    wake = threading.Event()

    def close_runs() -> None:
        for runs in runs_holder:
            runs.close_all("KILLED")

    def close_and_exit() -> None:
        wake.wait()
        if not received:  # the block ended normally
            return
        closing = threading.Thread(target=close_runs, name="misfit-close-runs", daemon=True)
        closing.start()
        closing.join(grace)
        sys.stdout.flush()
        sys.stderr.flush()
        os._exit(128 + received[0])

    def handler(signum, frame):
        if received:  # a second signal: the first handler may be inside wake.set(), holding its lock
            return
        received.append(signum)
        wake.set()

    closer = threading.Thread(target=close_and_exit, name="misfit-killed-on-signal", daemon=True)
    closer.start()
    previous = {sig: signal.signal(sig, handler) for sig in STOP_SIGNALS}
    try:
        yield
    finally:
        for sig, old in previous.items():
            signal.signal(sig, old)
        wake.set()
        closer.join()  # returns at once, unless a signal came: then the process ends there


PROFILE_ENV = "MISFIT_PROFILE"  # set by `misfit profile NAME` (misfit.run.profile) for its stages


def profile_name() -> str:
    """The profile a stage runs under: "study" unless `misfit profile NAME` started it; its runs carry it as a tag."""
    return os.environ.get(PROFILE_ENV) or "study"


class EvaluationLog:
    """What the evaluate stage adds to the runs train@<cell> created (and closed): each run's
    test and re-scored valid numbers, its calibration, the test dataset, its checkpoint.

    A run the store does not hold (the train stage's outputs came from DVC's run-cache or a
    remote, its runs from another store) is passed over and named: `misfit restore-runs`
    brings such runs back from the records."""

    def __init__(self, client):
        from mlflow.exceptions import MlflowException

        self.client, self.absent = client, []
        self._missing = MlflowException

    def _has(self, run_id: str) -> bool:
        try:
            self.client.get_run(run_id)
        except self._missing:
            self.absent.append(run_id)
            return False
        return True

    def log(self, run_id: str, metrics: dict[str, float], tags: dict[str, str], files: list[Path],
            datasets: list[tuple[object, dict[str, str]]]) -> None:
        from mlflow.entities import DatasetInput, InputTag, Metric, RunTag

        if not self._has(run_id):
            return
        now = int(time.time() * 1000)
        self.client.log_batch(run_id, metrics=[Metric(k, float(v), now, 0) for k, v in metrics.items()],
                              tags=[RunTag(k, v) for k, v in tags.items()])
        inputs = [DatasetInput(d._to_mlflow_entity(), tags=[InputTag(k, v) for k, v in t.items()])
                  for d, t in datasets]
        if inputs:
            retry_on_unique_violation(lambda: self.client.log_inputs(run_id, datasets=inputs))
        for path in files:
            self.client.log_artifact(run_id, str(path))
