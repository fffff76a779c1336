"""Shared test helpers: synthetic IDX data and a real DVC project in a temp dir."""
from __future__ import annotations

import gzip
import hashlib
import json
import os
import shutil
import signal
import socket
import struct
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

import numpy as np
import pytest
import yaml

REPO = Path(__file__).resolve().parents[1]
SHARED_MNIST = REPO.parent / "shared" / "data" / "mnist"
PROJECT_FILES = ("dvc.yaml", "params.yaml", "stages", "src", "bench", "reference", ".dvcignore")
MNIST_NAMES = ("train-images-idx3-ubyte", "train-labels-idx1-ubyte",
               "t10k-images-idx3-ubyte", "t10k-labels-idx1-ubyte")


# The longest files first (their seconds in a 2-core CI run): one file runs on one xdist
# worker, so a long file started last would keep one worker busy after the other is done.
LONGEST_FIRST = ("test_parallel.py", "test_killed_run.py", "test_pipeline_synthetic.py", "test_pipeline_mnist.py",
                 "test_determinism.py", "test_warm.py", "test_nonfinite.py", "test_tracking_faults.py")


def pytest_collection_modifyitems(items):
    def rank(item) -> int:
        name = item.path.name
        return LONGEST_FIRST.index(name) if name in LONGEST_FIRST else len(LONGEST_FIRST)

    items.sort(key=rank)  # stable: each file keeps its own order


@pytest.fixture
def figure(record_property):
    """Print a benchmark figure after the run, also from an xdist worker (whose output pytest drops)."""
    return lambda text: record_property("figure", text)


def pytest_terminal_summary(terminalreporter):
    figures = [value for report in terminalreporter.stats.get("passed", [])
               for key, value in report.user_properties if key == "figure"]
    if figures:
        terminalreporter.section("figures")
        for text in figures:
            terminalreporter.write_line(text)


def write_idx(path: Path, array: np.ndarray, compress: bool = False) -> None:
    """An IDX file of unsigned bytes: magic 0x08XX, the dimensions, the data."""
    data = np.ascontiguousarray(array, dtype=np.uint8)
    payload = struct.pack(">I", 0x0800 + data.ndim) + struct.pack(f">{data.ndim}I", *data.shape) + data.tobytes()
    if compress:
        path.with_name(path.name + ".gz").write_bytes(gzip.compress(payload))
    else:
        path.write_bytes(payload)


def digit_images(labels: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    """28x28 images a small CNN can tell apart: a bright bar whose place encodes the digit."""
    images = rng.integers(0, 60, (len(labels), 28, 28), dtype=np.uint8)
    for i, digit in enumerate(labels):
        row = 2 + 2 * int(digit)
        images[i, row : row + 3, 4:24] = 255
    return images


def synthetic_mnist(directory: Path, n_train: int = 600, n_test: int = 300, seed: int = 0,
                    compress: bool = False) -> Path:
    """Four small IDX files in `directory` and the manifest (MNIST_MANIFEST) that vouches for them."""
    directory.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(seed)
    train_labels, test_labels = rng.integers(0, 10, n_train), rng.integers(0, 10, n_test)
    arrays = {
        "train-images-idx3-ubyte": digit_images(train_labels, rng),
        "train-labels-idx1-ubyte": train_labels,
        "t10k-images-idx3-ubyte": digit_images(test_labels, rng),
        "t10k-labels-idx1-ubyte": test_labels,
    }
    manifest = {}
    for name, array in arrays.items():
        write_idx(directory / name, array, compress)
        raw = np.ascontiguousarray(array, dtype=np.uint8)
        header = struct.pack(">I", 0x0800 + raw.ndim) + struct.pack(f">{raw.ndim}I", *raw.shape)
        manifest[name] = {"sha256": hashlib.sha256(header + raw.tobytes()).hexdigest(), "shape": list(raw.shape)}
    path = directory.parent / f"{directory.name}-manifest.json"
    path.write_text(json.dumps(manifest))
    return path


def run(command: list[str], cwd: Path, env: dict | None = None, check: bool = True,
        timeout: float = 1200) -> subprocess.CompletedProcess:
    done = subprocess.run(command, cwd=cwd, env=env, capture_output=True, text=True, timeout=timeout)
    if check and done.returncode != 0:
        raise AssertionError(f"{' '.join(command)} failed ({done.returncode}):\n{done.stdout}\n{done.stderr}")
    return done


def base_env(**extra: str) -> dict:
    env = {key: value for key, value in os.environ.items()
           if key not in ("MLFLOW_TRACKING_URI", "MNIST_MIRROR", "MNIST_MANIFEST")}
    env["PATH"] = f"{Path(sys.executable).parent}{os.pathsep}{env.get('PATH', '')}"
    env.update(MLFLOW_DISABLE_TELEMETRY="true", DVC_NO_ANALYTICS="1", GIT_AUTHOR_NAME="test",
               GIT_AUTHOR_EMAIL="test@example.com", GIT_COMMITTER_NAME="test",
               GIT_COMMITTER_EMAIL="test@example.com", **extra)
    return env


def make_project(target: Path, params: dict | None = None) -> Path:
    """A fresh git + DVC project holding this repository's pipeline, committed."""
    target.mkdir(parents=True)
    for name in PROJECT_FILES:
        source = REPO / name
        if source.is_dir():
            shutil.copytree(source, target / name, ignore=shutil.ignore_patterns("__pycache__", "*.egg-info"))
        else:
            shutil.copy2(source, target / name)
    shutil.copy2(REPO / ".gitignore", target / ".gitignore")
    if params is not None:
        (target / "params.yaml").write_text(yaml.safe_dump(params, sort_keys=False))
    env = base_env()
    run(["git", "init", "-q"], target, env)
    run(["dvc", "init", "-q"], target, env)
    run(["dvc", "config", "core.analytics", "false"], target, env)
    if (REPO / ".dvc" / "plots").is_dir():  # the plot templates dvc.yaml names (dvc init made .dvc/)
        shutil.copytree(REPO / ".dvc" / "plots", target / ".dvc" / "plots")
    run(["git", "add", "-A"], target, env)
    run(["git", "commit", "-q", "-m", "project"], target, env)
    return target


def small_params(cells: list[str], **overrides) -> dict:
    """params.yaml of this repository, shrunk: fewer images, epochs, seeds and cells."""
    params = yaml.safe_load((REPO / "params.yaml").read_text())
    params["cells"] = {cell: params["cells"][cell] for cell in cells}
    params["data"].update(n_train=200, n_valid=100, n_test=100)
    params["protocol"].update(max_epochs=3, patience=2)
    params["seeds"] = [0, 1]
    params["draws"] = {"subset_seeds": [1], "seeds": [0]}  # one further draw, one seed on it
    for cell in params["cells"].values():
        cell.pop("seeds", None)  # the 24-seed cells train on the study's seeds here
    for dotted, value in overrides.items():
        section, key = dotted.split("__") if "__" in dotted else (dotted, None)
        if key is None:
            params[section] = value
        else:
            params[section][key] = value
    return params


@pytest.fixture
def synthetic_env(tmp_path: Path) -> dict:
    """Environment under which the download stage takes synthetic IDX files."""
    manifest = synthetic_mnist(tmp_path / "mirror")
    return base_env(MNIST_MIRROR=str(tmp_path / "mirror"), MNIST_MANIFEST=str(manifest))


def synthetic_project(tmp: Path, cells: list[str], repro: bool = True, **overrides):
    """A project on synthetic IDX files; `dvc repro` already run when `repro`.

    Returns (project root, environment for its commands, the repro's CompletedProcess or None).
    """
    manifest = synthetic_mnist(tmp / "mirror")
    env = base_env(MNIST_MIRROR=str(tmp / "mirror"), MNIST_MANIFEST=str(manifest))
    root = make_project(tmp / "project", small_params(cells, **overrides))
    done = run(["dvc", "repro"], root, env) if repro else None
    return root, env, done


# one cell of each study, and a multilabel cell (4 outputs, each a bit) for the models' tests
PUBLISHED_CELLS = ["regression-none-mse-zscore", "binary-logits-ce", "multilabel-logits-bcelogits"]
PUBLISH_LOG = "publish.log"  # beside the project: what scripts/publish_study.sh printed
# a user's profile (misfit profile tiny), committed with the published study
TINY_PROFILE = {"description": "one epoch, seed 0, main draw",
                "set": {"protocol.max_epochs": 1, "seeds": [0], "draws.subset_seeds": []}}


def published_env(tmp: Path) -> dict:
    """The environment of the published study's commands: its synthetic mirror and manifest."""
    return base_env(MNIST_MIRROR=str(tmp / "mirror"), MNIST_MANIFEST=str(tmp / "mirror-manifest.json"))


def publish_small_study(tmp: Path) -> tuple[Path, dict]:
    """A small study published as the repository publishes it: scripts/publish_study.sh trains
    and evaluates cell by cell, pushes every DVC output to a local remote (`home`, the
    default, named in .dvc/config) and commits each cell's results, then the report.
    A user's profile (profiles/tiny.yaml) is committed with it."""
    synthetic_mnist(tmp / "mirror")
    env = published_env(tmp)
    root = make_project(tmp / "project", small_params(PUBLISHED_CELLS))
    (root / "scripts").mkdir()
    shutil.copy2(REPO / "scripts" / "publish_study.sh", root / "scripts")
    (root / "profiles").mkdir()
    (root / "profiles" / "tiny.yaml").write_text(yaml.safe_dump(TINY_PROFILE, sort_keys=False))
    run(["dvc", "remote", "add", "-d", "home", str(tmp / "remote")], root, env)
    run(["git", "add", "-A"], root, env)
    run(["git", "commit", "-q", "-m", "the publish script, a profile and a DVC remote"], root, env)
    done = run(["bash", "scripts/publish_study.sh"], root, env)
    (tmp / PUBLISH_LOG).write_text(done.stdout)
    return root, env


@pytest.fixture(scope="session")
def published(tmp_path_factory):
    """The small published study (publish_small_study). Tests clone or copy it; none changes it.

    Under pytest-xdist the workers share one: the first to need it builds it, under a lock.
    Returns (project root, environment for its commands)."""
    worker = os.environ.get("PYTEST_XDIST_WORKER")
    if worker is None:
        return publish_small_study(tmp_path_factory.mktemp("published"))
    from filelock import FileLock  # torch's own dependency

    shared = tmp_path_factory.getbasetemp().parent / "published"
    with FileLock(f"{shared}.lock"):
        if not (shared / PUBLISH_LOG).is_file():
            if shared.exists():  # a worker that died half-way
                shutil.rmtree(shared)
            shared.mkdir()
            publish_small_study(shared)
    return shared / "project", published_env(shared)


def publish_output(published: tuple[Path, dict]) -> str:
    """What scripts/publish_study.sh printed when it published the study."""
    return (published[0].parent / PUBLISH_LOG).read_text()


def copy_of(published: tuple[Path, dict], target: Path) -> tuple[Path, dict]:
    """A copy of the published study to change: its checkpoints, DVC cache and MLflow store too."""
    root, env = published
    shutil.copytree(root, target)  # files, not links: a byte flipped here leaves the original alone
    return target, env


def tracked_bytes(root: Path) -> dict[str, str]:
    """SHA-256 of every git-tracked file and of every file of the DVC outputs present."""
    files = run(["git", "ls-files", "-z"], root).stdout.split("\0")
    outputs = [str(p.relative_to(root)) for d in ("data", "models", "predictions") if (root / d).is_dir()
               for p in (root / d).rglob("*") if p.is_file()]
    return {name: hashlib.sha256((root / name).read_bytes()).hexdigest() for name in {*files, *outputs} if name}


def fresh_clone(source: Path, target: Path, env: dict) -> Path:
    """`git clone`, as a new user gets the project: no DVC cache, no MLflow store."""
    run(["git", "clone", "-q", str(source), str(target)], target.parent, env)
    return target


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def wait_for_health(base_url: str, process: subprocess.Popen, log: Path, timeout: float = 120) -> None:
    """Poll an MLflow server's /health until it answers 200; fail with its log if it dies or stalls."""
    deadline = time.monotonic() + timeout
    while True:
        assert process.poll() is None, f"the server exited:\n{log.read_text()}"
        try:
            with urllib.request.urlopen(f"{base_url}/health", timeout=5) as response:
                if response.status == 200:
                    return
        except OSError:
            pass
        assert time.monotonic() < deadline, f"no answer from {base_url} in {timeout} s:\n{log.read_text()}"
        time.sleep(0.5)


@pytest.fixture(scope="module")
def tracking_server(tmp_path_factory):
    """A real `mlflow server` on a free local port, its schema created before any worker.

    One per test module: a module that counts the runs in the store must see only its own."""
    directory = tmp_path_factory.mktemp("server")
    port = free_port()
    uri = f"http://127.0.0.1:{port}"
    log = open(directory / "server.log", "w")
    server = subprocess.Popen(
        [str(Path(sys.executable).parent / "mlflow"), "server",
         "--backend-store-uri", f"sqlite:///{directory / 'mlflow.db'}",
         "--artifacts-destination", str(directory / "artifacts"),
         "--host", "127.0.0.1", "--port", str(port), "--workers", "2"],
        # job execution (GenAI jobs) would start eight more python processes we do not use
        cwd=directory, env=base_env(MLFLOW_SERVER_ENABLE_JOB_EXECUTION="false"), stdout=log,
        stderr=subprocess.STDOUT, start_new_session=True)
    try:
        wait_for_health(uri, server, directory / "server.log")
        from mlflow import MlflowClient

        MlflowClient(uri).search_experiments()  # the schema is there and answers
        yield uri
    finally:
        stop_process_group(server)
        log.close()


def stop_process_group(process: subprocess.Popen, grace: float = 20) -> None:
    """SIGTERM to the group we started (the server and its uvicorn workers), then SIGKILL."""
    def group_alive() -> bool:
        try:
            os.killpg(process.pid, 0)
        except ProcessLookupError:
            return False
        return True

    if group_alive():
        os.killpg(process.pid, signal.SIGTERM)
    deadline = time.monotonic() + grace
    while group_alive() and time.monotonic() < deadline:
        process.poll()  # reap the leader, or its zombie keeps the group alive
        time.sleep(0.2)
    if group_alive():
        os.killpg(process.pid, signal.SIGKILL)
    process.wait()


def stages_run(output: str) -> list[str]:
    """The stages a `dvc repro` ran, in order, from its output."""
    return [line.split("'")[1] for line in output.splitlines() if line.startswith("Running stage")]


def assert_pipeline_current(project: Path, env: dict) -> None:
    """DVC sees nothing to do: `dvc status` is clean and `dvc repro` runs no stage."""
    status = run(["dvc", "status"], project, env)
    assert "Data and pipelines are up to date." in status.stdout, status.stdout
    again = run(["dvc", "repro"], project, env)
    assert stages_run(again.stdout) == [], again.stdout


@pytest.fixture
def one_torch_thread():
    # the thread count changes how reductions are split, hence float rounding: pin it
    import torch

    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


def report_run(seed: int, subset_seed: int, test: float | None, outcome, history: list[dict] | None = None,
               valid: float | None = None, best_epoch: int | None = 3, status: str = "ok"):
    """A run as the report reads it (misfit.report.cells.Run), typed as the stages write it:
    `history` rows need only their epoch and valid metric."""
    from misfit.core.record import EvaluatedRun, TrainedRun
    from misfit.report.cells import Run

    def epoch(row: dict) -> dict:
        return {"valid_loss": 0.0, "valid_metric": 0.0, **row}

    valid = test if valid is None else valid
    trained = TrainedRun(seed=seed, subset_seed=subset_seed, run_id=f"r{subset_seed}-{seed}", config_digest="c" * 64,
                         status=status, error=None if status == "ok" else "an error", best_epoch=best_epoch,
                         valid_best=valid, epochs_run=len(history or []) or 3, checkpoint=None, checkpoint_sha256=None,
                         initial=epoch({"epoch": 0}), history=[epoch(row) for row in history or []])
    evaluated = None if test is None else EvaluatedRun(
        seed=seed, subset_seed=subset_seed, run_id=trained.run_id, checkpoint="x.pt", checkpoint_sha256="0" * 64,
        valid=valid, matches_record=True, test=test, calibration=None)
    return Run(trained, evaluated, outcome)
