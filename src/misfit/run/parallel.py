"""`misfit run`: every cell of params.yaml as one task on a Dask cluster, then the report.

Without --address it starts an embedded Dask LocalCluster on 127.0.0.1 (--jobs worker
processes, one thread each); with --address tcp://host:port it submits the same tasks to
that scheduler. Each task, on its worker, checks out this repository's commit in the
worker's own clone and runs the cell's stages with `dvc repro` (src/misfit/cell_task.py).
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
import urllib.error
import urllib.request
import uuid
from pathlib import Path

import yaml

# what the pipeline rewrites as it runs (outputs, not code): the same rule as the git_dirty run tag
from misfit.core.provenance import PIPELINE_OUTPUTS
from misfit.run.cell_task import ATTEMPT_TOPIC, OUTPUT_TOPIC, SetupError

TRACKING_ENV = "MLFLOW_TRACKING_URI"
CONNECT_TIMEOUT_S = 10.0
TRACKING_TIMEOUT_S = 5.0
SERVER_SCHEMES = ("http://", "https://")


class EngineError(RuntimeError):
    """Something `misfit run` checks before or while it runs; its message says what to do."""


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

    Each stage resolves a relative path against its own working directory, which is a
    worker's clone here: the runs would land in a store that only that clone sees.
    """
    if uri.startswith("sqlite:///") and not uri.startswith("sqlite:////"):
        return f"sqlite:///{(cwd / uri.removeprefix('sqlite:///')).resolve()}"
    if uri.startswith("file:") and not uri.startswith("file:/"):
        return (cwd / uri.removeprefix("file:")).resolve().as_uri()
    if "://" not in uri and not uri.startswith(("sqlite:", "file:", "databricks", "/")):
        return (cwd / uri).resolve().as_uri()
    return uri


def _run(command: list[str], root: Path) -> subprocess.CompletedProcess:
    return subprocess.run(command, cwd=root, capture_output=True, text=True)


def clean_commit(root: Path) -> str:
    """HEAD, if no tracked file but the pipeline's outputs differs from it: the workers
    check out the commit. The same rule as a run's `git_dirty` tag (provenance.git_state;
    not shared with it: provenance.py is a dependency of every train stage)."""
    head = _run(["git", "rev-parse", "HEAD"], root)
    if head.returncode != 0:
        raise EngineError(f"{root} is not a git repository with a commit: the workers check out "
                          f"a commit ({head.stderr.strip()})")
    status = _run(["git", "status", "--porcelain", "--untracked-files=no", "--", ".", *PIPELINE_OUTPUTS], root)
    changed = [line[3:] for line in status.stdout.splitlines()]
    if changed:
        shown = ", ".join(changed[:8]) + (" …" if len(changed) > 8 else "")
        raise EngineError(
            f"the work tree has uncommitted changes ({shown}): the workers check out commit "
            f"{head.stdout.strip()[:12]} and would not see them. Commit them (a `dvc exp run -S` "
            f"override of params.yaml too) or stash them, then run again.")
    return head.stdout.strip()


def cell_ids(root: Path) -> list[str]:
    path = root / "params.yaml"
    try:
        cells = yaml.safe_load(path.read_text()).get("cells")
    except (OSError, yaml.YAMLError, AttributeError) as error:
        raise EngineError(f"{path}: cannot read its `cells:` mapping ({error})") from error
    if not isinstance(cells, dict) or not cells:
        raise EngineError(f"{path}: `cells` must be a non-empty mapping of cell id to cell, "
                          f"got {type(cells).__name__}")
    return list(cells)


def cell_stages(root: Path, cells: list[str]) -> dict[str, list[str]]:
    """Each cell's stages (`train@<cell>`, and any other `<group>@<cell>`), as DVC lists them."""
    listed = _run(["dvc", "stage", "list", "--name-only"], root)
    if listed.returncode != 0:
        raise EngineError(f"`dvc stage list` failed in {root}:\n{listed.stderr.strip()}")
    names = listed.stdout.split()
    stages = {cell: [name for name in names if name.endswith(f"@{cell}")] for cell in cells}
    missing = [cell for cell, found in stages.items() if f"train@{cell}" not in found]
    if missing:
        raise EngineError(f"dvc.yaml has no train@<cell> stage for {', '.join(missing)} "
                          f"(a cell of params.yaml's `cells:`)")
    return stages


def require_dvc_remote(root: Path) -> str:
    """The default DVC remote of the committed .dvc/config: the workers' clones have no other."""
    found = _run(["dvc", "config", "--project", "core.remote"], root)
    if found.returncode != 0 or not found.stdout.strip():
        raise EngineError(
            "a cluster needs a default DVC remote in the committed .dvc/config, which every worker "
            "can reach: the workers push their results there and this command pulls them "
            "(`dvc remote add -d <name> <url>`, then commit .dvc/config)")
    return found.stdout.strip()


def repository_url(root: Path, given: str | None) -> str:
    """Where the cluster's workers clone from: --repo-url, else the `origin` remote."""
    if given:
        return given
    found = _run(["git", "remote", "get-url", "origin"], root)
    if found.returncode != 0:
        raise EngineError("a cluster's workers clone the repository: give --repo-url, or add a git "
                          "remote `origin` that they can reach (and push the commit there)")
    url = found.stdout.strip()
    local = (root / url) if "://" not in url and ":" not in url.split("/")[0] else None
    return str(local.resolve()) if local is not None and local.exists() else url


def tracking_uri_for(root: Path, on_cluster: bool) -> str:
    uri = os.environ.get(TRACKING_ENV)
    if on_cluster:
        if not uri or not uri.startswith(SERVER_SCHEMES):
            raise EngineError(
                f"{TRACKING_ENV} must name an MLflow tracking server (http://host:port) that every "
                f"worker reaches, got {uri or 'nothing (the default local SQLite store)'}: a local "
                f"store would be resolved on each worker's own disk and the runs scattered")
        return uri
    if uri:
        return absolute_tracking_uri(uri, Path.cwd())
    return f"sqlite:///{(root / 'mlruns' / 'mlflow.db').resolve()}"


def check_tracking_server(uri: str, timeout: float = TRACKING_TIMEOUT_S) -> None:
    """An HTTP tracking server answers (any HTTP status) within `timeout` seconds."""
    try:
        urllib.request.urlopen(f"{uri.rstrip('/')}/health", timeout=timeout).close()
    except urllib.error.HTTPError:
        return  # it answered
    except (OSError, ValueError) as error:
        raise EngineError(f"the MLflow tracking server {uri} ({TRACKING_ENV}) did not answer within "
                          f"{timeout:g} s: {getattr(error, 'reason', error)}") from error


def prepare_local_store(root: Path, uri: str) -> None:
    # the store's schema and the experiment exist before N workers reach for them at once
    # (concurrent first use of one SQLite database breaks MLflow's schema migrations)
    from misfit.track.store import open_experiment

    experiment = yaml.safe_load((root / "params.yaml").read_text())["tracking"]["experiment"]
    previous = os.environ.get(TRACKING_ENV)
    os.environ[TRACKING_ENV] = uri
    try:
        open_experiment(root, experiment)
    finally:
        if previous is None:
            os.environ.pop(TRACKING_ENV, None)
        else:
            os.environ[TRACKING_ENV] = previous


def dvc_cache_dir(root: Path) -> str:
    found = _run(["dvc", "cache", "dir"], root)
    if found.returncode != 0:
        raise EngineError(f"`dvc cache dir` failed in {root}:\n{found.stderr.strip()}")
    return str(Path(found.stdout.strip()).resolve())


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
    stages = cell_stages(root, cell_ids(root))
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
            prepare_local_store(root, uri)
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
