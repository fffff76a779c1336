"""`misfit ui`: the MLflow UI on this project's store, on 127.0.0.1 only.

Every run carries the tags cell, task, study, recommended, seed and misfit.level (cell
for the parent run of a cell, seed for each seed's run). `--task binary` opens the run
table filtered with  tags.task = 'binary' and tags.`misfit.level` = 'cell'  ; in the UI,
"Group by" > Tags > cell puts each cell's seed runs together.

In a clone, `--restore` first rebuilds the published runs from records/ in git
(misfit restore-runs): new run ids, each tagged misfit.original_run_id.
"""
from __future__ import annotations

import argparse
import errno
import os
import signal
import socket
import subprocess
import sys
from pathlib import Path
from urllib.parse import quote

from misfit.core.study import TASK_ORDER
from misfit.track.store import STORE_DIR, tracking_uri

HOST = "127.0.0.1"  # the UI can edit and delete runs: never expose it beyond this machine


def server_command(root: Path, port: int, workers: int = 1) -> list[str]:
    artifacts = (root / STORE_DIR / "artifacts").resolve().as_uri()
    return [sys.executable, "-m", "mlflow", "server", "--host", HOST, "--port", str(port),
            "--workers", str(workers), "--backend-store-uri", tracking_uri(root),
            "--default-artifact-root", artifacts]


def experiment_id(root: Path, name: str) -> str | None:
    """The experiment's id, read without creating anything."""
    from misfit.audit import open_store

    store = open_store(root)
    if store.client is None:
        return None
    found = store.client.get_experiment_by_name(name)
    return found.experiment_id if found else None


def task_filter(task: str) -> str:
    """The run table's search for the parent runs (one per cell) of one task."""
    return f"tags.task = '{task}' and tags.`misfit.level` = 'cell'"


def runs_url(base: str, experiment: str | None, search: str | None = None) -> str:
    if experiment is None:
        return f"{base}/"
    url = f"{base}/#/experiments/{experiment}/runs"
    return f"{url}?searchFilter={quote(search)}" if search else url


def port_problem(port: int) -> str | None:
    """Why the server could not listen on HOST:port, or None.

    The MLflow server does not fail when its port is taken: it logs the bind error and
    exits 0, and the URL printed before it would open whoever holds the port. So the port
    is tried first. SO_REUSEADDR as uvicorn sets it: a port left in TIME_WAIT is free.
    """
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as probe:
        probe.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            probe.bind((HOST, port))
        except OSError as error:
            if error.errno == errno.EADDRINUSE:
                return (f"port {port} on {HOST} is already in use (another `misfit ui` or server?): "
                        "stop it, or choose another port with --port")
            return f"cannot listen on {HOST}:{port} ({error.strerror}): choose another port with --port"
    return None


def register(commands) -> None:
    parser = commands.add_parser("ui", help="the MLflow UI on this project's runs (127.0.0.1)",
                                 description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--port", type=int, default=5000, help="port on 127.0.0.1 (default: 5000)")
    parser.add_argument("--task", choices=TASK_ORDER, help="open the run table filtered to this task's cells")
    parser.add_argument("--restore", action="store_true",
                        help="first rebuild the runs from records/ in git (misfit restore-runs): a clone is enough")
    parser.add_argument("-C", "--root", type=Path, default=Path("."), help="project root (default: .)")
    parser.set_defaults(handler=main)


def main(args: argparse.Namespace) -> int:
    from misfit.core.config import ConfigError, load_params

    root = args.root
    uri = tracking_uri(root)
    if uri.startswith(("http://", "https://")):
        print(f"MLFLOW_TRACKING_URI={uri} is a tracking server: open it in a browser, it is the UI")
        return 0
    taken = port_problem(args.port)
    if taken:
        print(f"error: {taken}", file=sys.stderr)
        return 1
    if args.restore:
        from misfit.track.restore import main as restore

        code = restore(argparse.Namespace(root=root, cells=[]))
        if code:
            return code
    if uri.startswith("sqlite:///") and not Path(uri.removeprefix("sqlite:///")).is_file():
        print(f"error: no MLflow store at {uri.removeprefix('sqlite:///')} yet: `misfit ui --restore` "
              "rebuilds the study's runs from records/ in git; `dvc repro` makes new ones",
              file=sys.stderr)
        return 1
    try:
        experiment = load_params(root / "params.yaml").tracking.experiment
    except ConfigError as error:
        print(f"error: {error}", file=sys.stderr)
        return 1
    base = f"http://{HOST}:{args.port}"
    exp_id = experiment_id(root, experiment)
    search = task_filter(args.task) if args.task else None
    print(f"MLflow UI for {uri}", flush=True)
    print(f"  {runs_url(base, exp_id, search)}", flush=True)
    if exp_id is not None:
        print(f"  experiment {experiment!r} has id {exp_id}; Ctrl-C stops the server", flush=True)
    # the job runner serves GenAI judges only; here it would be eight idle processes
    env = {"MLFLOW_SERVER_ENABLE_JOB_EXECUTION": "false", **os.environ}
    # its own process group: mlflow starts uvicorn as a child, and stopping must reach both
    server = subprocess.Popen(server_command(root, args.port), env=env, start_new_session=True)
    signal.signal(signal.SIGTERM, _raise_exit)
    try:
        return server.wait()
    except KeyboardInterrupt:
        return 130
    finally:
        _stop(server)


def _raise_exit(signum, frame):
    raise SystemExit(128 + signum)


def _stop(server: subprocess.Popen) -> None:
    if server.poll() is not None:
        return
    os.killpg(server.pid, signal.SIGTERM)
    try:
        server.wait(timeout=20)
    except subprocess.TimeoutExpired:
        os.killpg(server.pid, signal.SIGKILL)
        server.wait()
