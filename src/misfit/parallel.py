"""`misfit run --jobs N`: the cells' train and evaluate stages in N DVC processes at once.

DVC holds its repository lock while it plans and records a stage, not while the stage's
command runs, so `dvc repro -s` of different cells can share one workspace; with
--wait-for-lock a worker waits for that short lock instead of failing. The data stages
run once before the workers (they are every cell's dependency), the report once after.
"""
from __future__ import annotations

import argparse
import collections
import os
import signal
import subprocess
import sys
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

TRACKING_ENV = "MLFLOW_TRACKING_URI"
TAIL_LINES = 40


def cpu_cores() -> int:
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:  # not on Linux
        return os.cpu_count() or 1


def threads_per_worker(jobs: int, cores: int | None = None) -> int:
    # measured on 2 cores: 2 processes x 1 thread train ~14% faster than 1 x 2 threads,
    # and more threads than cores in total only make the workers wait for each other
    return max(1, (cores or cpu_cores()) // jobs)


def absolute_tracking_uri(uri: str, cwd: Path) -> str:
    """A relative SQLite or file-store location, resolved against the directory we run in.

    Each stage resolves a relative path against its own working directory, which is not
    ours under `dvc exp run --queue` (a temp clone): the runs would land in a store that
    is deleted with the clone.
    """
    if uri.startswith("sqlite:///") and not uri.startswith("sqlite:////"):
        return f"sqlite:///{(cwd / uri.removeprefix('sqlite:///')).resolve()}"
    if uri.startswith("file:") and not uri.startswith("file:/"):
        return (cwd / uri.removeprefix("file:")).resolve().as_uri()
    if "://" not in uri and not uri.startswith(("sqlite:", "file:", "databricks", "/")):
        return (cwd / uri).resolve().as_uri()
    return uri


class Worker:
    """One `dvc repro` of one cell, its output prefixed with the cell and kept for a tail."""

    def __init__(self, cell_id: str, command: list[str], env: dict, cwd: Path, lock: threading.Lock,
                 stopping: threading.Event, live: dict):
        self.cell_id, self.command, self.env, self.cwd = cell_id, command, env, cwd
        self.print_lock, self.stopping, self.live = lock, stopping, live
        self.tail: collections.deque[str] = collections.deque(maxlen=TAIL_LINES)
        self.returncode: int | None = None
        self.seconds = 0.0

    def __call__(self) -> Worker:
        if self.stopping.is_set():
            return self
        started = time.perf_counter()
        # own process group, so that a stop reaches DVC and its stage together, and only as
        # the SIGINT that `stop` sends (a terminal's Ctrl-C would reach us alone)
        process = subprocess.Popen(self.command, cwd=self.cwd, env=self.env, stdout=subprocess.PIPE,
                                   stderr=subprocess.STDOUT, text=True, bufsize=1, start_new_session=True)
        self.live[self.cell_id] = process
        if self.stopping.is_set():  # the stop came between our check and our start
            os.killpg(process.pid, signal.SIGINT)
        try:
            for line in process.stdout:
                self.tail.append(line.rstrip("\n"))
                with self.print_lock:
                    print(f"[{self.cell_id}] {line}", end="", flush=True)
            self.returncode = process.wait()
        finally:
            self.live.pop(self.cell_id, None)
            self.seconds = time.perf_counter() - started
        return self


def dvc(args: list[str], cwd: Path, env: dict) -> int:
    print(f"$ dvc {' '.join(args)}", flush=True)
    return subprocess.run(["dvc", *args], cwd=cwd, env=env).returncode


def run_cells(root: Path, jobs: int, threads: int | None = None) -> int:
    from misfit.config import load_params
    from misfit.layout import PARAMS_FILE
    from misfit.tracking import open_experiment, tracking_uri

    root = root.resolve()
    params = load_params(root / PARAMS_FILE)
    threads = threads or threads_per_worker(jobs)
    env = dict(os.environ)
    if env.get(TRACKING_ENV):
        env[TRACKING_ENV] = absolute_tracking_uri(env[TRACKING_ENV], Path.cwd())
        os.environ[TRACKING_ENV] = env[TRACKING_ENV]
    uri = tracking_uri(root)
    # the store's schema and the experiment exist before N workers reach for them at once
    open_experiment(root, params.tracking.experiment)
    print(f"misfit run: {len(params.cells)} cells, {jobs} workers x {threads} thread(s), "
          f"MLflow store {uri}", flush=True)

    started = time.perf_counter()
    if dvc(["repro", "label-derive"], root, env) != 0:
        print("misfit run: the data stages failed; no cell was started", file=sys.stderr)
        return 1

    worker_env = {**env, "OMP_NUM_THREADS": str(threads)}
    print_lock, stopping, live = threading.Lock(), threading.Event(), {}
    workers = [Worker(cell_id, ["dvc", "--wait-for-lock", "repro", "-s", f"train@{cell_id}",
                                f"evaluate@{cell_id}"], worker_env, root, print_lock, stopping, live)
               for cell_id in params.cells]

    def stop(signum, frame):
        stopping.set()
        # SIGINT whatever we got: DVC ignores it while a stage runs and then records the
        # stage as failed and frees its locks; the stage closes its MLflow runs as KILLED.
        # A SIGTERM would end DVC at once and leave its rwlock entries behind.
        for process in list(live.values()):
            try:
                os.killpg(process.pid, signal.SIGINT)
            except ProcessLookupError:
                pass
        print(f"misfit run: stopped by signal {signum}; waiting for the workers to end", file=sys.stderr,
              flush=True)
        raise SystemExit(128 + signum)

    previous = {sig: signal.signal(sig, stop) for sig in (signal.SIGTERM, signal.SIGINT)}
    try:
        with ThreadPoolExecutor(max_workers=jobs) as pool:
            done = list(pool.map(lambda worker: worker(), workers))
    finally:
        for sig, handler in previous.items():
            signal.signal(sig, handler)
    cells_seconds = time.perf_counter() - started

    failed = [w for w in done if w.returncode != 0]
    if failed:
        lines = [f"misfit run: {len(failed)} of {len(done)} cells FAILED; the report was not built."]
        for worker in failed:
            lines += ["", f"--- {worker.cell_id}: `{' '.join(worker.command)}` exited with "
                      f"{worker.returncode}; its last lines:", *worker.tail]
        print("\n".join(lines), file=sys.stderr, flush=True)
        return 1
    if dvc(["repro"], root, env) != 0:
        print("misfit run: the final `dvc repro` failed", file=sys.stderr)
        return 1
    slowest = max(done, key=lambda w: w.seconds, default=None)
    print(f"misfit run: {len(done)} cells in {cells_seconds:.1f} s with {jobs} workers "
          f"(slowest {slowest.cell_id if slowest else '-'}: {slowest.seconds if slowest else 0:.1f} s), "
          f"{time.perf_counter() - started:.1f} s with the report", flush=True)
    return 0


def _positive(text: str) -> int:
    value = int(text)
    if value < 1:
        raise argparse.ArgumentTypeError(f"must be at least 1, got {value}")
    return value


def register(commands) -> None:
    parser = commands.add_parser(
        "run", help="train and evaluate the cells of params.yaml in parallel, then build the report",
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--jobs", "-j", type=_positive, default=cpu_cores(),
                        help="cells trained at once (default: the CPU cores available)")
    parser.add_argument("--threads", type=_positive, default=None,
                        help="OMP_NUM_THREADS of each worker (default: cores // jobs, at least 1)")
    parser.set_defaults(handler=lambda args: run_cells(Path("."), args.jobs, args.threads))
