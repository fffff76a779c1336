"""`misfit run`: every cell of params.yaml as one task on a Dask cluster, then the report.

Without --address it starts an embedded Dask LocalCluster on 127.0.0.1 (--jobs worker
processes, one thread each); with --address tcp://host:port it submits the same tasks to
that scheduler. Each task, on its worker, checks out this repository's commit in the
worker's own clone and runs the cell's stages with `dvc repro` (src/misfit/run/cell_task.py; the checks before: run/preflight.py).
Dask does the scheduling: a worker that dies has its cell rescheduled on another one
(`distributed.scheduler.allowed-failures`), and a task that raises (a failed clone or
push) is retried (`retries=`). A stage that exits non-zero is a result, not an error: the
cell is reported as failed with its last lines and not retried.

The results come back through DVC: on a cluster the workers `dvc push --run-cache` to
the project's DVC remote and this command ends with `dvc repro --pull`, which restores
every cell's stage from the run-cache without training and builds the report. The local
cluster's workers share this checkout's DVC cache instead, so a plain `dvc repro` does it.
"""
from __future__ import annotations

import argparse
import contextlib
import os
import signal
import subprocess
import sys
import time
import uuid
from pathlib import Path

from misfit.run.cell_task import ATTEMPT_TOPIC, OUTPUT_TOPIC, SetupError
from misfit.run.preflight import (
    SERVER_SCHEMES,
    TRACKING_ENV,
    EngineError,
    cell_stages,
    check_tracking_server,
    clean_commit,
    cpu_cores,
    dvc_cache_dir,
    prepare_local_store,
    project_params,
    repository_url,
    require_dvc_remote,
    threads_per_worker,
    tracking_uri_for,
)

CONNECT_TIMEOUT_S = 10.0


@contextlib.contextmanager
def dask_client(address: str | None, jobs: int, timeout: float):
    """A Client of the scheduler at `address`, or of an embedded LocalCluster on 127.0.0.1."""
    from distributed import Client, LocalCluster

    if address is None:
        # processes (the stages run subprocesses; a worker per process isolates them), one
        # task at a time each (a worker's clone takes one checkout at a time), no dashboard
        with LocalCluster(n_workers=jobs, threads_per_worker=1, processes=True, host="127.0.0.1",
                          dashboard_address=None) as cluster, Client(cluster) as client:
            yield client
        return
    try:
        client = Client(address, timeout=timeout)
    except (OSError, TimeoutError, ValueError) as error:
        raise EngineError(f"no Dask scheduler answered at {address} within {timeout:g} s: {error}") from error
    try:
        try:
            client.wait_for_workers(1, timeout=timeout)
        except TimeoutError as error:
            raise EngineError(f"the Dask scheduler at {address} has no worker (waited {timeout:g} s): "
                              f"start one with `dask worker {address} --nthreads 1`") from error
        yield client
    finally:
        client.close()


def submit_cells(client, cells: dict[str, list[str]], repo_url: str, commit: str, env: dict,
                 cache_dir: str | None, push: bool, token: str) -> dict:
    """{future: cell}, one task per cell."""
    import cloudpickle

    from misfit.run import cell_task, process

    # by value: a worker runs this client's task code whatever version of misfit it has
    cloudpickle.register_pickle_by_value(cell_task)
    cloudpickle.register_pickle_by_value(process)
    # retries: a task that raised (clone, fetch or push failed); a lost worker is Dask's
    # own rescheduling (allowed-failures), and a failed stage returns, so neither counts here
    return {client.submit(cell_task.run_cell, cell, stages, repo_url, commit, env, cache_dir, push,
                          token, key=f"misfit-{cell}-{token}", retries=2, pure=False): cell
            for cell, stages in cells.items()}


def collect(client, futures: dict) -> tuple[list[dict], list[dict]]:
    """(finished outcomes, failures) as the cells end; a setup error stops the rest."""
    from distributed import as_completed

    done, failed = [], []
    for future in as_completed(futures):
        try:
            outcome = future.result()
        except Exception as error:  # raised on the worker after the retries, or KilledWorker
            cell = futures[future]
            failed.append({"cell": cell, "error": f"{type(error).__name__}: {error}"})
            print(f"misfit run: {cell} FAILED: {type(error).__name__}: {error}", file=sys.stderr, flush=True)
            if isinstance(error, SetupError):  # it would fail every cell the same way
                client.cancel(list(futures))
                break
            continue
        (done if outcome["returncode"] == 0 else failed).append(outcome)
        state = "done" if outcome["returncode"] == 0 else f"FAILED ({outcome['returncode']})"
        print(f"misfit run: {outcome['cell']} {state} on {outcome['worker']} in {outcome['seconds']:.1f} s",
              flush=True)
    return done, failed


def lost_attempts(client, token: str) -> dict[str, list[str]]:
    """Per cell, the workers that died under it (a start followed by another start, not by
    a raise), from the events its tasks logged on the scheduler."""
    trails: dict[str, list[dict]] = {}
    for _, event in client.get_events(ATTEMPT_TOPIC):
        if event.get("token") == token:
            trails.setdefault(event["cell"], []).append(event)
    lost = {}
    for cell, trail in trails.items():
        workers = [event["worker"] for event, after in zip(trail, trail[1:])
                   if event["event"] == "start" and after["event"] == "start"]
        if workers:
            lost[cell] = workers
    return lost


def print_output(event) -> None:
    """A line of a cell's output, forwarded by its worker (cell_task.OUTPUT_TOPIC)."""
    _, line = event
    print(line, flush=True)


def failure_lines(failed: list[dict], not_run: int, total: int) -> list[str]:
    lines = [f"misfit run: {len(failed)} of {total} cells FAILED"
             + (f", {not_run} not run" if not_run else "") + "; the report was not built."]
    for outcome in failed:
        if "error" in outcome:
            lines += ["", f"--- {outcome['cell']}: {outcome['error']}"]
        else:
            lines += ["", f"--- {outcome['cell']}: `{outcome['command']}` exited with {outcome['returncode']} "
                      f"on {outcome['worker']}; its last lines:", *outcome["tail"]]
    return lines


def run_cells(root: Path, jobs: int | None, threads: int | None = None, address: str | None = None,
              connect_timeout: float = CONNECT_TIMEOUT_S, repo_url: str | None = None) -> int:
    root = root.resolve()
    on_cluster = address is not None
    commit = clean_commit(root)
    params = project_params(root)
    stages = cell_stages(root, list(params.cells))
    uri = tracking_uri_for(root, on_cluster)
    if uri.startswith(SERVER_SCHEMES):
        check_tracking_server(uri)
    env = {TRACKING_ENV: uri}
    if on_cluster:
        require_dvc_remote(root)
        url, cache_dir = repository_url(root, repo_url), None
    else:
        jobs = jobs or cpu_cores()
        threads = threads or threads_per_worker(jobs)
        url, cache_dir = str(root), dvc_cache_dir(root)
        if uri.startswith("sqlite:"):
            prepare_local_store(root, uri, params.tracking.experiment)
    if threads:
        env["OMP_NUM_THREADS"] = str(threads)
    token = uuid.uuid4().hex[:8]
    where = address or f"a local cluster of {jobs} worker(s) x {threads} thread(s)"
    print(f"misfit run: {len(stages)} cells of commit {commit[:12]} on {where}, MLflow store {uri}", flush=True)

    started = time.perf_counter()
    with dask_client(address, jobs or 1, connect_timeout) as client:
        client.subscribe_topic(OUTPUT_TOPIC, print_output)
        futures = submit_cells(client, stages, url, commit, env, cache_dir, on_cluster, token)
        done, failed = collect(client, futures)
        lost = lost_attempts(client, token)
    cells_seconds = time.perf_counter() - started
    for cell, workers in lost.items():
        print(f"misfit run: {cell}: worker {', '.join(workers)} was lost while it ran the cell; "
              f"Dask ran the cell again on another worker", flush=True)

    if failed or len(done) < len(stages):
        not_run = len(stages) - len(done) - len(failed)
        print("\n".join(failure_lines(failed, not_run, len(stages))), file=sys.stderr, flush=True)
        return 1
    # every cell's stages are in the run-cache (the shared cache, or the remote): DVC
    # restores them without training, then builds what is left (the report)
    final = ["dvc", "repro", *(["--pull"] if on_cluster else [])]
    print(f"$ {' '.join(final)}", flush=True)
    if subprocess.run(final, cwd=root, env={**os.environ, **env}).returncode != 0:
        print(f"misfit run: the final `{' '.join(final)}` failed", file=sys.stderr)
        return 1
    print(f"misfit run: {len(done)} cells in {cells_seconds:.1f} s, {time.perf_counter() - started:.1f} s "
          f"with the report", flush=True)
    return 0


def _positive(text: str) -> int:
    value = int(text)
    if value < 1:
        raise argparse.ArgumentTypeError(f"must be at least 1, got {value}")
    return value


def _seconds(text: str) -> float:
    value = float(text)
    if not value > 0:
        raise argparse.ArgumentTypeError(f"must be a positive number of seconds, got {text}")
    return value


def _handle(args) -> int:
    if args.address and args.jobs:
        raise SystemExit("misfit run: --jobs sizes the embedded local cluster; with --address the "
                         "cluster's size is the workers started for it")
    # SIGTERM takes Ctrl-C's way out: the local cluster is closed, its workers end, and each
    # stage gets SIGINT from its guard (cell_task.GUARD) and closes its runs KILLED
    previous = signal.signal(signal.SIGTERM, signal.default_int_handler)
    try:
        return run_cells(Path("."), args.jobs, args.threads, args.address, args.connect_timeout,
                         args.repo_url)
    except EngineError as error:
        print(f"misfit run: {error}", file=sys.stderr, flush=True)
        return 2
    except KeyboardInterrupt:
        print("misfit run: interrupted. " + (
            "Cells already running on the cluster finish there (Dask cannot stop a running task); "
            "their results land in the DVC remote's run-cache for the next run." if args.address else
            "The local workers were stopped; their stages' MLflow runs end KILLED."),
            file=sys.stderr, flush=True)
        return 130
    finally:
        signal.signal(signal.SIGTERM, previous)


def register(commands) -> None:
    parser = commands.add_parser(
        "run", help="train every cell of params.yaml on a Dask cluster (local by default), then the report",
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--jobs", "-j", type=_positive, default=None,
                        help="worker processes of the embedded local cluster (default: the CPU cores)")
    parser.add_argument("--threads", type=_positive, default=None,
                        help="OMP_NUM_THREADS of each cell's stage (default: cores // jobs locally, "
                             "the worker's own environment on a cluster)")
    parser.add_argument("--address", default=None,
                        help="a Dask scheduler, tcp://host:port (default: start a local cluster)")
    parser.add_argument("--connect-timeout", type=_seconds, default=CONNECT_TIMEOUT_S,
                        help=f"seconds to wait for the scheduler and its first worker (default {CONNECT_TIMEOUT_S:g})")
    parser.add_argument("--repo-url", default=None,
                        help="where a cluster's workers clone the repository (default: the git remote origin)")
    parser.set_defaults(handler=_handle)
