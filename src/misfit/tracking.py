"""MLflow: where the runs go, and what each run records.

One parent run per cell and train stage, one child run per seed. The store is
`sqlite:///mlruns/mlflow.db` with artifacts under `mlruns/artifacts`, unless
MLFLOW_TRACKING_URI names another (a shared server, say).
"""
from __future__ import annotations

import contextlib
import fcntl
import os
import signal
import socket
import sys
import threading
import time
from pathlib import Path
from typing import Iterator

os.environ.setdefault("MLFLOW_DISABLE_TELEMETRY", "true")  # these machines have no internet

STORE_DIR = "mlruns"
HOST_TAG, PID_TAG = "misfit.host", "misfit.pid"


def tracking_uri(root: Path) -> str:
    explicit = os.environ.get("MLFLOW_TRACKING_URI")
    if explicit:
        return explicit
    return f"sqlite:///{(root / STORE_DIR / 'mlflow.db').resolve()}"


@contextlib.contextmanager
def _file_lock(path: Path) -> Iterator[None]:
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "w") as handle:
        fcntl.flock(handle, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(handle, fcntl.LOCK_UN)


def open_experiment(root: Path, experiment: str):
    """(client, experiment id), creating the store's schema and the experiment once.

    A fresh SQLite store is created under a file lock: concurrent first use of one
    database breaks MLflow's schema migrations.
    """
    from mlflow import MlflowClient

    uri = tracking_uri(root)
    local = uri.startswith("sqlite:")
    lock = root / STORE_DIR / ".init.lock" if local else None
    with _file_lock(lock) if lock else contextlib.nullcontext():
        client = MlflowClient(uri)
        found = client.get_experiment_by_name(experiment)
        if found is not None:
            return client, found.experiment_id
        artifacts = (root / STORE_DIR / "artifacts").resolve().as_uri() if local else None
        try:
            return client, client.create_experiment(experiment, artifact_location=artifacts)
        except Exception:  # another worker created it between our look and our create
            found = client.get_experiment_by_name(experiment)
            if found is None:
                raise
            return client, found.experiment_id


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


class CellRuns:
    """The MLflow records of one train stage of one cell."""

    def __init__(self, client, experiment_id: str, cell_id: str, seeds: list[int],
                 tags: dict[str, str], params: dict, seed_tags: dict[int, dict[str, str]]):
        self.client = client
        process = {HOST_TAG: socket.gethostname(), PID_TAG: str(os.getpid())}
        parent = client.create_run(experiment_id, run_name=cell_id,
                                   tags={**tags, **process, "misfit.level": "cell"})
        self.parent_id = parent.info.run_id
        client.log_batch(self.parent_id, params=_stringify({**params, "seeds": seeds}))
        self.child_ids: dict[int, str] = {}
        for seed in seeds:
            child = client.create_run(
                experiment_id, run_name=f"{cell_id} seed={seed}",
                tags={**tags, **seed_tags[seed], **process, "misfit.level": "seed",
                      "mlflow.parentRunId": self.parent_id},
            )
            self.child_ids[seed] = child.info.run_id
            client.log_batch(child.info.run_id, params=_stringify({**params, "seed": seed}))
        self.open = {self.parent_id, *self.child_ids.values()}

    def log_inputs(self, datasets: list[tuple[object, dict[str, str]]]) -> None:
        """Datasets (an mlflow Dataset, its input tags) on every seed's run."""
        from mlflow.entities import DatasetInput, InputTag

        inputs = [DatasetInput(dataset._to_mlflow_entity(), tags=[InputTag(k, v) for k, v in tags.items()])
                  for dataset, tags in datasets]
        for run_id in self.child_ids.values():
            self.client.log_inputs(run_id, datasets=inputs)

    def log_metrics(self, seed: int | None, values: dict[str, float], step: int = 0) -> None:
        from mlflow.entities import Metric

        run_id = self.parent_id if seed is None else self.child_ids[seed]
        now = int(time.time() * 1000)
        metrics = [Metric(key, float(value), now, step) for key, value in values.items()
                   if isinstance(value, (int, float)) and not isinstance(value, bool)]
        self.client.log_batch(run_id, metrics=metrics)

    def log_text(self, seed: int | None, text: str, name: str) -> None:
        self.client.log_text(self.parent_id if seed is None else self.child_ids[seed], text, name)

    def log_file(self, seed: int | None, path: Path) -> None:
        self.client.log_artifact(self.parent_id if seed is None else self.child_ids[seed], str(path))

    def set_tags(self, seed: int | None, tags: dict[str, str]) -> None:
        from mlflow.entities import RunTag

        run_id = self.parent_id if seed is None else self.child_ids[seed]
        self.client.log_batch(run_id, tags=[RunTag(k, str(v)[:8000]) for k, v in tags.items()])

    def close(self, seed: int | None, status: str) -> None:
        run_id = self.parent_id if seed is None else self.child_ids[seed]
        if run_id in self.open:
            self.client.set_terminated(run_id, status=status)
            self.open.discard(run_id)

    def close_all(self, status: str) -> None:
        for run_id in list(self.open):
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
        if not received:
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
